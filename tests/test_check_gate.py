"""`zoomrules check` as a CI gate: no secrets needed, mistakes caught before run time.

Before: the shipped example failed without every secret set; a notifier
name with a typo, an invalid Apprise URL, `mailto:` without `//` all passed
`check` and only failed as dead letters at the first event.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from conftest import ROOT, run_cli

EXAMPLE = ROOT / "rules.example.toml"


def _empty_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("ZOOM", "PYTHON"))}


def test_the_example_passes_check_without_any_secret() -> None:
    done = run_cli("check", "-c", EXAMPLE, env=_empty_env())
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("OK: ")
    assert "ZOOM_CLIENT_SECRET is not set; checked with a placeholder" in done.stderr


def test_strict_turns_warnings_into_errors() -> None:
    done = run_cli("check", "--strict", "-c", EXAMPLE, env=_empty_env())
    assert done.returncode == 2
    assert "error: " in done.stderr and "--strict" in done.stderr


def test_strict_passes_with_the_secrets_set() -> None:
    env = {
        **_empty_env(),
        "ZOOM_CLIENT_ID": "id",
        "ZOOM_CLIENT_SECRET": "secret-value",
        "ZOOM_WS_ENDPOINT": "wss://ws.zoom.us/ws?subscriptionId=x",
    }
    done = run_cli("check", "--strict", "-c", EXAMPLE, env=env)
    assert done.returncode == 0, done.stderr


NOTIFY = """
[notifiers]
oncall = ["json://localhost:8080/oncall"]
{extra}

[[rule]]
name = "page"
on = ["meeting.started"]
  [[rule.action]]
  type = "notify"
  to = {to}
  body = "x"
"""


def _check(tmp_path: Path, text: str, *args: str) -> tuple[int, str, str]:
    rules = tmp_path / "rules.toml"
    rules.write_text(text)
    done = run_cli("check", *args, "-c", rules, env=_empty_env())
    return done.returncode, done.stdout, done.stderr


def test_an_unknown_notifier_is_an_error_with_a_suggestion(tmp_path: Path) -> None:
    code, _, err = _check(tmp_path, NOTIFY.format(extra="", to='"oncal"'))
    assert code == 2
    assert "rules.toml:11: rule 'page', key 'action[1].to'" in err
    assert "unknown notifier 'oncal' (did you mean 'oncall'?)" in err


def test_mailto_without_slashes_is_explained(tmp_path: Path) -> None:
    code, _, err = _check(tmp_path, NOTIFY.format(extra="", to='["mailto:ops@example.com"]'))
    assert code == 2 and "needs '://'" in err


def test_an_invalid_notifier_url_is_an_error_without_printing_it(tmp_path: Path) -> None:
    extra = 'broken = ["slack://T0SECRET/onlyonetoken"]'
    code, _, err = _check(tmp_path, NOTIFY.format(extra=extra, to='"oncall"'))
    assert code == 2
    assert "rules.toml:4: [notifiers], key 'broken': URL 1 is not a valid Apprise URL" in err
    assert "T0SECRET" not in err


def test_a_typo_in_a_function_name_gets_a_suggestion(tmp_path: Path) -> None:
    text = NOTIFY.format(extra="", to='"oncall"').replace(
        'on = ["meeting.started"]', 'on = ["meeting.started"]\nwhen = "email_domian(a) == \'x\'"'
    )
    code, _, err = _check(tmp_path, text)
    assert code == 2 and "email_domian() (did you mean 'email_domain'?)" in err


def test_a_quoted_version_says_what_to_write(tmp_path: Path) -> None:
    code, _, err = _check(tmp_path, 'version = "1"\n' + NOTIFY.format(extra="", to='"oncall"'))
    assert code == 2 and "without quotes (version = 1)" in err


def test_a_duplicate_rule_name_points_at_the_first(tmp_path: Path) -> None:
    rule = NOTIFY.format(extra="", to='"oncall"').split("[[rule]]", 1)[1]
    first = tmp_path / "a.toml"
    first.write_text('[notifiers]\noncall = ["json://localhost/x"]\n\n[[rule]]' + rule)
    second = tmp_path / "b.toml"
    second.write_text("\n\n[[rule]]" + rule)
    done = run_cli("check", "-c", first, "-c", second, env=_empty_env())
    assert done.returncode == 2
    assert f"duplicate rule name (first defined at {first}:4)" in done.stderr


def test_json_output_is_one_stable_document(tmp_path: Path) -> None:
    code, out, _ = _check(tmp_path, NOTIFY.format(extra="", to='"oncal"'), "--json")
    assert code == 2
    doc = json.loads(out)
    assert set(doc) == {"valid", "strict", "files", "rules", "actions", "errors", "warnings"}
    assert doc["valid"] is False and doc["strict"] is False
    [error] = doc["errors"]
    assert set(error) == {"file", "line", "where", "key", "message"}
    assert error["line"] == 11 and error["key"] == "action[1].to"
    ok = run_cli("check", "--json", "-c", EXAMPLE, env=_empty_env())
    good = json.loads(ok.stdout)
    assert ok.returncode == 0 and good["valid"] and good["errors"] == []
    assert any("placeholder" in w["message"] for w in good["warnings"])
