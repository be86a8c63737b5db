"""Rule files built to break the loader: `check` reports them, a reload survives them.

Nesting deeper than any real rule file needs (TOML arrays and inline tables,
JMESPath parentheses, `!` and `&` prefixes, templates) used to end in a
RecursionError: a traceback from `check` (status 1, not 2) and a daemon
killed by its own SIGHUP.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cli_env, run_cli
from daemon_process import daemon_process, simulator_env
from test_daemon import ZOOM, example, log_rule, wait_lines

from engine.errors import ConfigError
from engine.loader import load_rules
from engine.nesting import expression_too_deep, toml_too_deep
from engine.simulator import Simulator

RULE = '[[rule]]\nname = "r"\non = ["meeting.started"]\n'


def _deep(kind: str, depth: int) -> str:
    if kind == "toml-array":
        return f"x = {'[' * depth}{']' * depth}\n"
    if kind == "toml-table":
        return f"x = {'{a = ' * depth}1{'}' * depth}\n"
    if kind == "parentheses":
        return f'{RULE}when = "{"(" * depth}a{")" * depth}"\n[[rule.action]]\ntype = "log"\n'
    if kind == "not":
        return f'{RULE}when = "{"!" * depth}a"\n[[rule.action]]\ntype = "log"\n'
    if kind == "template":
        inner = f"{'[' * depth}a{']' * depth}"
        return f'{RULE}[[rule.action]]\ntype = "print"\nmessage = "{{{{ {inner} }}}}"\n'
    raise AssertionError(kind)


KINDS = ["toml-array", "toml-table", "parentheses", "not", "template"]


@pytest.mark.parametrize("depth", [1_000, 100_000])
@pytest.mark.parametrize("kind", KINDS)
def test_check_reports_deep_nesting_with_file_and_line(
    tmp_path: Path, kind: str, depth: int
) -> None:
    rules = tmp_path / "deep.toml"
    rules.write_text(_deep(kind, depth))
    done = run_cli("check", "-c", rules, env=cli_env(), timeout=60)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "nested" in done.stderr
    line = 1 if kind.startswith("toml") else 4 if kind in ("parentheses", "not") else 6
    assert f"deep.toml:{line}:" in done.stderr
    assert len(done.stderr) < 2_000  # the offending text is not echoed whole


def test_nesting_within_bounds_still_loads(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    when = f"{'(' * 30}payload.object.id == '1'{')' * 30} && !!!(a || b)"
    nested_json = f"{'[' * 20}1{']' * 20}"
    rules.write_text(
        f'{RULE}when = "{when}"\n[[rule.action]]\ntype = "http"\nurl = "http://127.0.0.1:9"\n'
        f"json = {nested_json}\n"
    )
    assert [r.name for r in load_rules([rules]).rules] == ["r"]


def test_the_scanners_skip_strings_and_comments() -> None:
    assert toml_too_deep("a = \"[[[[[[[[[[\"\n# [[[[[[[[[[\nb = '''{{{{{{'''\n", limit=2) is None
    assert toml_too_deep("a = [[[1]]]\n", limit=2) == 1
    assert toml_too_deep('a = 1\nb = """\n"[[[\n"""\nc = [[[1]]]', limit=2) == 5
    assert not expression_too_deep("a == '(((((' && \"((((\" == `[[[[[`", limit=3)
    assert expression_too_deep("((((a))))", limit=3)
    assert expression_too_deep("!!!!a", limit=3)
    assert not expression_too_deep("!a && !b && !c && !d", limit=3)


def test_an_unexpected_error_while_loading_is_a_problem_not_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(f'{RULE}[[rule.action]]\ntype = "log"\n')

    def broken(*args: object, **kwargs: object) -> None:
        raise KeyError("a bug")

    monkeypatch.setattr("engine.loader.compile_rules", broken)
    with pytest.raises(ConfigError, match="loading failed: KeyError") as caught:
        load_rules([rules])
    assert caught.value.problems[0].file == rules


@pytest.mark.anyio
async def test_reload_onto_deeply_nested_files_keeps_the_daemon_and_its_rules(
    tmp_path: Path,
) -> None:
    fired = tmp_path / "fired.jsonl"
    rules = tmp_path / "rules.toml"
    good = ZOOM + log_rule("kept", "meeting.started", fired)
    rules.write_text(good)
    async with Simulator() as sim:
        env = simulator_env(sim, tmp_path / "state")
        async with daemon_process(["run", "-c", str(rules)], env) as daemon:
            await sim.wait_connected(timeout=20)
            failures = 0
            for kind in KINDS:
                for depth in (1_000, 100_000):
                    rules.write_text(ZOOM + _deep(kind, depth))
                    daemon.send_signal(signal.SIGHUP)
                    failures += 1
                    await daemon.wait_log("reload failed", count=failures, timeout=30)
            await sim.send_event(example("meeting.started", topic="still here"))
            got = await wait_lines(fired, 1)
            assert got[0]["rule"] == "kept"
            assert sim.accepted_connections == 1
            daemon.send_signal(signal.SIGTERM)
            assert await daemon.wait_exit() == 0
    assert "Traceback" not in daemon.output()


def test_the_systemd_check_fails_with_status_2_not_a_traceback(tmp_path: Path) -> None:
    """The shipped unit runs `zoomrules check` as ExecStartPre: it must exit 2 cleanly."""
    rules = tmp_path / "rules.toml"
    rules.write_text(_deep("parentheses", 100_000))
    done = subprocess.run(
        [sys.executable, "-m", "engine.cli", "check", "-c", str(rules)],
        capture_output=True, text=True, timeout=60, env=cli_env(),
    )  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
