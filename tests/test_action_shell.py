"""The `shell` action: argv safety, shell=true quoting, process-group cleanup, env, stdin."""

from __future__ import annotations

import contextlib
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
from conftest import product_events, run_cli, write_rules

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


# -- hostile days: `{{ }}` in quotes with shell = true (checked by `zoomrules check`) --

X = "{{ payload.object.topic }}"
QUOTED = (
    "with shell = true every value is already quoted, and quotes around it undo that; "
    "remove the surrounding quotes"
)


def check_shell(command: str) -> list[str]:
    validate = action_type(shell).validate
    assert validate is not None
    return validate({"command": command, "shell": True})


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (f'echo "{X}"', f"command: {X} is inside double quotes: {QUOTED}"),
        (f'echo "topic: {X}!"', f"command: {X} is inside double quotes: {QUOTED}"),
        (f"echo '{X}'", f"command: {X} is inside single quotes: {QUOTED}"),
        (f"echo $'{X}'", f"command: {X} is inside single quotes: {QUOTED}"),
        (f'echo "a \\" b {X}"', f"command: {X} is inside double quotes: {QUOTED}"),
        (f'echo "${{T:-{X}}}"', f"command: {X} is inside double quotes: {QUOTED}"),
        (f'echo "$(echo "{X}")"', f"command: {X} is inside double quotes: {QUOTED}"),
        (
            f"echo `echo {X}`",
            f"command: {X} is inside backquotes, where its quoting does not hold: "
            "write $( ) instead",
        ),
        (
            f"cat <<EOF\nTopic: {X}\nEOF",
            f"command: {X} is inside a here-document, where quotes do not quote and a line "
            "of the value can end it: pass the value as an argument or through env",
        ),
        (
            f"cat <<-'EOF'\n\tTopic: {X}\n\tEOF\necho done",
            f"command: {X} is inside a here-document, where quotes do not quote and a line "
            "of the value can end it: pass the value as an argument or through env",
        ),
        (
            f"echo hi # {X}",
            f"command: {X} is inside a comment, which a newline in the value would end: remove it",
        ),
        (
            f"echo $(( {X} + 1 ))",
            f"command: {X} is inside $(( )), which evaluates its text as code: "
            "pass the value through env and check it in the program",
        ),
    ],
)
def test_validate_flags_a_template_inside_quotes(command: str, message: str) -> None:
    assert check_shell(command) == [message]


@pytest.mark.parametrize(
    "command",
    [
        f"echo {X}",
        f"echo {X} && echo done",
        f'echo "$(echo {X})"',  # $( ) inside double quotes starts afresh
        f'echo \\"{X}\\"',  # escaped quotes are not quotes
        f"echo 'it''s' \"fine\" {X} 'and' \"so is this\"",
        f'echo "a\\"b" {X}',
        "echo {{ payload.object.topic || 'it''s \"none\"' }} done",  # quotes inside {{ }}
        "echo {{ join(',', [payload.object.topic, 'x']) }}",
        f"TOPIC={X} printenv TOPIC",
        f"printf '%s\\n' {X} | tr a-z A-Z > /dev/null 2>&1",
        f"cat <<EOF | grep x\nno template here\nEOF\necho {X}",
        f"cat <<< {X}",
        f"echo a#b {X}",
    ],
)
def test_validate_leaves_unquoted_templates_alone(command: str) -> None:
    assert check_shell(command) == []


@pytest.mark.parametrize(
    "command",
    [
        f"{X} --flag",
        f"echo a; {X}",
        f"echo a | {X}",
        f"echo a && /opt/hooks/{X} --flag",
        f"FOO=1 {X}",
        f"exec {X}",
        f"env A=1 {X}",
        f"if {X}; then echo y; fi",
        f"(cd /tmp && {X})",
        f"echo $({X})",
    ],
)
def test_validate_flags_a_template_as_the_program(command: str) -> None:
    assert check_shell(command) == [
        f"command: {X} is where a program name goes: event data must not choose the "
        "program; write the program literally"
    ]


def test_validate_flags_escapes_and_scripts() -> None:
    assert check_shell(f"echo \\{X}") == [
        f"command: {X} follows a backslash, which escapes the opening quote of the value: "
        "remove the backslash"
    ]
    assert check_shell(f"echo ${X}") == [
        f"command: {X} directly follows a $, which changes how its quotes are read: separate them"
    ]
    assert check_shell(f"bash -ec {X}") == [
        f"command: {X} is the script of a shell's -c, which runs it as shell code: pass the "
        'value as an argument ("$1") instead'
    ]


def test_validate_flags_eval_and_redirection_targets() -> None:
    assert check_shell(f"eval echo {X}") == [
        f"command: {X} is an argument of eval, which runs it as shell code: pass it as data"
    ]
    redirect = (
        f"command: {X} names the file of a redirection: event data must not choose files "
        "(write the name literally, or use the log action)"
    )
    assert check_shell(f"echo hi > /var/log/zr/{X}.txt") == [redirect]
    assert check_shell(f"echo hi 2>>{X}") == [redirect]
    assert check_shell(f"wc -l < {X}") == [redirect]


#: Placements the check accepts: the value must stay data in every one of them.
ACCEPTED = [
    "echo T",
    "echo pre-T-post",
    'echo "$(echo T)"',
    'x=T; echo "$x"',
    "case T in *) echo ok;; esac",
    'for i in T; do echo "$i"; done',
    "[ T = a ] || echo no",
    "echo ${A:-T}",
    "cat <<EOF\nx\nEOF\necho T",
    "sh -c 'echo \"$1\"' sh T",
    "env X=T sh -c 'echo \"$X\"'",
    'echo "a"T"b"',
    "echo T 2>&1 | cat",
]
SHELL_HOSTILE = [
    "$(touch PWNED)",
    "`touch PWNED`",
    "a\nEOF\ntouch PWNED\n",
    "x'; touch PWNED; '",
    'x"; touch PWNED; "',
    "1+a[$(touch PWNED)]",
    "esac; touch PWNED;",
    "' ; touch PWNED #",
]


@pytest.mark.anyio
@pytest.mark.parametrize("snippet", ACCEPTED)
async def test_every_placement_the_check_accepts_keeps_values_data(
    services: Services, tmp_path: Path, snippet: str
) -> None:
    command = snippet.replace("T", X)
    assert check_shell(command) == []
    for value in SHELL_HOSTILE:
        with contextlib.suppress(ActionError):  # a failing command is fine; running one is not
            await run_shell(
                services,
                {"command": command, "shell": True, "cwd": str(tmp_path)},
                meeting_event(topic=value),
            )
        assert os.listdir(tmp_path) == [], (command, value)


@pytest.mark.anyio
async def test_what_the_check_prevents(tmp_path: Path) -> None:
    """Why: double quotes around a shlex-quoted value hand its `$(...)` back to the shell."""
    value = shlex.quote("$(touch PWNED)")
    await anyio.run_process([shell.SHELL, "-c", f'echo "{value}"'], cwd=tmp_path)
    assert os.listdir(tmp_path) == ["PWNED"]
    os.remove(tmp_path / "PWNED")
    await anyio.run_process([shell.SHELL, "-c", f"echo {value}"], cwd=tmp_path)
    assert os.listdir(tmp_path) == []  # unquoted, as the check asks: printed, not run


def test_zoomrules_check_reports_the_quoted_template(tmp_path: Path) -> None:
    rules = write_rules(
        tmp_path,
        """
        [[rule]]
        name = "greet"
        on = ["meeting.started"]

          [[rule.action]]
          type = "shell"
          shell = true
          command = "notify-send \\"Started: {{ payload.object.topic }}\\""
        """,
    )
    result = run_cli("check", "-c", rules)
    assert result.returncode == 2, result.stdout + result.stderr
    assert (
        f"rule 'greet', key 'action[1]': command: {X} is inside double quotes: {QUOTED}"
        in result.stderr
    )


# -- hostile days: files and programs chosen by event data --------------------------


@pytest.mark.anyio
async def test_templated_cwd_stays_in_its_directory(services: Services, tmp_path: Path) -> None:
    work = tmp_path / "work"
    (work / "team-a").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    params = {
        "command": [PY, "-c", "import os; open('marker', 'w'); print(os.getcwd())"],
        "cwd": f"{work}/{X}",
    }
    result = await run_shell(services, params, meeting_event(topic="team-a"))
    assert result["stdout"].strip() == str(work / "team-a")
    with pytest.raises(ActionError) as info:
        await run_shell(services, params, meeting_event(topic="../outside"))
    assert not info.value.retryable
    assert str(info.value) == f"cwd: rendered path leaves {work}/: '../outside'"
    assert os.listdir(tmp_path / "outside") == []


@pytest.mark.anyio
async def test_templated_program_stays_in_its_directory(services: Services, tmp_path: Path) -> None:
    hooks, evil = tmp_path / "hooks", tmp_path / "evil"
    hooks.mkdir()
    evil.mkdir()
    for directory in (hooks, evil):
        script = directory / "hook.sh"
        script.write_text(
            f"#!/bin/sh\necho {directory.name}\ntouch {tmp_path}/ran-{directory.name}\n"
        )
        script.chmod(0o755)
    params = {"command": [f"{hooks}/{X}", "arg"]}
    result = await run_shell(services, params, meeting_event(topic="hook.sh"))
    assert result["stdout"] == "hooks\n"
    with pytest.raises(ActionError) as info:
        await run_shell(services, params, meeting_event(topic="../evil/hook.sh"))
    assert not info.value.retryable
    assert str(info.value) == f"command[0]: rendered path leaves {hooks}/: '../evil/hook.sh'"
    assert not (tmp_path / "ran-evil").exists()
    # A name too long to start: refused without echoing it at length.
    with pytest.raises(ActionError) as info:
        await run_shell(services, params, meeting_event(topic="n" * 5000))
    assert not info.value.retryable
    assert str(info.value).startswith("cannot start ") and len(str(info.value)) < 300


def test_validate_templated_files_and_programs() -> None:
    validate = action_type(shell).validate
    assert validate is not None
    program = (
        "command[0]: event data must not choose the program: a templated program needs a "
        "fixed absolute directory before its first {{ }} (e.g. /usr/local/lib/zoomrules/{{ ... }})"
    )
    assert validate({"command": ["/opt/hooks/{{ payload.object.id }}.sh"]}) == []
    assert validate({"command": ["{{ payload.object.topic }}", "x"]}) == [program]
    assert validate({"command": ["hooks/{{ payload.object.topic }}"]}) == [program]
    assert validate({"command": ["/{{ payload.object.topic }}"]}) == [program]
    assert validate({"command": ["env", "A=1", "{{ payload.object.topic }}"]}) == [
        "command[2]: event data must not choose the program run by env; write the program literally"
    ]
    script = (
        "command[2]: a {{ }} in a script run by sh -c is pasted into shell code unquoted: "
        'pass the value as an argument ("$1") or use shell = true'
    )
    assert validate({"command": ["sh", "-c", "echo {{ payload.object.topic }}"]}) == [script]
    assert validate({"command": ["/bin/bash", "-ec", "echo {{ payload.object.topic }}"]}) == [
        script.replace("sh -c", "bash -c")
    ]
    assert (
        validate({"command": ["sh", "-c", 'echo "$1"', "sh", "{{ payload.object.topic }}"]}) == []
    )
    assert validate({"command": ["ls"], "cwd": "/srv/work/{{ payload.object.id }}"}) == []
    assert validate({"command": ["ls"], "cwd": "/{{ payload.object.id }}"}) == [
        "cwd: the directory before the first {{ }} is /, which confines nothing: "
        "write one (e.g. /srv/zoomrules/work/{{ ... }})"
    ]
    loader = (
        "env: a templated {name} would let event data choose what the program loads; "
        "write it literally"
    )
    assert validate(
        {"command": ["ls"], "env": {"LD_PRELOAD": "/x/{{ payload.object.topic }}.so"}}
    ) == [loader.format(name="LD_PRELOAD")]
    assert validate({"command": ["ls"], "env": {"PATH": "/bin:{{ payload.object.topic }}"}}) == [
        loader.format(name="PATH")
    ]
    assert validate({"command": ["ls"], "env": {"LD_LIBRARY_PATH": "/opt/lib"}}) == []
    assert validate({"command": ["ls"], "env": {"TOPIC": "{{ payload.object.topic }}"}}) == []


# -- hostile days: what reaches logs and messages -----------------------------------


@pytest.mark.anyio
async def test_output_in_logs_and_messages_is_one_short_line(
    services: Services, caplog: pytest.LogCaptureFixture
) -> None:
    topic = "A" * 3000 + "\n2026-01-01 00:00:00 INFO forged log line\n" + "B" * 3000
    script = "import sys; t = sys.argv[1]; print(t); print(t, file=sys.stderr); sys.exit(3)"
    caplog.set_level("DEBUG")
    with pytest.raises(ActionError) as info:
        await run_shell(services, {"command": [PY, "-c", script, X]}, meeting_event(topic=topic))
    message = str(info.value)
    assert message.startswith("command exited with code 3: ")
    assert len(message) < 260 and "\n" not in message
    records = [r for r in caplog.records if r.name.startswith(("test.", "zoomrules"))]
    assert records
    for record in records:
        text = record.getMessage()
        assert "\n" not in text, text[:300]
        assert "A" * 201 not in text and "B" * 201 not in text
