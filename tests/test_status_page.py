"""The status page at `/`: a real daemon fed by the simulator, read with httpx and in Chromium.

What it must show (a subscription, rules and their firings, each recent
event's decisions with the operand values of a false condition, actions'
outcomes), what it must never show (a secret from the environment, a
credential in an event, an unescaped value from an event), and that a slow
journal does not hold it up. The ring it explains (`engine.recent`) and the
explanation itself (`engine.event_report`) are tested on a pipeline alone.
"""

from __future__ import annotations

import re
import shutil
import socket
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from conftest import example, write_rules
from daemon_process import simulator_env
from starlette.applications import Starlette

from engine.correlate import Correlations
from engine.daemon import Daemon
from engine.daemon_state import Readiness
from engine.dispatch import Dispatcher, Job
from engine.errors import ActionFailed, ConfigError
from engine.event_report import explain_seen
from engine.events import Event
from engine.loader import LoadedRules, load_rules
from engine.pipeline import Pipeline
from engine.plugin import ActionContext, ActionError, ActionType, Param, hookimpl
from engine.recent import ActionResult
from engine.services import Services
from engine.simulator import Simulator
from engine.sources.base import SourceHealth
from engine.status_page import routes

pytestmark = pytest.mark.anyio

#: A webhook URL with its token in the path, as `${HOOK_URL}`, in an action
#: whose error repeats it whole; and an Apprise URL in [notifiers], `${SLACK_URL}`.
HOOK_TOKEN = "T0AAA-B0BBB-XyZsecretHookToken42"
SLACK_URL = "slack://T0AAAAAAA/B0BBBBBBB/XyZsecretSlackToken42"
#: A meeting password carried by the event, read by a rule's condition.
PASSWORD = "p4ss-w0rd-9731"
HOSTILE_TOPIC = "<script>alert('owned')</script> & <b>bold</b>"

RULES = """
version = 1
[zoom]
client_id = "${ZOOM_CLIENT_ID}"
client_secret = "${ZOOM_CLIENT_SECRET}"
endpoint = "${ZOOM_WS_ENDPOINT}"
[engine]
state_dir = "${ZOOMRULES_STATE_DIR}"
retry_backoff = "10ms"
[notifiers]
oncall = ["${SLACK_URL}"]
[http]
listen = "127.0.0.1:0"

[[rule]]
name = "log-started"
on = ["meeting.started"]
  [[rule.action]]
  type = "log"
  path = "LOG"

[[rule]]
name = "long-board-meetings"
on = ["meeting.*"]
when = "payload.object.duration > `120` && payload.object.topic == 'Board'"
  [[rule.action]]
  type = "log"
  path = "LOG"

[[rule]]
name = "password-check"
on = ["meeting.started"]
when = "payload.object.password == 'letmein'"
  [[rule.action]]
  type = "log"
  path = "LOG"

[[rule]]
name = "password-number"
on = ["meeting.started"]
when = "abs(payload.object.password) > `3`"
  [[rule.action]]
  type = "log"
  path = "LOG"

[[rule]]
name = "once-per-meeting"
on = ["meeting.started"]
throttle = { key = "payload.object.id", limit = 1, per = "1h" }
  [[rule.action]]
  type = "log"
  path = "LOG"

[[rule]]
name = "paused"
on = ["meeting.started"]
enabled = false
  [[rule.action]]
  type = "log"
  path = "LOG"

[[rule]]
name = "hook"
on = ["meeting.started"]
  [[rule.action]]
  type = "leaky"
  url = "${HOOK_URL}"
  retries = 1
  [[rule.action]]
  type = "log"
  path = "LOG"

[[rule]]
name = "ended"
on = ["meeting.ended"]
  [[rule.action]]
  type = "log"
  path = "LOG"
"""


class Leaky:
    """An action whose error repeats its URL parameter whole (a webhook token
    in it): the page must mask it as the logs do."""

    @hookimpl
    def zoomrules_action_types(self) -> list[ActionType]:
        async def run(params: Mapping[str, Any], ctx: ActionContext) -> None:
            raise ActionError(f"the hook at {params['url']} refused the call")

        return [ActionType("leaky", run, params=[Param("url", str, required=True)])]


def closed_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        return int(sock.getsockname()[1])


def started(topic: str, **fields: Any) -> dict[str, Any]:
    body = example("meeting.started")
    body["payload"]["object"].update(topic=topic, password=PASSWORD, **fields)
    return body


@dataclass
class Running:
    daemon: Daemon
    client: httpx.AsyncClient
    sim: Simulator
    url: str
    secrets: list[str] = field(default_factory=list)


@asynccontextmanager
async def running_daemon(tmp_path: Path) -> AsyncIterator[Running]:
    """The daemon serving HTTP, connected to the simulator, after two
    `meeting.started` events (the second throttled for one rule) and one
    `meeting.ended` have been matched and their jobs have ended."""
    hook_url = f"http://127.0.0.1:{closed_port()}/hooks/{HOOK_TOKEN}"
    async with Simulator() as sim:
        rules = tmp_path / "rules.toml"
        rules.write_text(RULES.replace("LOG", str(tmp_path / "fired.jsonl")))
        env = simulator_env(sim, tmp_path / "state", HOOK_URL=hook_url, SLACK_URL=SLACK_URL)
        loaded = load_rules([rules], env=env, extra_plugins=[Leaky()])
        daemon = Daemon([rules], loaded, env=env, handle_signals=False)
        async with anyio.create_task_group() as tg:
            tg.start_soon(daemon.run)
            server = await daemon.wait_serving()
            await daemon.wait_ready()
            await sim.wait_connected(timeout=20)
            url = f"http://127.0.0.1:{server.port}/"
            async with httpx.AsyncClient() as client:
                try:
                    await sim.send_event(started(HOSTILE_TOPIC))
                    await sim.send_event(started("Weekly sync, again"))
                    ended = example("meeting.ended")
                    await sim.send_event(ended)
                    await _wait_jobs_done(daemon, events=3, jobs=6)
                    secrets = [HOOK_TOKEN, hook_url, SLACK_URL, "XyZsecretSlackToken42", PASSWORD]
                    secrets.append(sim.client_secret)
                    yield Running(daemon, client, sim, url, secrets)
                finally:
                    daemon.stop()


async def _wait_jobs_done(daemon: Daemon, events: int, jobs: int) -> None:
    """Until `events` are kept and `jobs` jobs have run to their end."""
    with anyio.fail_after(30):
        while True:
            pipeline, dispatcher = daemon.pipeline, daemon.dispatcher
            if pipeline is not None and dispatcher is not None and pipeline.recent is not None:
                stats = dispatcher.stats
                done = stats.jobs_done + stats.jobs_failed
                if len(pipeline.recent) >= events and done >= jobs and not dispatcher.in_flight:
                    return
            await anyio.sleep(0.05)


def section(html: str, anchor: str) -> str:
    start = html.index(f'<section id="{anchor}">')
    return html[start : html.index("</section>", start)]


async def test_the_page_shows_subscriptions_rules_jobs_and_each_events_decisions(
    tmp_path: Path,
) -> None:
    async with running_daemon(tmp_path) as run:
        response = await run.client.get(run.url)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/html")
        html = response.text

        header = html[: html.index("</header>")]
        assert "version 0.1.0" in header and "single process" in header and "ready" in header

        subscriptions = section(html, "subscriptions")
        assert "zoom:default" in subscriptions and "connected" in subscriptions
        assert "token expires" in subscriptions
        assert re.search(r"<td>in (59|60) min</td>", subscriptions)  # the simulator's one hour

        rules = section(html, "rules")
        for name in ("log-started", "long-board-meetings", "once-per-meeting", "hook", "paused"):
            assert name in rules
        assert "(disabled)" in rules

        jobs = section(html, "jobs")
        # The hook's two failed jobs are dead letters, listed from the journal.
        assert "2 dead letter(s)" in jobs
        assert "refused the call" in jobs

        events = section(html, "events")
        # Newest first: meeting.ended, then the two meeting.started.
        assert events.index("meeting.ended") < events.index("Weekly sync, again")
        first = events[events.index("Weekly sync, again") :]
        # A skipped rule's false condition, with its operands' values.
        assert "skipped: condition false" in first
        assert "payload.object.duration &gt; `120`  -&gt;  false" in first
        assert "payload.object.duration = 60" in first
        assert "not evaluated (&amp;&amp; stops at a false part)" in first
        # The second event of the meeting is throttled for once-per-meeting.
        assert "at most 1 per 3600s for each payload.object.id; this window was full" in first
        assert "skipped: disabled" in first
        # A condition that failed on a credential: JMESPath's error would quote it.
        assert "skipped: condition failed" in first
        assert "its condition failed (not shown: it reads a field named like a credential)" in first
        # Action outcomes: retried and failed (its dead letter), not run after it, ok.
        assert "failed after 2 attempt(s)</span> (dead letter" in first
        assert '2. <code>log</code>: <span class="not-run">not run</span>' in first
        assert '<span class="ok">ok</span>' in first
        # meeting.ended only has the rules whose `on` matches it.
        last = events[: events.index("Weekly sync, again")]
        assert "ended" in last and "log-started" not in last


async def test_no_secret_appears_and_event_values_are_escaped(tmp_path: Path) -> None:
    async with running_daemon(tmp_path) as run:
        html = (await run.client.get(run.url)).text
        for secret in run.secrets:
            assert secret not in html
        # The password is read by a condition: its trace shows it masked.
        assert "payload.object.password = &quot;***&quot;" in html
        # The hook's error is shown, the URL from the environment masked.
        assert "the hook at *** refused the call" in html
        assert "<script>" not in html and "<b>bold</b>" not in html
        assert "&lt;script&gt;alert(&#x27;owned&#x27;)&lt;/script&gt; &amp; &lt;b&gt;" in html


async def test_the_page_in_chromium(tmp_path: Path) -> None:
    """Chromium (Debian's, driven by Playwright) shows the page; a screenshot
    is kept in the test's directory."""
    from playwright.async_api import Error as PlaywrightError
    from playwright.async_api import async_playwright

    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium; .ci/run does)")
    async with running_daemon(tmp_path) as run, async_playwright() as playwright:
        try:
            browser = await playwright.chromium.launch(
                executable_path=chromium,
                headless=True,
                args=[
                    "--no-sandbox",
                    "--disable-background-networking",
                    "--disable-component-update",
                ],
            )
        except PlaywrightError as exc:
            pytest.skip(f"Chromium at {chromium} cannot run here: {str(exc).splitlines()[0]}")
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            await page.goto(run.url)
            subscriptions = await page.inner_text("#subscriptions")
            assert "zoom:default" in subscriptions and "connected" in subscriptions
            rules = await page.inner_text("#rules")
            assert "log-started" in rules
            events = await page.inner_text("#events")
            assert "fired" in events
            assert "skipped: condition false" in events
            assert "payload.object.duration = 60" in events
            # The hostile topic is text on the page, not markup run by it.
            assert HOSTILE_TOPIC in events
            assert await page.locator("#events script").count() == 0
            content = await page.content()
            for secret in run.secrets:
                assert secret not in content
            screenshot = tmp_path / "status-page.png"
            await page.screenshot(path=str(screenshot), full_page=True)
            assert screenshot.stat().st_size > 10_000
            print(f"status page screenshot: {screenshot}")
        finally:
            await browser.close()


# -- a journal that does not answer ------------------------------------------------


class SlowJournal:
    """What the page asks of the journal, answering after `delay` seconds."""

    def __init__(self, delay: float) -> None:
        self.delay = delay

    async def stats(self) -> dict[str, Any]:
        await anyio.sleep(self.delay)
        return {"jobs": {"dead": 1}}

    async def dead_letters(self, limit: int) -> list[Any]:
        await anyio.sleep(self.delay)
        return []


@dataclass
class State:
    """A `DaemonState` of a daemon with a journal and nothing else."""

    loaded: LoadedRules
    store: Any
    started_at: float = field(default_factory=time.time)
    reloads: int = 0
    failed_reloads: int = 0
    last_reload_at: float | None = None
    last_reload_ok: bool = True
    sources: list[Any] = field(default_factory=list)
    pipeline: Pipeline | None = None
    dispatcher: Dispatcher | None = None
    correlations: Correlations | None = None

    def readiness(self) -> Readiness:
        return Readiness(True)


async def test_the_page_answers_while_the_journal_is_slow(tmp_path: Path) -> None:
    loaded = load_rules([write_rules(tmp_path, PIPELINE_RULES)], env={})
    app = Starlette(routes=routes(State(loaded, SlowJournal(delay=60))))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://x") as client:
        began = time.monotonic()
        with anyio.fail_after(10):
            response = await client.get("/")
        assert response.status_code == 200
        assert time.monotonic() - began < 5
        assert "the journal did not answer within 0.5s" in section(response.text, "jobs")
        assert "no-condition" in section(response.text, "rules")


@dataclass
class Source:
    """A source as the page sees it: a name, counters, health."""

    name: str
    state: SourceHealth
    stats: object = None
    settings: object = None

    def health(self) -> SourceHealth:
        return self.state


async def test_a_cluster_nodes_role_and_its_standby_subscriptions(tmp_path: Path) -> None:
    cluster = '[cluster]\nservers = ["nats://127.0.0.1:4222"]\nname = "prod"\nnode = "node-2"\n'
    loaded = load_rules(
        [write_rules(tmp_path, cluster + PIPELINE_RULES.replace("version = 1", ""))], env={}
    )
    sources = [
        Source("zoom:a", SourceHealth(True, time.time() - 90, "connected")),
        Source("zoom:b", SourceHealth(False, None, "standby: another node holds it", True, True)),
    ]
    state = State(loaded, SlowJournal(delay=0), sources=sources)
    app = Starlette(routes=routes(state))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://x") as client:
        html = (await client.get("/")).text
    header = html[: html.index("</header>")]
    assert "cluster <b>prod</b>, node <b>node-2</b>: runs zoom:a; stands by for zoom:b" in header
    subscriptions = section(html, "subscriptions")
    assert '<span class="ok">connected</span>' in subscriptions
    assert '<span class="muted">standby: another node holds it</span>' in subscriptions
    # A source without a listener's counters: shown as not known.
    assert subscriptions.count('<span class="muted">—</span>') == 2 * 5 + 1


async def test_refresh_is_offered_and_bounded(tmp_path: Path) -> None:
    loaded = load_rules([write_rules(tmp_path, PIPELINE_RULES)], env={})
    app = Starlette(routes=routes(State(loaded, SlowJournal(delay=0))))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://x") as client:
        assert 'http-equiv="refresh"' not in (await client.get("/")).text
        assert '<meta http-equiv="refresh" content="5">' in (await client.get("/?refresh=5")).text
        for bad in ("0", "-3", "999999", "5;url=http://evil/", "x"):
            assert 'http-equiv="refresh"' not in (await client.get(f"/?refresh={bad}")).text


# -- the ring and its explanation, on a pipeline alone -------------------------------

PIPELINE_RULES = """
version = 1
[[rule]]
name = "no-condition"
on = ["meeting.started"]
  [[rule.action]]
  type = "log"
  [[rule.action]]
  type = "log"

[[rule]]
name = "long"
on = ["meeting.*"]
when = "payload.object.duration > `120`"
  [[rule.action]]
  type = "log"

[[rule]]
name = "broken"
on = ["meeting.started"]
when = "length(payload.object.duration) > `3`"
  [[rule.action]]
  type = "log"

[[rule]]
name = "once"
on = ["meeting.started"]
throttle = { key = "payload.object.id", limit = 1, per = "1h" }
stop = true
  [[rule.action]]
  type = "log"

[[rule]]
name = "after-stop"
on = ["meeting.started"]
  [[rule.action]]
  type = "log"

[[rule]]
name = "other-events"
on = ["webinar.started"]
  [[rule.action]]
  type = "log"
"""


async def _pipeline(tmp_path: Path) -> Pipeline:
    loaded = load_rules([write_rules(tmp_path, PIPELINE_RULES)], env={})
    async with httpx.AsyncClient() as http:
        return Pipeline(loaded, Dispatcher(Services(config=loaded.config, http=http)))


def _event(topic: str, **fields: Any) -> Event:
    body = example("meeting.started")
    body["payload"]["object"].update(topic=topic, **fields)
    return Event.from_body(body, source="test")


async def test_the_ring_keeps_the_last_events_and_their_outcomes(tmp_path: Path) -> None:
    pipeline = await _pipeline(tmp_path)
    recent = pipeline.keep_recent(3)
    assert pipeline.keep_recent(10) is recent  # one ring, whoever asks
    events = [_event(f"meeting {index}", id=index) for index in range(5)]
    fired = [pipeline.select(event) for event in events]
    assert len(recent) == 3
    assert [seen.event for seen, _ in recent.snapshot()] == events[:1:-1]  # newest first

    record = pipeline.dispatcher.recorder
    assert record is not None
    rule = fired[4][0]
    record(Job(events[4], rule, id=41), 0, ActionFailed("down", 3), 3)
    # An event no longer kept: its outcome is not shown, and nothing fails.
    record(Job(events[0], fired[0][0], id=1), 0, None, 1)
    outcomes = [outcome for _, outcome in recent.snapshot()]
    assert outcomes == [{(rule.name, 0): ActionResult("down", 3, 41)}, {}, {}]


async def test_the_outcomes_kept_stay_bounded(tmp_path: Path) -> None:
    pipeline = await _pipeline(tmp_path)
    recent = pipeline.keep_recent(2)
    record = pipeline.dispatcher.recorder
    assert record is not None
    for index in range(100):
        event = _event("x", id=index)
        for rule in pipeline.select(event):
            record(Job(event, rule, id=index), 0, None, 1)
    assert [len(outcomes) for _, outcomes in recent.snapshot()] == [2, 2]  # no-condition, once
    # Outcomes of events no longer kept are dropped as new ones come.
    assert len(recent._outcomes) < 10


async def test_each_candidate_rule_is_explained(tmp_path: Path) -> None:
    pipeline = await _pipeline(tmp_path)
    recent = pipeline.keep_recent(10)
    first, second = _event("Board", id=1), _event("Board", id=1, duration=30)
    pipeline.select(first)
    pipeline.select(second)
    record = pipeline.dispatcher.recorder
    assert record is not None
    no_condition = pipeline.rules.rules[0]
    record(Job(second, no_condition, id=7), 0, ActionFailed("boom", 2), 2)

    newest, older = explain_seen(recent.snapshot())
    assert newest.topic == "Board" and newest.name == "meeting.started"
    verdicts = {rule.rule: rule for rule in newest.rules}
    # Only the rules whose `on` matches the event, in file order.
    assert list(verdicts) == ["no-condition", "long", "broken", "once", "after-stop"]
    fired = verdicts["no-condition"]
    assert fired.verdict == "fired"
    assert [(a.state, a.attempts, a.error, a.job_id) for a in fired.actions] == [
        ("failed", 2, "boom", 7),
        ("not run", 0, None, None),
    ]
    long = verdicts["long"]
    assert (long.verdict, long.trace) == (
        "condition",
        ("payload.object.duration > `120`  ->  false", "  payload.object.duration = 30"),
    )
    broken = verdicts["broken"]
    assert broken.verdict == "error" and "invalid type" in broken.detail
    assert broken.trace[0].startswith("length(payload.object.duration) > `3`  ->  error: ")
    assert "    payload.object.duration = 30" in broken.trace
    # `once` matched, then was throttled; with stop = true it ended the matching.
    assert verdicts["once"].verdict == "throttled"
    assert verdicts["after-stop"].verdict == "stopped"

    # The first event: `once` fired, and its action has not ended yet.
    once = {rule.rule: rule for rule in older.rules}["once"]
    assert once.verdict == "fired"
    assert [action.state for action in once.actions] == ["pending"]


def test_recent_events_is_checked(tmp_path: Path) -> None:
    base = 'version = 1\n[http]\nlisten = "127.0.0.1:0"\n'
    default = load_rules([write_rules(tmp_path, base)], env={})
    assert default.config.http is not None and default.config.http.recent_events == 50
    zero = load_rules([write_rules(tmp_path, base + "recent_events = 0\n")], env={})
    assert zero.config.http is not None and zero.config.http.recent_events == 0
    for bad, message in (("-1", "at least 0"), ("5000", "at most 1000"), ('"x"', "integer")):
        with pytest.raises(ConfigError, match=message):
            load_rules([write_rules(tmp_path, base + f"recent_events = {bad}\n")], env={})
