"""Rule-file checks: every mistake named by file, line, rule and key, all at once."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from conftest import ZOOM_ENV, run_cli, write_rules

from engine.errors import ConfigError
from engine.loader import LoadedRules, load_rules
from engine.plugin import ActionContext, ActionType, Param, hookimpl
from engine.problems import Problem

RULE_OK = """
[[rule]]
name = "ok"
on = ["meeting.started"]

  [[rule.action]]
  type = "log"
"""


def load(paths: list[Path] | Path, env: dict[str, str] | None = None) -> LoadedRules:
    paths = paths if isinstance(paths, list) else [paths]
    return load_rules(paths, env=dict(ZOOM_ENV) if env is None else env)


def problems(paths: list[Path] | Path, env: dict[str, str] | None = None) -> list[Problem]:
    with pytest.raises(ConfigError) as info:
        load(paths, env)
    return info.value.problems


def only(found: list[Problem]) -> Problem:
    assert len(found) == 1, [str(p) for p in found]
    return found[0]


def test_valid_file_loads(tmp_path: Path) -> None:
    loaded = load(write_rules(tmp_path, RULE_OK))
    assert [r.name for r in loaded.rules] == ["ok"]
    assert loaded.config.zoom is None


def test_bad_toml_names_file_and_line(tmp_path: Path) -> None:
    path = write_rules(
        tmp_path,
        """
        version = 1

        [[rule]]
        name = "broken
        on = ["meeting.started"]
        """,
    )
    problem = only(problems(path))
    assert problem.file == path
    assert problem.line == 4
    assert problem.where == "TOML syntax"
    assert str(problem).startswith(f"{path}:4: TOML syntax: ")


def test_unknown_section_with_did_you_mean(tmp_path: Path) -> None:
    path = write_rules(tmp_path, "version = 1\n\n[engnie]\nmax_concurrency = 4\n" + RULE_OK)
    problem = only(problems(path))
    assert (problem.file, problem.line, problem.key) == (path, 3, "engnie")
    assert "unknown key (did you mean 'engine'?)" in str(problem)


def test_unknown_key_in_rule_with_did_you_mean(tmp_path: Path) -> None:
    path = write_rules(
        tmp_path,
        """
        [[rule]]
        name = "typo"
        on = ["meeting.started"]
        priority = 1
        wehn = "payload.object.topic"

          [[rule.action]]
          type = "log"
        """,
    )
    found = problems(path)
    assert [str(p) for p in found] == [
        f"{path}:4: rule 'typo', key 'priority': unknown key",
        f"{path}:5: rule 'typo', key 'wehn': unknown key (did you mean 'when'?)",
    ]


def test_unknown_key_in_engine_table(tmp_path: Path) -> None:
    path = write_rules(tmp_path, "[engine]\nmax_concurency = 4\n" + RULE_OK)
    problem = only(problems(path))
    assert str(problem) == (
        f"{path}:2: [engine], key 'max_concurency': unknown key (did you mean 'max_concurrency'?)"
    )


def test_bad_jmespath_in_when(tmp_path: Path) -> None:
    path = write_rules(
        tmp_path,
        """
        [[rule]]
        name = "bad-when"
        on = ["meeting.started"]
        description = "the condition has an unbalanced bracket"
        when = "payload.object.[topic"

          [[rule.action]]
          type = "log"
        """,
    )
    problem = only(problems(path))
    assert (problem.file, problem.line, problem.where, problem.key) == (
        path,
        5,
        "rule 'bad-when'",
        "when",
    )
    assert "invalid JMESPath" in problem.message


def test_unknown_function_in_when(tmp_path: Path) -> None:
    path = write_rules(
        tmp_path,
        """
        [[rule]]
        name = "fn"
        on = ["meeting.started"]
        when = "lowercase(payload.object.topic) == 'x'"

          [[rule.action]]
          type = "log"
        """,
    )
    problem = only(problems(path))
    assert (problem.line, problem.key) == (4, "when")
    assert "unknown function: lowercase()" in problem.message


def test_bad_template_in_action_parameter(tmp_path: Path) -> None:
    path = write_rules(
        tmp_path,
        """
        [[rule]]
        name = "bad-template"
        on = ["meeting.started"]

          [[rule.action]]
          type = "notify"
          to = "mailto://ops@example.com"
          title = "fine {{ payload.object.topic }}"
          body = "started by {{ payload.object.host_id ]] }}"
        """,
    )
    problem = only(problems(path))
    assert (problem.file, problem.line, problem.where, problem.key) == (
        path,
        9,
        "rule 'bad-template'",
        "action[1].body",
    )
    assert "in template {{ payload.object.host_id ]] }}" in problem.message


def test_unclosed_template(tmp_path: Path) -> None:
    path = write_rules(
        tmp_path,
        """
        [[rule]]
        name = "unclosed"
        on = ["meeting.started"]

          [[rule.action]]
          type = "log"
          path = "/tmp/{{ payload.object.id"
        """,
    )
    problem = only(problems(path))
    assert (problem.line, problem.key) == (7, "action[1].path")
    assert "unclosed '{{'" in problem.message


def test_unknown_action_type_with_did_you_mean(tmp_path: Path) -> None:
    path = write_rules(
        tmp_path,
        """
        [[rule]]
        name = "bad-type"
        on = ["meeting.started"]

          [[rule.action]]
          type = "log"

          [[rule.action]]
          type = "notfy"
          body = "x"
        """,
    )
    problem = only(problems(path))
    assert (problem.line, problem.where, problem.key) == (9, "rule 'bad-type'", "action[2].type")
    assert "unknown action type 'notfy' (did you mean 'notify'?)" in problem.message
    assert "known: " in problem.message and "log" in problem.message


def test_unknown_action_parameter(tmp_path: Path) -> None:
    path = write_rules(
        tmp_path,
        """
        [[rule]]
        name = "bad-param"
        on = ["meeting.started"]

          [[rule.action]]
          type = "log"
          paht = "/tmp/x.jsonl"
        """,
    )
    problem = only(problems(path))
    assert str(problem) == (
        f"{path}:7: rule 'bad-param', key 'action[1].paht': "
        "unknown parameter for action type 'log' (did you mean 'path'?)"
    )


def test_missing_action_parameter(tmp_path: Path) -> None:
    path = write_rules(
        tmp_path,
        """
        [[rule]]
        name = "no-url"
        on = ["meeting.started"]

          [[rule.action]]
          type = "http"
          method = "POST"
        """,
    )
    problem = only(problems(path))
    # The key is absent, so the line is the action's own table header.
    assert (problem.line, problem.where, problem.key) == (5, "rule 'no-url'", "action[1].url")
    assert "missing required parameter of action type 'http'" in problem.message


def test_mistyped_action_parameter(tmp_path: Path) -> None:
    path = write_rules(
        tmp_path,
        """
        [[rule]]
        name = "typed"
        on = ["meeting.started"]

          [[rule.action]]
          type = "http"
          url = "https://example.com/hook"
          expect = 200
        """,
    )
    problem = only(problems(path))
    assert str(problem) == (
        f"{path}:8: rule 'typed', key 'action[1].expect': must be a list, got integer 200"
    )


class _Sized:
    """An action type with integer parameters and a check of its own."""

    @hookimpl
    def zoomrules_action_types(self) -> list[ActionType]:
        async def run(params: Mapping[str, Any], ctx: ActionContext) -> None:
            raise AssertionError("never run")

        def validate(params: Mapping[str, Any]) -> list[str]:
            return ["label: must not be 'bad'"] if params.get("label") == "bad" else []

        params = [Param("n", int), Param("m", int), Param("label", str)]
        return [ActionType(name="sized", run=run, params=params, validate=validate)]


def _sized_rules(tmp_path: Path, *actions: str) -> Path:
    """One rule per action table body, named r1, r2, ... (each 6 lines)."""
    rules = [
        f'[[rule]]\nname = "r{i}"\non = ["meeting.started"]\n'
        f'  [[rule.action]]\n  type = "sized"\n  {body}\n'
        for i, body in enumerate(actions, start=1)
    ]
    return write_rules(tmp_path, "\n".join(rules))


def _load_sized(path: Path) -> LoadedRules:
    return load_rules([path], env=dict(ZOOM_ENV), extra_plugins=[_Sized()])


def test_actions_with_the_same_parameters_each_report_their_problems(tmp_path: Path) -> None:
    # Parameters are checked once per distinct table (engine.ruleset); a
    # broken table repeated is still reported at each place it is written.
    path = _sized_rules(
        tmp_path, 'n = "x"', 'n = "x"', "n = 2", 'label = "bad"', 'label = "bad"', "n = 2"
    )
    with pytest.raises(ConfigError) as info:
        _load_sized(path)
    found = [(p.line, p.where, p.key, p.message) for p in info.value.problems]
    mistyped = "must be an integer, got string 'x'"
    assert found == [
        (6, "rule 'r1'", "action[1].n", mistyped),
        (13, "rule 'r2'", "action[1].n", mistyped),
        (25, "rule 'r4'", "action[1]", "label: must not be 'bad'"),
        (32, "rule 'r5'", "action[1]", "label: must not be 'bad'"),
    ]


def test_equal_parameters_of_other_types_are_checked_apart(tmp_path: Path) -> None:
    # 1 == true in Python; `true` is still not an integer.
    path = _sized_rules(tmp_path, "n = 1", "n = true", "n = 0", "n = false")
    with pytest.raises(ConfigError) as info:
        _load_sized(path)
    found = [(p.where, p.message) for p in info.value.problems]
    assert found == [
        ("rule 'r2'", "must be an integer, got boolean True"),
        ("rule 'r4'", "must be an integer, got boolean False"),
    ]


def test_actions_sharing_parameters_render_their_own(tmp_path: Path) -> None:
    label = 'label = "{{ payload.object.id }}-x"'
    path = _sized_rules(
        tmp_path, label, "n = 5", "m = 5", label, "n = 6", 'label = "{{ payload.object.id }}-y"'
    )
    loaded = _load_sized(path)
    root = {"payload": {"object": {"id": 7}}}
    rendered = [rule.actions[0].render(root) for rule in loaded.rules]
    assert rendered == [
        {"label": "7-x"}, {"n": 5}, {"m": 5}, {"label": "7-x"}, {"n": 6}, {"label": "7-y"},
    ]  # fmt: skip


def test_specs_are_what_their_classes_make(tmp_path: Path) -> None:
    # engine.config makes rule and action specs without their __init__.
    path = write_rules(
        tmp_path,
        """
        [engine]
        action_retries = 5

        [[rule]]
        name = "full"
        on = ["meeting.started", "meeting.ended"]
        when = "payload.object.id == '1'"
        stop = true
        enabled = false
        description = "all keys"
        throttle = { key = "payload.object.id", limit = 2, per = "1m" }

          [[rule.action]]
          type = "log"
          timeout = "3s"
          continue_on_error = true

          [[rule.action]]
          type = "print"
          message = "{{ payload.object.id }}"
          retries = 1
        """
        + RULE_OK,
    )
    specs = [spec for rule in load(path).config.rules for spec in (rule, *rule.actions)]
    assert len(specs) == 5
    for spec in specs:
        made = dataclasses.replace(spec)  # every field through __init__
        assert list(vars(spec).items()) == list(vars(made).items())
        assert spec == made


def test_mistyped_common_action_key(tmp_path: Path) -> None:
    path = write_rules(
        tmp_path,
        """
        [[rule]]
        name = "retries"
        on = ["meeting.started"]

          [[rule.action]]
          type = "log"
          retries = "three"
        """,
    )
    problem = only(problems(path))
    assert (problem.line, problem.key) == (7, "action[1].retries")
    assert "must be an integer, got string 'three'" in problem.message


def test_missing_environment_variable(tmp_path: Path) -> None:
    path = write_rules(
        tmp_path,
        """
        [[rule]]
        name = "needs-env"
        on = ["meeting.started"]

          [[rule.action]]
          type = "http"
          url = "${HOOK_URL}"
        """,
    )
    problem = only(problems(path, env={}))
    assert str(problem) == (
        f"{path}:7: rule 'needs-env', key 'action[1].url': environment variable HOOK_URL "
        "is not set (set it, or write ${HOOK_URL:-default})"
    )
    # Set, it loads; the value is interpolated.
    loaded = load(path, env={"HOOK_URL": "https://hooks.example.com/x"})
    assert loaded.rules[0].actions[0].render({})["url"] == "https://hooks.example.com/x"


def test_missing_environment_variable_in_zoom_table(tmp_path: Path) -> None:
    path = write_rules(
        tmp_path,
        """
        [zoom]
        client_id = "${ZOOM_CLIENT_ID}"
        client_secret = "${ZOOM_CLIENT_SECRET}"
        endpoint = "wss://ws.zoom.us/ws?subscriptionId=abc"
        """
        + RULE_OK,
    )
    found = problems(path, env={"ZOOM_CLIENT_ID": "id"})
    problem = only(found)
    assert (problem.line, problem.where, problem.key) == (3, "[zoom]", "client_secret")
    assert "ZOOM_CLIENT_SECRET is not set" in problem.message


def test_environment_defaults_and_dollar_escape(tmp_path: Path) -> None:
    path = write_rules(
        tmp_path,
        """
        [[rule]]
        name = "env"
        on = ["meeting.started"]

          [[rule.action]]
          type = "log"
          path = "${LOG_DIR:-/var/log/zr}/${LOG_NAME:-x}-$${HOME}.jsonl"
        """,
    )
    loaded = load(path, env={"LOG_NAME": "set"})
    assert _path(loaded) == "/var/log/zr/set-${HOME}.jsonl"
    # An empty variable counts as unset when a default is given.
    loaded = load(path, env={"LOG_DIR": "", "LOG_NAME": ""})
    assert _path(loaded) == "/var/log/zr/x-${HOME}.jsonl"


@pytest.mark.parametrize("dollar", ["\\u0024", "\\U00000024"])
def test_environment_variable_written_with_an_escaped_dollar(tmp_path: Path, dollar: str) -> None:
    """A `$` that TOML reads from an escape is interpolated like any other."""
    text = RULE_OK.replace('type = "log"', f'type = "log"\n  path = "{dollar}{{LOG_DIR}}/a.jsonl"')
    loaded = load(write_rules(tmp_path, text), env={"LOG_DIR": "/srv/logs"})
    assert _path(loaded) == "/srv/logs/a.jsonl"


def test_duplicate_rule_name_in_one_file(tmp_path: Path) -> None:
    path = write_rules(tmp_path, RULE_OK + "\n" + RULE_OK)
    problem = only(problems(path))
    assert str(problem) == (
        f"{path}:10: rule 'ok', key 'name': duplicate rule name (first defined at {path}:1)"
    )


def test_duplicate_rule_name_across_two_files(tmp_path: Path) -> None:
    first = write_rules(tmp_path, RULE_OK, "a.toml")
    second = write_rules(tmp_path, "# second file\n" + RULE_OK, "b.toml")
    problem = only(problems([first, second]))
    assert (problem.file, problem.line, problem.where, problem.key) == (
        second,
        4,
        "rule 'ok'",
        "name",
    )
    assert f"first defined at {first}:1" in problem.message


def test_bad_duration(tmp_path: Path) -> None:
    path = write_rules(
        tmp_path,
        """
        [[rule]]
        name = "durations"
        on = ["meeting.started"]
        throttle = { key = "payload.object.id", limit = 1, per = "ten minutes" }

          [[rule.action]]
          type = "log"
          timeout = "5 parsecs"
        """,
    )
    found = problems(path)
    assert [(p.line, p.where, p.key) for p in found] == [
        (4, "rule 'durations'", "throttle.per"),
        (8, "rule 'durations'", "action[1].timeout"),
    ]
    assert all("expected a duration like '30s'" in p.message for p in found)
    assert "'ten minutes'" in found[0].message and "'5 parsecs'" in found[1].message


def test_every_mistake_of_a_file_is_reported_at_once(tmp_path: Path) -> None:
    path = write_rules(
        tmp_path,
        """
        version = 1

        [engine]
        max_concurrency = 0

        [[rule]]
        name = "first"
        on = ["meeting.started"]
        when = "payload.object.topic =="
        enabeld = false

          [[rule.action]]
          type = "log"
          path = "${NO_SUCH_DIR}/x"

        [[rule]]
        on = ["meeting.ended"]
        throttle = { key = "payload.object.id", limit = 0, per = "1h" }

          [[rule.action]]
          type = "shel"

        [[rule]]
        name = "first"
        on = ["meeting.ended"]
        """,
    )
    found = problems(path, env={})
    assert all(p.file == path for p in found)
    got = [(p.line, p.where, p.key) for p in found]
    assert got == [
        (4, "[engine]", "max_concurrency"),
        (9, "rule 'first'", "when"),
        (10, "rule 'first'", "enabeld"),
        (14, "rule 'first'", "action[1].path"),
        (16, "rule #2", "name"),
        (18, "rule #2", "throttle.limit"),
        (21, "rule #2", "action[1].type"),
        (23, "rule 'first'", "action"),
        (24, "rule 'first'", "name"),
    ]
    # The CLI shows all of them too, and refuses the file; `check` runs
    # without secrets, so the unset variable is a warning there, not a problem.
    result = run_cli("check", "-c", path)
    assert result.returncode == 2
    assert f"{len(found) - 1} problems in the configuration" in result.stderr
    for problem in found:
        if problem.key == "action[1].path":
            assert "NO_SUCH_DIR is not set; checked with a placeholder" in result.stderr
        else:
            assert str(problem) in result.stderr


def test_several_files_and_directories_keep_file_order(tmp_path: Path) -> None:
    rules_dir = tmp_path / "rules.d"
    rules_dir.mkdir()
    for name, rule in [("20-b.toml", "b"), ("10-a.toml", "a"), ("30-c.toml", "c")]:
        write_rules(rules_dir, RULE_OK.replace('"ok"', f'"{rule}"'), name)
    (rules_dir / "notes.txt").write_text("not a rule file")
    single = write_rules(tmp_path, RULE_OK.replace('"ok"', '"z"'), "first.toml")
    loaded = load([single, rules_dir])
    assert [r.name for r in loaded.rules] == ["z", "a", "b", "c"]
    assert [r.spec.index for r in loaded.rules] == [0, 1, 2, 3]
    assert loaded.config.files == (
        single,
        rules_dir / "10-a.toml",
        rules_dir / "20-b.toml",
        rules_dir / "30-c.toml",
    )


def test_missing_rule_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    problem = only(problems(missing))
    assert problem.file == missing
    assert "cannot read" in problem.message


def test_check_command_on_several_files(tmp_path: Path) -> None:
    first = write_rules(tmp_path, RULE_OK, "a.toml")
    second = write_rules(tmp_path, RULE_OK, "b.toml")
    result = run_cli("check", "-c", first, "-c", second)
    assert result.returncode == 2
    assert f"{second}:2: rule 'ok', key 'name': duplicate rule name" in result.stderr
    ok = run_cli("check", "-c", first)
    assert ok.returncode == 0, ok.stderr
    assert f"OK: 1 rules, 1 actions in {first}" in ok.stdout


def test_loading_leaves_the_garbage_collector_as_it_was(tmp_path: Path) -> None:
    """Loading pauses Python's cyclic collector; it is back on afterwards,
    whether the file loads or not, and stays off if it was off."""
    import gc

    good = write_rules(tmp_path, RULE_OK)
    bad = tmp_path / "bad.toml"
    bad.write_text("[[rule]]\nname = 1\n")
    assert gc.isenabled()
    load(good)
    assert gc.isenabled()
    problems(bad)
    assert gc.isenabled()
    gc.disable()
    try:
        load(good)
        assert not gc.isenabled()
    finally:
        gc.enable()
    # Nothing is left frozen, and objects someone else froze stay frozen.
    assert gc.get_freeze_count() == 0
    gc.freeze()
    try:
        load(good)
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def _path(loaded: object) -> str:
    """The log action's rendered `path` (a raw parameter: the plugin renders it)."""
    from engine.explain import render_action

    action = loaded.rules[0].actions[0]  # type: ignore[attr-defined]
    path: str = render_action(action, {})["params"]["path"]
    return path


@pytest.mark.parametrize(
    ("listen", "host", "port"),
    [("127.0.0.1:9464", "127.0.0.1", 9464), ("[::1]:0", "::1", 0), ("0.0.0.0:80", "0.0.0.0", 80)],
)
def test_http_listen_is_host_and_port(tmp_path: Path, listen: str, host: str, port: int) -> None:
    path = write_rules(tmp_path, f'[http]\nlisten = "{listen}"\n' + RULE_OK)
    http = load(path).config.http
    assert http is not None and (http.host, http.port) == (host, port)


@pytest.mark.parametrize("listen", ["9464", "localhost", "::1:9464", "host:99999", ":9464"])
def test_a_bad_http_listen_is_named(tmp_path: Path, listen: str) -> None:
    path = write_rules(tmp_path, f'[http]\nlisten = "{listen}"\n' + RULE_OK)
    problem = only(problems(path))
    assert (problem.line, problem.key) == (2, "listen")
    assert "host:port" in problem.message


def test_without_http_there_is_no_server(tmp_path: Path) -> None:
    assert load(write_rules(tmp_path, RULE_OK)).config.http is None


def test_a_cluster_cannot_turn_the_journal_off(tmp_path: Path) -> None:
    text = '[cluster]\nservers = ["nats://127.0.0.1:4222"]\n[engine]\njournal = false\n' + RULE_OK
    problem = only(problems(write_rules(tmp_path, text)))
    assert problem.key == "journal" and "[cluster]" in problem.message
