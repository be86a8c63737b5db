"""`zoomrules replay` shows a progress bar on standard error when it is a
terminal (a pseudo-terminal here), and nothing of the sort otherwise."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import threading
from pathlib import Path

from conftest import ROOT, cli_env, example, run_cli, write_rules

#: Colours and styles (inside a line of text).
_STYLES = re.compile(r"\x1b\[[0-9;]*m")
#: What ends a piece of text on a terminal: cursor moves, erasing, line ends.
_CONTROLS = re.compile(r"\x1b\[[0-9;?]*[A-Za-ln-z]|\r|\n")


def run_on_terminal(
    *args: str | Path, input: str = "", stdout_too: bool = False, columns: int = 120
) -> tuple[int, str, str]:
    """The real CLI with standard error (and, with `stdout_too`, standard
    output) on a pseudo-terminal: (exit status, standard output if not on
    the terminal, everything the terminal received)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    env = cli_env(TERM="xterm-256color")
    for name in ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "COLUMNS"):
        env.pop(name, None)
    received = bytearray()

    def drain() -> None:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every writer closed the terminal
                return
            if not chunk:
                return
            received.extend(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine.cli", *map(str, args)],
            stdin=subprocess.PIPE, stdout=slave if stdout_too else subprocess.PIPE, stderr=slave,
            env=env, cwd=ROOT, text=True,
        )  # fmt: skip
        os.close(slave)
        reader.start()
        out, _ = proc.communicate(input, timeout=120)
        reader.join(timeout=30)
    finally:
        os.close(master)
    return proc.returncode, out or "", received.decode(errors="replace")


def _setup(tmp_path: Path) -> tuple[Path, Path]:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    rules = write_rules(
        tmp_path,
        f"""
        [engine]
        journal = false

        [[rule]]
        name = "ended"
        on = ["meeting.ended"]

          [[rule.action]]
          type = "log"
          path = "{tmp_path / "ended.jsonl"}"

        [[rule]]
        name = "broken"
        on = ["meeting.started"]

          [[rule.action]]
          type = "log"
          path = "{blocker}/cannot/write.jsonl"
          retries = 0

        [[rule]]
        name = "say"
        on = ["meeting.ended"]

          [[rule.action]]
          type = "print"
          message = "said: {{{{ payload.object.id }}}} ended"
        """,
    )
    lines = [json.dumps(example("meeting.ended")), json.dumps(example("meeting.started"))]
    lines += [json.dumps(example("user.created")), "{not json"]
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(lines) + "\n\n")  # a blank line is not counted
    return rules, events


def _plain(terminal: str) -> list[str]:
    """The pieces of text the terminal was sent, each written whole between
    two cursor moves or line ends (styles removed)."""
    return [piece for piece in _CONTROLS.split(_STYLES.sub("", terminal)) if piece.strip()]


def test_on_a_terminal_a_progress_bar_runs_on_standard_error(tmp_path: Path) -> None:
    rules, events = _setup(tmp_path)
    status, out, terminal = run_on_terminal("replay", "-c", rules, events)
    assert status == 1, out + terminal  # an invalid line, a failed action
    lines = _plain(terminal)
    bars = [line for line in lines if line.startswith("replaying ")]
    assert bars, terminal
    # The last state drawn: every line read (of a known total), the firings, the failure.
    assert "4/4 · 3 fired · 1 failed" in bars[-1], bars[-1]
    # The engine's log lines (the failed action's) were printed above the bar, whole.
    logged = [line for line in lines if "zoomrules." in line]
    assert logged, terminal
    for line in logged:
        assert "replaying" not in line and "━" not in line, line
    # The summary is on standard output, as always.
    assert f"\nreplayed 3 events from {events} in " in out
    assert "actions: 2 ok, 1 failed" in out


def test_the_total_is_unknown_for_standard_input(tmp_path: Path) -> None:
    rules, events = _setup(tmp_path)
    status, out, terminal = run_on_terminal("replay", "-c", rules, "-", input=events.read_text())
    assert status == 1, out + terminal
    bars = [line for line in _plain(terminal) if line.startswith("replaying ")]
    assert bars and "4/? · 3 fired · 1 failed" in bars[-1], terminal
    assert "\nreplayed 3 events from - in " in out


def test_what_actions_print_goes_above_the_bar_when_stdout_is_the_terminal(
    tmp_path: Path,
) -> None:
    rules, events = _setup(tmp_path)
    status, _, terminal = run_on_terminal("replay", "-c", rules, events, stdout_too=True)
    assert status == 1, terminal
    lines = _plain(terminal)
    said = [line for line in lines if "said: " in line]
    assert said == [f"said: {example('meeting.ended')['payload']['object']['id']} ended"], terminal
    assert any(line.startswith("replayed 3 events from ") for line in lines), terminal


def test_no_progress_bar_when_standard_error_is_not_a_terminal(tmp_path: Path) -> None:
    rules, events = _setup(tmp_path)
    result = run_cli("replay", "-c", rules, events)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "replaying" not in result.stderr
    assert "\x1b[" not in result.stderr and "\r" not in result.stderr
    assert "zoomrules." in result.stderr  # the engine's log lines, as plain lines
    assert f"\nreplayed 3 events from {events} in " in result.stdout
