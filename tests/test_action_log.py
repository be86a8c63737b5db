"""The `log` action: where its lines go, and where a templated path may not go."""

from __future__ import annotations

import copy
import json
import os
import types
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from action_harness import action_type, run_action
from conftest import example, product_events, run_cli, write_rules

from engine.events import Event
from engine.plugin import ActionError
from engine.services import Services
from plugins import log

EXAMPLES = product_events("meetings")
TOPIC = "{{ payload.object.topic }}"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def services() -> AsyncIterator[Services]:
    async with httpx.AsyncClient() as client:
        yield Services(config=types.SimpleNamespace(notifiers={}, zoom=None), http=client)


def meeting_event(topic: str) -> Event:
    body = copy.deepcopy(EXAMPLES["meeting.started"]["example"])
    body["payload"]["object"]["topic"] = topic
    return Event.from_body(body, source="test")


async def write(services: Services, params: Mapping[str, Any], topic: str) -> None:
    await run_action(log, services, params, meeting_event(topic))


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def every_file(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# -- a templated path stays under the directory written before its first {{ ---


@pytest.mark.anyio
@pytest.mark.parametrize(
    "topic",
    [
        "../../escaped/trav",
        "a/../../../escaped/trav",
        "a/b/../../../../escaped/trav",
        "../zoom-sibling/trav",
    ],
)
async def test_templated_path_cannot_leave_its_directory(
    services: Services, tmp_path: Path, topic: str
) -> None:
    base = tmp_path / "logs" / "zoom"
    base.mkdir(parents=True)
    with pytest.raises(ActionError) as info:
        await write(services, {"path": f"{base}/{TOPIC}.jsonl"}, topic)
    assert not info.value.retryable
    assert str(info.value) == f"path: rendered path leaves {base}/: {topic + '.jsonl'!r}"
    # Nothing was written, and no directory was made on the way.
    assert every_file(tmp_path) == {"logs", "logs/zoom"}


@pytest.mark.anyio
async def test_the_reported_case_var_log_zoom(services: Services, tmp_path: Path) -> None:
    """The issue's rule: `/var/log/zoom/{{ topic }}.jsonl` with a topic climbing to /tmp."""
    base = tmp_path / "var" / "log" / "zoom"
    climb = "../" * (len(base.parts) - 1)  # up to /
    target = tmp_path / "x" / "trav"
    topic = climb + str(target).lstrip("/")
    with pytest.raises(ActionError) as info:
        await write(services, {"path": f"{base}/{TOPIC}.jsonl"}, topic)
    assert not info.value.retryable
    assert str(info.value).startswith(f"path: rendered path leaves {base}/: '../../")
    assert not (tmp_path / "x").exists()
    assert not base.exists()  # not even the rule's own directory was made for it


@pytest.mark.anyio
async def test_symlink_inside_pointing_outside_is_refused(
    services: Services, tmp_path: Path
) -> None:
    base = tmp_path / "logs"
    base.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (base / "link").symlink_to(elsewhere)
    with pytest.raises(ActionError) as info:
        await write(services, {"path": f"{base}/{TOPIC}.jsonl"}, "link/trav")
    assert not info.value.retryable
    assert str(info.value) == f"path: rendered path leaves {base}/: 'link/trav.jsonl'"
    assert list(elsewhere.iterdir()) == []


@pytest.mark.anyio
async def test_symlink_then_dotdot_is_resolved_like_the_kernel_does(
    services: Services, tmp_path: Path
) -> None:
    # `link/..` is `elsewhere/..` (tmp_path) for the kernel, not `logs/`.
    base = tmp_path / "logs"
    base.mkdir()
    (tmp_path / "deep" / "er").mkdir(parents=True)
    (base / "link").symlink_to(tmp_path / "deep" / "er")
    with pytest.raises(ActionError) as info:
        await write(services, {"path": f"{base}/{TOPIC}.jsonl"}, "link/../../trav")
    assert "leaves" in str(info.value)
    assert not (tmp_path / "deep" / "trav.jsonl").exists()


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("topic", "message"),
    [
        ("a\x00b", "path: rendered path has a NUL byte (under {base}/)"),
        ("", "path: rendered path has an empty segment (a value rendered empty?): '/events.jsonl'"),
        (
            "a/",
            "path: rendered path has an empty segment (a value rendered empty?): 'a//events.jsonl'",
        ),
    ],
)
async def test_nul_bytes_and_empty_segments_are_refused(
    services: Services, tmp_path: Path, topic: str, message: str
) -> None:
    base = tmp_path / "logs"
    base.mkdir()
    with pytest.raises(ActionError) as info:
        await write(services, {"path": f"{base}/{TOPIC}/events.jsonl"}, topic)
    assert not info.value.retryable
    assert str(info.value) == message.format(base=base)
    assert every_file(tmp_path) == {"logs"}


@pytest.mark.anyio
async def test_a_long_hostile_value_is_shortened_in_the_message(
    services: Services, tmp_path: Path
) -> None:
    topic = "../" * 3000 + "etc/x"
    with pytest.raises(ActionError) as info:
        await write(services, {"path": f"{tmp_path}/logs/{TOPIC}.jsonl"}, topic)
    assert len(str(info.value)) < len(str(tmp_path)) + 150
    assert topic not in str(info.value)


@pytest.mark.anyio
async def test_templated_subdirectories_inside_are_created(
    services: Services, tmp_path: Path
) -> None:
    base = tmp_path / "logs"
    params = {"path": f"{base}/{TOPIC}.jsonl"}
    await write(services, params, "team-a/standup")
    await write(services, params, "x/../inside")  # normalised, still inside
    [first] = lines(base / "team-a" / "standup.jsonl")
    assert first["event"]["payload"]["object"]["topic"] == "team-a/standup"
    assert len(lines(base / "inside.jsonl")) == 1
    # The literal part before the template may have text of its own.
    await write(services, {"path": f"{base}/meeting-{TOPIC}.jsonl"}, "weekly")
    assert len(lines(base / "meeting-weekly.jsonl")) == 1


@pytest.mark.anyio
async def test_a_literal_path_is_the_authors_choice(services: Services, tmp_path: Path) -> None:
    literal = f"{tmp_path}/a/../b/events.jsonl"  # `..` written by the rule's author
    await write(services, {"path": literal}, "../../anything")
    assert len(lines(tmp_path / "b" / "events.jsonl")) == 1


@pytest.mark.anyio
async def test_a_wholly_templated_path_stays_in_the_current_directory(
    services: Services, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    await write(services, {"path": TOPIC}, "events.jsonl")
    assert len(lines(work / "events.jsonl")) == 1
    for topic in ("../escaped.jsonl", str(tmp_path / "escaped.jsonl")):
        with pytest.raises(ActionError) as info:
            await write(services, {"path": TOPIC}, topic)
        assert not info.value.retryable
        assert str(info.value).startswith("path: rendered path leaves the current directory: ")
    assert not (tmp_path / "escaped.jsonl").exists()


@pytest.mark.anyio
async def test_a_wholly_templated_path_is_refused_when_the_current_directory_is_root(
    services: Services, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A daemon started by systemd without WorkingDirectory runs in /.
    monkeypatch.chdir("/")
    topic = str(tmp_path / "rooted.jsonl").lstrip("/")
    with pytest.raises(ActionError) as info:
        await write(services, {"path": TOPIC}, topic)
    assert not info.value.retryable
    assert str(info.value) == (
        "path: the current directory is /, which confines nothing: "
        "write a directory before the first {{ }}"
    )
    assert not (tmp_path / "rooted.jsonl").exists()


@pytest.mark.anyio
async def test_unwritable_path_is_a_short_permanent_error(
    services: Services, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ActionError) as info:
        await write(services, {"path": f"{blocker}/under/events.jsonl"}, "x")
    assert not info.value.retryable
    assert str(info.value) == f"path: cannot write {blocker}/under/events.jsonl: Not a directory"
    # A name too long for the file system: refused, and not echoed at length.
    with pytest.raises(ActionError) as info:
        await write(services, {"path": f"{tmp_path}/{TOPIC}.jsonl"}, "n" * 5000)
    assert not info.value.retryable
    assert "File name too long" in str(info.value) and len(str(info.value)) < 300


def test_validate() -> None:
    validate = action_type(log).validate
    assert validate is not None
    assert validate({}) == []
    assert validate({"path": "/var/log/zoom/events.jsonl"}) == []
    assert validate({"path": "/var/log/zoom/{{ payload.object.id }}.jsonl"}) == []
    assert validate({"path": "{{ zoomrules.rule }}.jsonl"}) == []  # the current directory
    message = (
        "path: the directory before the first {{ }} is /, which confines nothing: "
        "write one (e.g. /var/log/zoomrules/{{ ... }})"
    )
    assert validate({"path": "/{{ payload.object.id }}.jsonl"}) == [message]
    assert validate({"path": "//x-{{ payload.object.id }}"}) == [message]


# -- through the real command line ------------------------------------------------


def test_replay_refuses_the_hostile_topic(tmp_path: Path) -> None:
    base = tmp_path / "logs"
    rules = write_rules(
        tmp_path,
        f"""
        [[rule]]
        name = "audit"
        on = ["meeting.ended"]

          [[rule.action]]
          type = "log"
          path = "{base}/{TOPIC}.jsonl"
          retries = 3
        """,
    )
    hostile = example("meeting.ended")
    hostile["payload"]["object"]["topic"] = "../escaped/trav"
    fine = example("meeting.ended")
    fine["payload"]["object"]["topic"] = "weekly"
    fine["event_ts"] += 1
    events = "\n".join(json.dumps(e) for e in (hostile, fine))
    result = run_cli("replay", "-c", rules, "-", input=events)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "actions: 1 ok, 1 failed" in result.stdout
    assert f"path: rendered path leaves {base}/: '../escaped/trav.jsonl'" in result.stderr
    assert "after 1 attempt(s)" in result.stderr  # permanent: not retried
    assert not (tmp_path / "escaped").exists()
    assert os.listdir(base) == ["weekly.jsonl"]
