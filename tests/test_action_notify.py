"""The `notify` action: Apprise json:// and form:// to a local HTTP receiver, mailto:// to aiosmtpd."""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import json
import types
import urllib.parse
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httpx
import pytest
from action_harness import action_context, action_type, read_http_request, render, serve_tcp
from aiosmtpd.smtp import SMTP, Envelope, Session
from conftest import product_events

from engine.events import Event
from engine.plugin import ActionContext, ActionError, shorten
from engine.services import Services
from plugins import notify

EXAMPLES = product_events("meetings")
TITLE = "VIP joined {{ payload.object.topic }}"
BODY = "{{ payload.object.participant.user_name }} at {{ payload.object.participant.join_time }}"
WANT_TITLE = "VIP joined Weekly project sync"
WANT_BODY = "Riley Park at 2026-02-05T17:02:00Z"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Received:
    path: str
    content_type: str
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def form(self) -> dict[str, str]:
        return dict(urllib.parse.parse_qsl(self.body.decode()))


@dataclass
class Receiver:
    """HTTP receiver: records requests; paths in `failing` answer 500."""

    port: int = 0
    received: list[Received] = field(default_factory=list)
    failing: set[str] = field(default_factory=set)

    def paths(self) -> list[str]:
        return sorted(r.path for r in self.received)

    async def handle(self, stream: anyio.abc.SocketStream) -> None:
        async with stream:
            _, path, headers, body = await read_http_request(stream)
            self.received.append(Received(path, headers.get("content-type", ""), body))
            status = "500 Internal Server Error" if path in self.failing else "200 OK"
            await stream.send(
                f"HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode()
            )


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    srv = Receiver()
    async with serve_tcp(srv.handle) as srv.port:
        yield srv


class MailSink:
    """aiosmtpd handler keeping every message."""

    def __init__(self) -> None:
        self.messages: list[email.message.EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.content, bytes)
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.messages.append(message)  # type: ignore[arg-type]
        self.envelopes.append((str(envelope.mail_from), list(envelope.rcpt_tos)))
        return "250 OK"


@pytest.fixture
async def smtp() -> AsyncIterator[tuple[MailSink, int]]:
    sink = MailSink()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(sink), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield sink, port
    finally:
        server.close()
        await server.wait_closed()


def services_with(notifiers: Mapping[str, tuple[str, ...]] | None = None) -> Services:
    config = types.SimpleNamespace(notifiers=dict(notifiers or {}), zoom=None)
    return Services(config=config, http=httpx.AsyncClient())


def context(
    services: Services, attempt: int = 1, state: dict[str, Any] | None = None
) -> ActionContext:
    ev = Event.from_body(EXAMPLES["meeting.participant_joined"]["example"], source="test")
    return action_context(
        ev, services, rule="vip-joined", attempt=attempt, state=state, log="test.notify"
    )


async def send(
    services: Services, params: Mapping[str, Any], ctx: ActionContext | None = None
) -> Any:
    ctx = ctx or context(services)
    return await notify.run(render(notify, params, ctx.root), ctx)


@pytest.mark.anyio
async def test_json_and_form(receiver: Receiver) -> None:
    base = f"127.0.0.1:{receiver.port}"
    result = await send(
        services_with(),
        {"to": [f"json://{base}/json", f"form://{base}/form"], "title": TITLE, "body": BODY},
    )
    assert len(result["sent"]) == 2 and result["already_sent"] == []
    by_path = {r.path: r for r in receiver.received}
    sent_json = by_path["/json"].json()
    assert (sent_json["title"], sent_json["message"]) == (WANT_TITLE, WANT_BODY)
    sent_form = by_path["/form"].form()
    assert (sent_form["title"], sent_form["message"]) == (WANT_TITLE, WANT_BODY)


@pytest.mark.anyio
async def test_mailto_plain_smtp(smtp: tuple[MailSink, int]) -> None:
    sink, port = smtp
    url = f"mailto://127.0.0.1:{port}?to=ops@example.com&from=zoomrules@example.com&mode=insecure"
    await send(services_with({"oncall": (url,)}), {"to": "oncall", "title": TITLE, "body": BODY})
    (message,) = sink.messages
    assert message["Subject"] == WANT_TITLE
    assert message.get_content().strip() == WANT_BODY
    assert sink.envelopes == [("zoomrules@example.com", ["ops@example.com"])]


@pytest.mark.anyio
async def test_partial_failure_reports_target_and_retry_resends_only_failed(
    receiver: Receiver,
) -> None:
    base = f"127.0.0.1:{receiver.port}"
    services = services_with({"team": (f"json://{base}/a", f"form://{base}/b")})
    failing_url = f"json://bot:hunter2@{base}/c"
    receiver.failing.add("/c")
    params = {"to": ["team", failing_url], "title": TITLE, "body": BODY}
    ctx = context(services)

    with pytest.raises(ActionError) as info:
        await send(services, params, ctx)
    message = str(info.value)
    assert info.value.retryable
    assert "1 of 3" in message
    assert f"json://bot:****@{base}/c" in message
    assert "hunter2" not in message
    assert f"{base}/a" not in message and f"{base}/b" not in message
    assert receiver.paths() == ["/a", "/b", "/c"]

    receiver.failing.clear()
    retry = context(services, attempt=2, state=ctx.state)
    result = await send(services, params, retry)
    assert receiver.paths() == ["/a", "/b", "/c", "/c"]  # only the failed target again
    assert len(result["sent"]) == 1 and len(result["already_sent"]) == 2
    assert "hunter2" not in json.dumps(result) and "hunter2" not in json.dumps(ctx.state)


@pytest.mark.anyio
async def test_apprise_config_with_tag(receiver: Receiver, tmp_path: Path) -> None:
    base = f"127.0.0.1:{receiver.port}"
    config = tmp_path / "apprise.txt"
    config.write_text(f"ops=json://{base}/ops\ndev=json://{base}/dev\n")  # noqa: ASYNC240
    await send(
        services_with(),
        {"apprise_config": str(config), "tag": "ops", "title": TITLE, "body": BODY},
    )
    assert receiver.paths() == ["/ops"]


@pytest.mark.anyio
async def test_attachment(receiver: Receiver, tmp_path: Path) -> None:
    attachment = tmp_path / "minutes.txt"
    attachment.write_text("minutes")  # noqa: ASYNC240
    await send(
        services_with(),
        {
            "to": f"json://127.0.0.1:{receiver.port}/att",
            "body": BODY,
            "attach": [str(attachment)],
        },
    )
    (sent,) = [r.json() for r in receiver.received]
    assert [a["filename"] for a in sent["attachments"]] == ["minutes.txt"]


@pytest.mark.anyio
async def test_unknown_notifier_is_permanent() -> None:
    with pytest.raises(ActionError) as info:
        await send(services_with({"oncall": ()}), {"to": "pager", "body": "x"})
    assert not info.value.retryable
    assert "'pager'" in str(info.value)


def test_validate() -> None:
    validate = action_type(notify).validate
    assert validate is not None
    assert validate({"to": "oncall", "body": "x"}) == []
    assert validate({"to": ["json://example.com/hook"], "body": "x"}) == []
    assert validate({"to": "{{ payload.object.host_email }}", "body": "x"}) == []
    assert validate({"body": "x"})  # nowhere to send
    bad = validate({"to": ["nosuchscheme://user:topsecret@host/x"], "body": "x"})
    assert bad and "topsecret" not in " ".join(bad)


# -- hostile days: attachments and config files named by event data --------------

ATTACH_FROM_TOPIC = "{{ payload.object.topic }}"


def topic_context(services: Services, topic: str) -> ActionContext:
    body = EXAMPLES["meeting.participant_joined"]["example"]
    body = json.loads(json.dumps(body))
    body["payload"]["object"]["topic"] = topic
    ev = Event.from_body(body, source="test")
    return action_context(ev, services, rule="vip-joined", log="test.notify")


async def send_topic(params: Mapping[str, Any], topic: str) -> Any:
    services = services_with()
    return await send(services, params, topic_context(services, topic))


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    """Stands for /etc/hostname: a local file no rule meant to send."""
    secret = tmp_path / "etc" / "hostname"
    secret.parent.mkdir()
    secret.write_text("db-primary-7\n")
    return secret


@pytest.mark.anyio
async def test_templated_attachment_is_refused_without_attach_dirs(
    receiver: Receiver, secret_file: Path
) -> None:
    """The reported case: a topic of `/etc/hostname` was read and posted."""
    with pytest.raises(ActionError) as info:
        await send_topic(
            {
                "to": f"json://127.0.0.1:{receiver.port}/att",
                "body": BODY,
                "attach": ATTACH_FROM_TOPIC,
            },
            str(secret_file),
        )
    assert not info.value.retryable
    assert str(info.value) == (
        "attach[0]: refused: the value comes from the event and the rule sets no attach_dirs"
    )
    assert receiver.received == []  # nothing sent at all, not even without the file


@pytest.mark.anyio
async def test_templated_attachment_inside_attach_dirs_is_sent(
    receiver: Receiver, tmp_path: Path
) -> None:
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "q3 minutes?v=1%2F..%2Fx.txt").write_text("minutes")  # odd but inside
    (reports / "plain.txt").write_text("plain")
    await send_topic(
        {
            "to": f"json://127.0.0.1:{receiver.port}/att",
            "body": BODY,
            "attach": [f"{reports}/{ATTACH_FROM_TOPIC}", f"{reports}/plain.txt"],
            "attach_dirs": [str(reports)],
        },
        "q3 minutes?v=1%2F..%2Fx.txt",
    )
    (sent,) = [r.json() for r in receiver.received]
    names = sorted(a["filename"] for a in sent["attachments"])
    assert names == ["plain.txt", "q3 minutes?v=1%2F..%2Fx.txt"]
    contents = sorted(base64.b64decode(a["base64"]) for a in sent["attachments"])
    assert contents == [b"minutes", b"plain"]


@pytest.mark.anyio
@pytest.mark.parametrize("how", ["absolute", "dotdot", "symlink", "the-directory-itself"])
async def test_templated_attachment_outside_attach_dirs_is_refused(
    receiver: Receiver, tmp_path: Path, secret_file: Path, how: str
) -> None:
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "link").symlink_to(secret_file)
    attach, topic = {
        "absolute": (ATTACH_FROM_TOPIC, str(secret_file)),
        "dotdot": (f"{reports}/{ATTACH_FROM_TOPIC}", "../etc/hostname"),
        "symlink": (f"{reports}/{ATTACH_FROM_TOPIC}", "link"),
        "the-directory-itself": (f"{reports}/{ATTACH_FROM_TOPIC}", "."),
    }[how]
    with pytest.raises(ActionError) as info:
        await send_topic(
            {
                "to": f"json://127.0.0.1:{receiver.port}/att",
                "body": BODY,
                "attach": [attach],
                "attach_dirs": [str(reports)],
            },
            topic,
        )
    assert not info.value.retryable
    shown = shorten(attach.replace(ATTACH_FROM_TOPIC, topic), 80)
    assert str(info.value) == f"attach[0]: refused: {shown!r} is outside attach_dirs ({reports})"
    assert receiver.received == []


@pytest.mark.anyio
@pytest.mark.parametrize("scheme", ["http", "https", "file", "HTTP"])
async def test_templated_url_attachment_is_refused(
    receiver: Receiver, tmp_path: Path, secret_file: Path, scheme: str
) -> None:
    topic = (
        f"{scheme}://{secret_file}"
        if scheme == "file"
        else f"{scheme}://127.0.0.1:{receiver.port}/x"
    )
    with pytest.raises(ActionError) as info:
        await send_topic(
            {
                "to": f"json://127.0.0.1:{receiver.port}/att",
                "body": BODY,
                "attach": ATTACH_FROM_TOPIC,
                "attach_dirs": [str(tmp_path)],
            },
            topic,
        )
    assert not info.value.retryable
    assert str(info.value) == (
        f"attach[0]: refused: a URL from the event ({scheme}://…) cannot be an attachment; "
        "write fixed URLs literally"
    )
    assert receiver.received == []


@pytest.mark.anyio
async def test_templated_attachment_with_a_nul_byte_is_refused(
    receiver: Receiver, tmp_path: Path
) -> None:
    with pytest.raises(ActionError) as info:
        await send_topic(
            {
                "to": f"json://127.0.0.1:{receiver.port}/att",
                "body": BODY,
                "attach": ATTACH_FROM_TOPIC,
                "attach_dirs": [str(tmp_path)],
            },
            f"{tmp_path}/a\x00b",
        )
    assert str(info.value) == "attach[0]: refused: the rendered path has a NUL byte"
    assert receiver.received == []


@pytest.mark.anyio
async def test_a_templated_list_of_attachments_is_checked_item_by_item(
    receiver: Receiver, tmp_path: Path, secret_file: Path
) -> None:
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "ok.txt").write_text("ok")
    services = services_with()
    body = json.loads(json.dumps(EXAMPLES["meeting.participant_joined"]["example"]))
    body["payload"]["object"]["files"] = [str(reports / "ok.txt"), str(secret_file)]
    ctx = action_context(Event.from_body(body, source="test"), services, log="test.notify")
    params = {
        "to": f"json://127.0.0.1:{receiver.port}/att",
        "body": BODY,
        "attach": "{{ payload.object.files }}",
        "attach_dirs": [str(reports)],
    }
    with pytest.raises(ActionError) as info:
        await send(services, params, ctx)
    assert str(info.value).startswith("attach[1]: refused: ")
    assert receiver.received == []


@pytest.mark.anyio
async def test_templated_apprise_config_stays_in_its_directory(
    receiver: Receiver, tmp_path: Path
) -> None:
    configs = tmp_path / "apprise"
    configs.mkdir()
    (configs / "team.txt").write_text(f"json://127.0.0.1:{receiver.port}/team\n")
    (tmp_path / "evil.txt").write_text(f"json://127.0.0.1:{receiver.port}/evil\n")
    params = {"apprise_config": f"{configs}/{{{{ payload.object.topic }}}}.txt", "body": BODY}
    await send_topic(params, "team")
    assert receiver.paths() == ["/team"]
    with pytest.raises(ActionError) as info:
        await send_topic(params, "../evil")
    assert not info.value.retryable
    assert str(info.value) == f"apprise_config: rendered path leaves {configs}/: '../evil.txt'"
    assert receiver.paths() == ["/team"]


@pytest.mark.anyio
async def test_unreadable_apprise_config_and_unknown_notifier_are_not_echoed_at_length() -> None:
    long = "n" * 5000
    with pytest.raises(ActionError) as info:
        await send_topic({"to": "{{ payload.object.topic }}", "body": "x"}, long)
    assert not info.value.retryable
    assert str(info.value).startswith("to: unknown notifier 'nnn")
    assert len(str(info.value)) < 300
    with pytest.raises(ActionError) as info:
        await send_topic({"apprise_config": "/nonexistent/" + long, "body": "x"}, "x")
    assert not info.value.retryable
    # Apprise reads the file lazily: a missing one "defines no notification URLs".
    assert str(info.value).startswith("apprise_config: '/nonexistent/nnn")
    assert len(str(info.value)) < 300


@pytest.mark.anyio
async def test_a_failed_target_from_event_data_is_not_echoed_at_length(receiver: Receiver) -> None:
    long = "p" * 5000
    receiver.failing.add("/" + long)
    with pytest.raises(ActionError) as info:
        await send_topic(
            {"to": f"json://127.0.0.1:{receiver.port}/{{{{ payload.object.topic }}}}", "body": "x"},
            long,
        )
    assert str(info.value).startswith("notification failed for 1 of 1 targets: json://127.0.0.1:")
    assert len(str(info.value)) < 500


@pytest.mark.anyio
async def test_an_unparsable_url_from_the_event_is_not_echoed_at_length() -> None:
    with pytest.raises(ActionError) as info:
        await send_topic({"to": "{{ payload.object.topic }}", "body": "x"}, "s" * 5000 + "://x")
    assert not info.value.retryable
    assert str(info.value).startswith("to: sss")
    assert str(info.value).endswith("…://… is not a valid Apprise URL")
    assert len(str(info.value)) < 100


def test_validate_attach_dirs_and_templated_config() -> None:
    validate = action_type(notify).validate
    assert validate is not None
    ok = {"to": "oncall", "body": "x"}
    assert validate({**ok, "attach": "{{ x }}", "attach_dirs": ["/srv/reports"]}) == []
    assert validate({**ok, "attach_dirs": "/srv/reports"}) == [
        "attach_dirs: must be a list of absolute directory paths"
    ]
    assert validate({**ok, "attach_dirs": ["reports", 3, "/srv/{{ x }}", "/", ""]}) == [
        "attach_dirs[0]: must be an absolute path, got 'reports'",
        "attach_dirs[1]: must be an absolute path, got 3",
        "attach_dirs[2]: must be written literally (no {{ }})",
        "attach_dirs[3]: / would allow every file",
        "attach_dirs[4]: must be an absolute path, got ''",
    ]
    assert validate({**ok, "apprise_config": "/etc/zoomrules/{{ x }}.yml"}) == []
    assert validate({**ok, "apprise_config": "https://cfg.example.com/{{ x }}.yml"}) == [
        "apprise_config: only a local path may be templated; write a URL literally"
    ]
    assert validate({**ok, "apprise_config": "/{{ x }}.yml"}) == [
        "apprise_config: the directory before the first {{ }} is /, which confines nothing: "
        "write one (e.g. /etc/zoomrules/apprise/{{ ... }}.yml)"
    ]
