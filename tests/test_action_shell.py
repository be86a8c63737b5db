"""The `shell` action: argv safety, shell=true quoting, process-group cleanup, env, stdin."""

from __future__ import annotations

import copy
import json
import os
import shlex
import sys
import types
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import anyio
import httpx
import psutil
import pytest
from action_harness import action_type, run_action
from conftest import product_events

from engine.events import Event
from engine.plugin import ActionError
from engine.services import Services
from plugins import shell

EXAMPLES = product_events("meetings")
PY = sys.executable
#: Prints its arguments as a JSON list: what the program really received.
ARGV_DUMP = "import json, sys; print(json.dumps(sys.argv[1:]))"

HOSTILE = [
    "$(touch PWNED)",
    "`touch PWNED`",
    "; touch PWNED; rm -rf x",
    "a && touch PWNED || touch PWNED",
    "it's \"quoted\" 'twice'",
    "line one\nline two\n; touch PWNED",
    "--option=evil",
    "-rf",
    "Zoë 会议 🎉 \u202eevil\u202c tab\there",
    "  spaced  ",
    "",
    "*",
    "$HOME ${PATH} %PATH%",
    "back\\slash\\",
    "> PWNED",
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def services() -> AsyncIterator[Services]:
    async with httpx.AsyncClient() as client:
        yield Services(config=types.SimpleNamespace(notifiers={}, zoom=None), http=client)


def meeting_event(**object_fields: Any) -> Event:
    body = copy.deepcopy(EXAMPLES["meeting.started"]["example"])
    body["payload"]["object"].update(object_fields)
    return Event.from_body(body, source="test")


async def run_shell(
    services: Services, params: Mapping[str, Any], event: Event | None = None
) -> dict[str, Any]:
    result: dict[str, Any] = await run_action(shell, services, params, event or meeting_event())
    return result


def live_group_members(pgid: int) -> list[psutil.Process]:
    """Processes of the group that are still running (zombies are dead, just unreaped)."""
    alive = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return alive


@pytest.mark.anyio
@pytest.mark.parametrize("value", HOSTILE)
async def test_argv_entries_are_literal(
    services: Services, tmp_path: Path, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    event = meeting_event(topic=value, host_id=value + "!")
    result = await run_shell(
        services,
        {
            "command": [
                PY,
                "-c",
                ARGV_DUMP,
                "{{ payload.object.topic }}",
                "id={{ payload.object.host_id }}",
                "{{ payload.object.duration }}",
            ],
            "cwd": str(tmp_path),
        },
        event,
    )
    assert result["exit_code"] == 0
    assert json.loads(result["stdout"]) == [value, f"id={value}!", "60"]
    assert os.listdir(tmp_path) == []  # no PWNED, nothing else written either


@pytest.mark.anyio
@pytest.mark.parametrize("value", HOSTILE)
async def test_shell_true_quotes_every_value(
    services: Services, tmp_path: Path, value: str
) -> None:
    event = meeting_event(topic=value, host_id=value + "!")
    command = (
        f"{shlex.quote(PY)} -c {shlex.quote(ARGV_DUMP)} "
        "{{ payload.object.topic }} id={{ payload.object.host_id }} && echo done"
    )
    result = await run_shell(
        services, {"command": command, "shell": True, "cwd": str(tmp_path)}, event
    )
    lines = result["stdout"].splitlines()
    assert json.loads(lines[0]) == [value, f"id={value}!"]
    assert lines[1] == "done"  # the literal `&&` of the rule is still shell syntax
    assert os.listdir(tmp_path) == []  # no PWNED, nothing else written either


@pytest.mark.anyio
async def test_whole_value_template_gives_json_for_structures(services: Services) -> None:
    result = await run_shell(
        services, {"command": [PY, "-c", ARGV_DUMP, "{{ payload.object }}", "{{ nothing }}"]}
    )
    topic, missing = json.loads(result["stdout"])
    assert json.loads(topic)["topic"] == "Weekly project sync"
    assert missing == ""


async def _pid_from_fifo(fifo: Path) -> int:
    def read() -> str:
        with fifo.open() as handle:  # blocks until the child opens it for writing
            return handle.read()

    return int((await anyio.to_thread.run_sync(read)).strip())


@pytest.mark.anyio
@pytest.mark.parametrize("ignore_term", [False, True])
async def test_cancel_kills_whole_process_group(
    services: Services, tmp_path: Path, ignore_term: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shell, "TERM_GRACE", 0.3)
    fifo = tmp_path / "pid"
    os.mkfifo(fifo)
    trap = "trap '' TERM; " if ignore_term else ""
    script = f"{trap}sleep 300 & sleep 300 & echo $$ > {shlex.quote(str(fifo))}; wait"
    pgid = 0
    finished = False

    async def run_until_cancelled(
        scope_ready: anyio.Event, holder: list[anyio.CancelScope]
    ) -> None:
        nonlocal finished
        with anyio.move_on_after(60) as scope:
            holder.append(scope)
            scope_ready.set()
            await run_shell(services, {"command": ["sh", "-c", script]})
        finished = True

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            ready, holder = anyio.Event(), []
            tg.start_soon(run_until_cancelled, ready, holder)
            await ready.wait()
            pgid = await _pid_from_fifo(fifo)
            assert len(live_group_members(pgid)) >= 1
            holder[0].cancel()
    assert finished
    assert live_group_members(pgid) == []


@pytest.mark.anyio
async def test_cancel_while_the_process_is_starting_still_kills_its_group(
    services: Services, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The child runs (and starts children) before open_process returns; a
    # timeout landing in that window must still take the whole group.
    monkeypatch.setattr(shell, "TERM_GRACE", 0.3)
    fifo = tmp_path / "pid"
    os.mkfifo(fifo)
    script = f"sleep 300 & sleep 300 & echo $$ > {shlex.quote(str(fifo))}; wait"
    real_open_process = anyio.open_process
    cancelled = anyio.Event()

    async def slow_open_process(*args: Any, **kwargs: Any) -> anyio.abc.Process:
        process = await real_open_process(*args, **kwargs)
        await cancelled.wait()  # still "starting" when the cancellation arrives
        return process

    monkeypatch.setattr(shell.anyio, "open_process", slow_open_process)
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            scope = anyio.CancelScope()

            async def run_until_cancelled() -> None:
                with scope:
                    await run_shell(services, {"command": ["sh", "-c", script]})

            tg.start_soon(run_until_cancelled)
            pgid = await _pid_from_fifo(fifo)
            scope.cancel()
            cancelled.set()
    assert scope.cancelled_caught
    assert live_group_members(pgid) == []


@pytest.mark.anyio
async def test_nonzero_exit_is_retryable_error_with_stderr(services: Services) -> None:
    with pytest.raises(ActionError) as info:
        await run_shell(services, {"command": ["sh", "-c", "echo boom >&2; exit 3"]})
    assert info.value.retryable
    assert "code 3" in str(info.value)
    assert "boom" in str(info.value)


@pytest.mark.anyio
async def test_failure_kills_background_children(services: Services, tmp_path: Path) -> None:
    fifo = tmp_path / "pid"
    os.mkfifo(fifo)
    script = f"sleep 300 & echo $$ > {shlex.quote(str(fifo))}; exit 1"
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            errors: list[ActionError] = []

            async def run() -> None:
                try:
                    await run_shell(services, {"command": ["sh", "-c", script]})
                except ActionError as exc:
                    errors.append(exc)

            tg.start_soon(run)
            pgid = await _pid_from_fifo(fifo)
    assert errors and "code 1" in str(errors[0])
    assert live_group_members(pgid) == []


@pytest.mark.anyio
async def test_missing_program_is_permanent(services: Services) -> None:
    with pytest.raises(ActionError) as info:
        await run_shell(services, {"command": ["/nonexistent/zoomrules-test-program"]})
    assert not info.value.retryable


ENV_DUMP = "import json, os; print(json.dumps(dict(os.environ)))"


@pytest.mark.anyio
async def test_env_is_isolated(services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZOOMRULES_TEST_SECRET", "hunter2")
    result = await run_shell(
        services,
        {"command": [PY, "-c", ENV_DUMP], "env": {"TOPIC": "{{ payload.object.topic }}", "N": "1"}},
    )
    env = json.loads(result["stdout"])
    assert "ZOOMRULES_TEST_SECRET" not in env
    assert env["PATH"] == os.environ["PATH"]
    assert env["TOPIC"] == "Weekly project sync"
    # Python itself may add LC_CTYPE (PEP 538); nothing else of ours leaks.
    assert set(env) - {"LC_CTYPE"} == {"PATH", "TOPIC", "N"}


@pytest.mark.anyio
async def test_inherit_env_passes_parent_environment(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZOOMRULES_TEST_VISIBLE", "yes")
    result = await run_shell(
        services, {"command": [PY, "-c", ENV_DUMP], "inherit_env": True, "env": {"X": "1"}}
    )
    env = json.loads(result["stdout"])
    assert env["ZOOMRULES_TEST_VISIBLE"] == "yes"
    assert env["X"] == "1"


@pytest.mark.anyio
async def test_stdin_event(services: Services) -> None:
    event = Event.from_body(EXAMPLES["meeting.participant_joined"]["example"], source="test")
    result = await run_shell(
        services,
        {"command": [PY, "-c", "import sys; sys.stdout.write(sys.stdin.read())"], "stdin": "event"},
        event,
    )
    assert json.loads(result["stdout"]) == event.body


@pytest.mark.anyio
async def test_stdin_is_closed_without_stdin_param(services: Services) -> None:
    result = await run_shell(
        services, {"command": [PY, "-c", "import sys; print(repr(sys.stdin.read()))"]}
    )
    assert result["stdout"].strip() == "''"


@pytest.mark.anyio
async def test_output_is_truncated(services: Services) -> None:
    result = await run_shell(
        services, {"command": [PY, "-c", "import sys; sys.stdout.write('x' * 200_000)"]}
    )
    assert result["stdout"] == "x" * shell.CAPTURE_BYTES


def test_validate() -> None:
    validate = action_type(shell).validate
    assert validate is not None
    assert validate({"command": ["echo", "hi"]}) == []
    assert validate({"command": "echo hi", "shell": True}) == []
    assert validate({"command": "echo hi"})
    assert validate({"command": []})
    assert validate({"command": ["echo", 3]})
    assert validate({"command": ["echo"], "shell": True})
    assert validate({"command": ["echo"], "env": {"A=B": "x"}})
