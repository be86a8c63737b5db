"""Rule unit tests: `*.cases.toml` files and running them (`zoomrules test --cases`).

A cases file holds `[[case]]` tables. Each case gives one event or a
sequence of events (inline TOML tables that are Zoom event objects, or files
next to the cases file: JSON for one event, JSON lines for several) and what
must happen: rules that fire, rules that do not, optionally that no other
rule fires, and action parameters rendered to given values. The format is
documented in docs/rules.md ("Testing rules").

Reading checks everything a run needs, against the loaded rules (rule
names, action numbers and types, parameter names, events), and reports
every problem at once with file, line, case and key, as `zoomrules check`
does for rule files. Running evaluates each event exactly as `zoomrules test`
does (engine.explain): no action runs, no throttle or counter changes.
"""

from __future__ import annotations

import datetime
import difflib
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson

from engine.config import parse_toml
from engine.correlate import event_time
from engine.durations import parse_duration
from engine.errors import InvalidEvent
from engine.events import Event
from engine.loader import LoadedRules
from engine.nesting import MAX_TOML_NESTING, toml_too_deep
from engine.playback import Moment, play
from engine.problems import Problem, did_you_mean
from engine.redact import redact_value
from engine.ruleset import CompiledRule
from engine.sourcemap import SourceMap

__all__ = [
    "CASES_GLOB",
    "FORMAT_VERSION",
    "Case",
    "CaseEvent",
    "Expectation",
    "ParamsCheck",
    "expand_case_paths",
    "read_cases",
    "run_cases",
    "run_case",
    "matches",
]

#: `--cases DIR` reads the files directly inside DIR that match this.
CASES_GLOB = "*.cases.toml"
#: `version` of the cases format, and of the `--json` report.
FORMAT_VERSION = 1

_CASE_KEYS = (
    "name", "description", "event", "events", "fires", "not_fires", "exactly", "expect", "until",
)  # fmt: skip
_EXPECT_KEYS = ("event", "at", "fires", "not_fires", "exactly", "rule", "action", "params")

Path_ = tuple[str | int, ...]


@dataclass(frozen=True)
class CaseEvent:
    """One event of a case, numbered from 1 in the case."""

    index: int
    event: Event
    #: Where it came from, as shown: `events/x.json`, `seq.jsonl:3`, `inline`.
    origin: str


@dataclass(frozen=True)
class ParamsCheck:
    """Parameters of one action of one rule must render to these values."""

    rule: str
    action: int  # 1-based
    action_type: str
    params: Mapping[str, Any]


@dataclass(frozen=True)
class Expectation:
    """What must happen for one event (`event`, 1-based), at one moment
    (`at`: the firings made then, temporal rules' deadlines included), or
    over the whole sequence (both None)."""

    event: int | None
    fires: tuple[str, ...] = ()
    not_fires: tuple[str, ...] = ()
    exactly: bool = False
    params: ParamsCheck | None = None
    #: Cases-file lines of its keys ("fires", "not_fires", "exactly", "params").
    lines: Mapping[str, int | None] = field(default_factory=dict)
    #: Epoch seconds, on the events' clock.
    at: float | None = None
    #: The case's own keys: about the whole case, the firings made at
    #: deadlines (temporal rules) included.
    whole: bool = False

    def line(self, key: str) -> int | None:
        return self.lines.get(key)


@dataclass(frozen=True)
class Case:
    file: Path
    line: int | None
    name: str
    description: str
    events: tuple[CaseEvent, ...]
    expectations: tuple[Expectation, ...]
    #: How far the events' clock runs after the last event (epoch seconds);
    #: None: until every temporal rule's deadline has fallen.
    until: float | None = None


# --------------------------------------------------------------------------
# reading


def expand_case_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files named directly, plus `*.cases.toml` (sorted) directly inside each directory."""
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            out.extend(sorted(p for p in path.glob(CASES_GLOB) if p.is_file()))
        else:
            out.append(path)
    return out


def read_cases(
    paths: Sequence[str | Path], loaded: LoadedRules
) -> tuple[list[Case], list[Problem]]:
    """Read and check cases files against `loaded`; the cases and every problem.

    The cases are only meant to be run when the problem list is empty.
    """
    problems: list[Problem] = []
    cases: list[Case] = []
    events = _EventFiles()
    for raw in paths:
        path = Path(raw)
        if path.is_dir() and not any(p.is_file() for p in path.glob(CASES_GLOB)):
            problems.append(
                Problem(
                    path, None, "command line", None, f"no {CASES_GLOB} files in this directory"
                )
            )
    for path in expand_case_paths(paths):
        reader = _Reader(path, loaded, events, problems)
        cases.extend(reader.read())
    problems.sort(key=lambda p: (str(p.file), p.line or 0))
    return cases, problems


class _EventFiles:
    """Event files read once each, whichever cases name them (and however)."""

    def __init__(self) -> None:
        #: Per file: (event, JSON lines line number or None) for each event,
        #: or the problem (message, line number or None).
        self._read: dict[Path, list[tuple[Event, int | None]] | tuple[str, int | None]] = {}

    def get(self, path: Path, shown: str) -> list[tuple[Event, str]] | str:
        """(event, origin) for each event of the file, or the problem's message;
        the file is named `shown` in both."""
        key = path.resolve()
        found = self._read.get(key)
        if found is None:
            found = self._read[key] = self._load(path)
        if isinstance(found, tuple):
            message, lineno = found
            return f"{shown}{'' if lineno is None else f':{lineno}'}: {message}"
        return [(e, shown if n is None else f"{shown}:{n}") for e, n in found]

    @staticmethod
    def _load(path: Path) -> list[tuple[Event, int | None]] | tuple[str, int | None]:
        try:
            data = path.read_bytes()
        except OSError as exc:
            return f"cannot read: {exc.strerror}", None
        if path.suffix != ".jsonl":
            try:
                return [(Event.from_json(data, source="test"), None)]
            except InvalidEvent as exc:
                return str(exc), None
        out: list[tuple[Event, int | None]] = []
        for lineno, line in enumerate(data.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                out.append((Event.from_json(line, source="test"), lineno))
            except InvalidEvent as exc:
                return str(exc), lineno
        return out or ("no events in this file", None)


class _Reader:
    """Checks one cases file; appends to `problems`."""

    def __init__(
        self, path: Path, loaded: LoadedRules, events: _EventFiles, problems: list[Problem]
    ) -> None:
        self.path = path
        self.rules: dict[str, CompiledRule] = {rule.name: rule for rule in loaded.rules}
        self.events = events
        self.problems = problems
        self.smap = SourceMap("")
        self.where = "top level"

    def problem(self, path: Path_, key: str | None, message: str) -> None:
        self.problems.append(
            Problem(self.path, self.smap.line_of(path) if path else None, self.where, key, message)
        )

    # -- the file ---------------------------------------------------------------

    def read(self) -> list[Case]:
        data = self._parse()
        if data is None:
            return []
        self.where = "top level"
        for key in data:
            if key not in ("version", "case"):
                self.problem((key,), key, f"unknown key{did_you_mean(key, ('version', 'case'))}")
        version = data.get("version", FORMAT_VERSION)
        if version != FORMAT_VERSION or isinstance(version, bool):
            self.problem(
                ("version",),
                "version",
                f"unsupported version {version!r}; this zoomrules reads version = {FORMAT_VERSION}",
            )
        raw_cases = data.get("case")
        if raw_cases is None:
            self.problem((), None, "no [[case]] tables: nothing to test")
            return []
        if not isinstance(raw_cases, list) or not all(isinstance(c, dict) for c in raw_cases):
            self.problem(("case",), "case", "cases must be written as [[case]] tables")
            return []
        cases = []
        names: dict[str, int | None] = {}
        for index, raw in enumerate(raw_cases):
            case = self._case(raw, index, names)
            if case is not None:
                cases.append(case)
        return cases

    def _parse(self) -> dict[str, Any] | None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except OSError as exc:
            self.problems.append(
                Problem(self.path, None, "file", None, f"cannot read: {exc.strerror}")
            )
            return None
        except UnicodeDecodeError as exc:
            self.problems.append(Problem(self.path, None, "file", None, f"not UTF-8: {exc}"))
            return None
        deep = toml_too_deep(text)
        if deep is not None:
            message = f"arrays or inline tables nested more than {MAX_TOML_NESTING} levels deep"
            self.problems.append(Problem(self.path, deep, "TOML syntax", None, message))
            return None
        try:
            data = parse_toml(text)
        except tomllib.TOMLDecodeError as exc:
            line = re.search(r"line (\d+)", str(exc))
            self.problems.append(
                Problem(
                    self.path, int(line.group(1)) if line else None, "TOML syntax", None, str(exc)
                )
            )
            return None
        self.smap = SourceMap.scan(text)
        return data

    # -- one case -----------------------------------------------------------------

    def _case(self, raw: dict[str, Any], index: int, names: dict[str, int | None]) -> Case | None:
        at: Path_ = ("case", index)
        name = raw.get("name")
        self.where = f"case '{name}'" if isinstance(name, str) and name else f"case #{index + 1}"
        before = len(self.problems)
        for key in raw:
            if key not in _CASE_KEYS:
                self.problem(at + (key,), key, f"unknown key{did_you_mean(key, _CASE_KEYS)}")
        if not isinstance(name, str) or not name.strip():
            if "name" in raw:
                self.problem(at + ("name",), "name", "must be a non-empty string")
            else:
                self.problem(at, "name", "missing: every case needs a name")
            name = f"#{index + 1}"
        elif name in names:
            first = names[name]
            self.problem(
                at + ("name",),
                "name",
                f"duplicate case name (first at line {first})" if first else "duplicate case name",
            )
        else:
            names[name] = self.smap.line_of(at)
        description = raw.get("description", "")
        if not isinstance(description, str):
            self.problem(at + ("description",), "description", "must be a string")
        events = self._events(raw, at)
        expectations = self._expectations(raw, at, events)
        until = None
        if "until" in raw and events:
            until = self._moment(raw["until"], events, at + ("until",), "until")
        if len(self.problems) > before or not events:
            return None
        return Case(
            file=self.path,
            line=self.smap.line_of(at),
            name=name,
            description=description if isinstance(description, str) else "",
            events=tuple(events),
            expectations=tuple(expectations),
            until=until,
        )

    def _moment(self, value: Any, events: list[CaseEvent], path: Path_, key: str) -> float | None:
        """A moment on the events' clock: a time as Zoom writes them, or a
        duration after the first event happened."""
        if isinstance(value, str):
            try:
                return event_time(events[0].event) + parse_duration(value)
            except ValueError:
                pass
            try:
                moment = datetime.datetime.fromisoformat(value)
            except ValueError:
                pass
            else:
                if moment.tzinfo is None:
                    moment = moment.replace(tzinfo=datetime.UTC)
                return moment.timestamp()
        self.problem(
            path,
            key,
            'must be a time as Zoom writes them ("2026-02-05T17:05:00Z") or a duration after '
            f'the case\'s first event happened ("5m"), got {value!r}',
        )
        return None

    # -- events -------------------------------------------------------------------

    def _events(self, raw: dict[str, Any], at: Path_) -> list[CaseEvent]:
        has_one, has_many = "event" in raw, "events" in raw
        if has_one and has_many:
            self.problem(at + ("events",), "events", "give either event (one) or events (several)")
            return []
        if not has_one and not has_many:
            self.problem(
                at,
                "event",
                'missing: give event = "file.json" or an inline [case.event] table, '
                'or events = ["a.json", "b.json"] / "sequence.jsonl"',
            )
            return []
        found: list[tuple[Event, str]] = []
        if has_one:
            value = raw["event"]
            if isinstance(value, str) and value.endswith(".jsonl"):
                self.problem(
                    at + ("event",),
                    "event",
                    f'a JSON lines file holds a sequence: write events = "{value}"',
                )
                return []
            if not isinstance(value, str | dict):
                self.problem(
                    at + ("event",),
                    "event",
                    "must be a file name (a string) or a table (the Zoom event object), "
                    f"got {_type_name(value)}",
                )
                return []
            found.extend(self._event_item(value, at + ("event",), "event"))
        else:
            value = raw["events"]
            items = [value] if isinstance(value, str) else value
            if not isinstance(items, list) or not items:
                self.problem(
                    at + ("events",),
                    "events",
                    "must be a JSON lines file name, or a non-empty array of file names "
                    "and event tables",
                )
                return []
            for i, item in enumerate(items):
                key = "events" if isinstance(value, str) else f"events[{i + 1}]"
                path = at + ("events",) if isinstance(value, str) else at + ("events", i)
                found.extend(self._event_item(item, path, key))
        return [CaseEvent(i, event, origin) for i, (event, origin) in enumerate(found, start=1)]

    def _event_item(self, value: Any, path: Path_, key: str) -> list[tuple[Event, str]]:
        if isinstance(value, str):
            file = Path(value)
            if not file.is_absolute():
                file = self.path.parent / file
            loaded = self.events.get(file, value)
            if isinstance(loaded, str):
                self.problem(path, key, loaded)
                return []
            return loaded
        if isinstance(value, dict):
            bad = _first_datetime(value)
            if bad is not None:
                where, shown = bad
                self.problem(
                    path + where,
                    ".".join([key, *map(str, where)]),
                    f"TOML date-time {shown} is not a JSON value: quote it as Zoom sends it "
                    '(e.g. "2026-02-05T17:00:00Z")',
                )
                return []
            try:
                return [(Event.from_body(value, source="test"), "inline")]
            except InvalidEvent as exc:
                self.problem(path, key, f"not a Zoom event object: {exc}")
                return []
        self.problem(path, key, f"expected a file name or an event table, got {_type_name(value)}")
        return []

    # -- expectations ---------------------------------------------------------------

    def _expectations(
        self, raw: dict[str, Any], at: Path_, events: list[CaseEvent]
    ) -> list[Expectation]:
        out: list[Expectation] = []
        top = self._firing(raw, at, "", events, default_event=1 if len(events) == 1 else None)
        if top is not None:
            out.append(replace(top, whole=True))
        expects = raw.get("expect", [])
        if not isinstance(expects, list) or not all(isinstance(e, dict) for e in expects):
            self.problem(at + ("expect",), "expect", "write expectations as [[case.expect]] tables")
            expects = []
        for i, entry in enumerate(expects):
            out.extend(self._expect(entry, at + ("expect", i), f"expect[{i + 1}].", events))
        if not out and not any(
            k in raw for k in ("fires", "not_fires", "exactly", "expect")
        ):  # an empty case always passes: certainly a mistake
            self.problem(
                at,
                None,
                "no expectations: give fires, not_fires, exactly = true or [[case.expect]]",
            )
        return out

    def _expect(
        self, entry: dict[str, Any], at: Path_, prefix: str, events: list[CaseEvent]
    ) -> list[Expectation]:
        for key in entry:
            if key not in _EXPECT_KEYS:
                self.problem(
                    at + (key,), prefix + key, f"unknown key{did_you_mean(key, _EXPECT_KEYS)}"
                )
        if not any(k in entry for k in ("fires", "not_fires", "exactly", "params")):
            self.problem(
                at, None, "expects nothing: give fires, not_fires, exactly = true or params"
            )
            return []
        event: int | None = 1 if len(events) == 1 else None
        moment: float | None = None
        if "at" in entry and events:  # (no events: already reported)
            if "event" in entry:
                self.problem(
                    at + ("at",), prefix + "at",
                    "give event (what fires on an event) or at (what fires at a moment), not both",
                )  # fmt: skip
                return []
            moment = self._moment(entry["at"], events, at + ("at",), prefix + "at")
            if moment is None:
                return []
            event = None
        if "event" in entry and events:  # (no events: already reported)
            event = self._event_ref(entry["event"], at + ("event",), prefix + "event", events)
            if event is None:
                return []
        out: list[Expectation] = []
        firing = self._firing(entry, at, prefix, events, default_event=event)
        if firing is not None:
            out.append(replace(firing, at=moment))
        if any(k in entry for k in ("rule", "action", "params")):
            if event is None and moment is None and len(events) > 1:
                self.problem(
                    at,
                    prefix + "event",
                    f"this case has {len(events)} events: say which one's parameters "
                    "are checked, with event = <number> or <event name>, or at = <when>",
                )
            check = self._params(entry, at, prefix)
            if check is not None and (event is not None or moment is not None):
                lines = {"params": self.smap.line_of(at + ("params",))}
                out.append(Expectation(event, params=check, lines=lines, at=moment))
        return out

    def _event_ref(self, value: Any, path: Path_, key: str, events: list[CaseEvent]) -> int | None:
        if isinstance(value, int) and not isinstance(value, bool):
            if 1 <= value <= len(events):
                return value
            self.problem(path, key, f"event {value}: this case has {_count(len(events), 'event')}")
            return None
        if isinstance(value, str):
            hits = [e.index for e in events if e.event.name == value]
            if len(hits) == 1:
                return hits[0]
            if hits:
                numbers = ", ".join(map(str, hits))
                self.problem(path, key, f"events {numbers} are all {value}: say which by number")
            else:
                names = sorted({e.event.name for e in events})
                self.problem(
                    path,
                    key,
                    f"no {value} event in this case{did_you_mean(value, names)}; "
                    f"its events: {', '.join(names)}",
                )
            return None
        self.problem(path, key, "must be an event's number (from 1) or its event name")
        return None

    def _firing(
        self,
        raw: dict[str, Any],
        at: Path_,
        prefix: str,
        events: list[CaseEvent],
        default_event: int | None,
    ) -> Expectation | None:
        if not any(k in raw for k in ("fires", "not_fires", "exactly")):
            return None
        fires = self._rule_list(raw, "fires", at, prefix)
        not_fires = self._rule_list(raw, "not_fires", at, prefix)
        for both in sorted(set(fires) & set(not_fires)):
            self.problem(at + ("not_fires",), prefix + "not_fires", f"'{both}' is also in fires")
        exactly = raw.get("exactly", False)
        if not isinstance(exactly, bool):
            self.problem(at + ("exactly",), prefix + "exactly", "must be true or false")
            exactly = False
        lines = {k: self.smap.line_of(at + (k,)) for k in ("fires", "not_fires", "exactly")}
        return Expectation(default_event, tuple(fires), tuple(not_fires), exactly, lines=lines)

    def _rule_list(self, raw: dict[str, Any], key: str, at: Path_, prefix: str) -> list[str]:
        value = raw.get(key, [])
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
            self.problem(at + (key,), prefix + key, "must be a rule name or a list of rule names")
            return []
        out = []
        for i, name in enumerate(items):
            if name in self.rules:
                out.append(name)
                continue
            shown = prefix + key if isinstance(value, str) else f"{prefix}{key}[{i + 1}]"
            self.problem(
                at + (key,), shown, f"unknown rule '{name}'{did_you_mean(name, self.rules)}"
            )
        return out

    def _params(self, entry: dict[str, Any], at: Path_, prefix: str) -> ParamsCheck | None:
        if "params" not in entry:
            self.problem(at, prefix + "params", "missing: rule and action go with params = { ... }")
            return None
        params = entry["params"]
        if not isinstance(params, dict) or not params:
            self.problem(
                at + ("params",),
                prefix + "params",
                "must be a table of parameter names and expected values",
            )
            return None
        name = entry.get("rule")
        if name is None:
            self.problem(at, prefix + "rule", "missing: the rule whose action is checked")
            return None
        if not isinstance(name, str) or name not in self.rules:
            hint = did_you_mean(name, self.rules) if isinstance(name, str) else ""
            self.problem(at + ("rule",), prefix + "rule", f"unknown rule {name!r}{hint}")
            return None
        rule = self.rules[name]
        number = self._action_number(rule, entry.get("action"), at, prefix)
        if number is None:
            return None
        action = rule.actions[number - 1]
        known = {p.name for p in action.action_type.params} | set(action.spec.params)
        ok = True
        for param, expected in params.items():
            shown = f"{prefix}params.{param}"
            if action.action_type.params and param not in known:
                self.problem(
                    at + ("params", param),
                    shown,
                    f"action {number} of '{name}' ({action.spec.type}) has no parameter "
                    f"'{param}'{did_you_mean(param, known)}",
                )
                ok = False
            bad = _first_datetime({param: expected})
            if bad is not None:
                self.problem(
                    at + ("params", param),
                    shown,
                    f"TOML date-time {bad[1]} is not a JSON value: write it as a string",
                )
                ok = False
        if not ok:
            return None
        return ParamsCheck(name, number, action.spec.type, dict(params))

    def _action_number(self, rule: CompiledRule, value: Any, at: Path_, prefix: str) -> int | None:
        actions = rule.actions
        listing = ", ".join(f"{i} {a.spec.type}" for i, a in enumerate(actions, start=1))
        key = prefix + "action"
        if value is None:
            if len(actions) == 1:
                return 1
            self.problem(
                at,
                key,
                f"rule '{rule.name}' has {len(actions)} actions ({listing}): "
                "say which with action = <number> or <type>",
            )
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            if 1 <= value <= len(actions):
                return value
            self.problem(
                at + ("action",),
                key,
                f"rule '{rule.name}' has {_count(len(actions), 'action')} ({listing})",
            )
            return None
        if isinstance(value, str):
            hits = [i for i, a in enumerate(actions, start=1) if a.spec.type == value]
            if len(hits) == 1:
                return hits[0]
            types = [a.spec.type for a in actions]
            message = (
                f"rule '{rule.name}' has {len(hits)} {value} actions ({listing}): say which by number"
                if hits
                else f"rule '{rule.name}' has no {value} action{did_you_mean(value, types)} "
                f"({listing})"
            )
            self.problem(at + ("action",), key, message)
            return None
        self.problem(at + ("action",), key, "must be an action's number (from 1) or its type")
        return None


def _first_datetime(value: Any, path: Path_ = ()) -> tuple[Path_, str] | None:
    """Where a TOML date, time or date-time hides in `value` (not JSON), if anywhere."""
    if isinstance(value, datetime.date | datetime.time):
        return path, value.isoformat()
    if isinstance(value, dict):
        for key, item in value.items():
            found = _first_datetime(item, path + (key,))
            if found is not None:
                return found
    if isinstance(value, list):
        for i, item in enumerate(value):
            found = _first_datetime(item, path + (i,))
            if found is not None:
                return found
    return None


def _type_name(value: Any) -> str:
    names = {str: "a string", bool: "a boolean", int: "an integer", float: "a float"}
    names.update({list: "an array", dict: "a table"})
    return names.get(type(value), type(value).__name__)


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


# --------------------------------------------------------------------------
# running


def matches(expected: Any, got: Any) -> bool:
    """Does a rendered value match the expected one?

    Tables match when every expected key is there with a matching value
    (other keys may be present); arrays element by element, same length;
    numbers by value (1 matches 1.0); strings and booleans exactly.
    """
    if isinstance(expected, dict):
        return isinstance(got, dict) and all(
            key in got and matches(item, got[key]) for key, item in expected.items()
        )
    if isinstance(expected, list):
        return (
            isinstance(got, list)
            and len(got) == len(expected)
            and all(matches(e, g) for e, g in zip(expected, got, strict=True))
        )
    if isinstance(expected, bool) or isinstance(got, bool):
        return expected is got
    if isinstance(expected, int | float):
        return isinstance(got, int | float) and expected == got
    return bool(expected == got)


def _compared(expected: Any, got: Any) -> Any:
    """What of `got` was compared: for tables, only the expected keys (in their order)."""
    if isinstance(expected, dict) and isinstance(got, dict):
        return {key: _compared(expected[key], got[key]) for key in expected if key in got}
    if isinstance(expected, list) and isinstance(got, list) and len(expected) == len(got):
        return [_compared(e, g) for e, g in zip(expected, got, strict=True)]
    return got


def _masked(name: str, value: Any, mask: bool) -> Any:
    # Wrapped in its parameter's name, so an `Authorization`-like parameter
    # is masked whole, as `zoomrules test` masks it.
    return redact_value({name: value})[name] if mask else value


class _Run:
    """One case's evaluation and the failures found."""

    def __init__(self, loaded: LoadedRules, case: Case, mask: bool) -> None:
        self.case = case
        self.mask = mask
        self.played = play(loaded, [e.event for e in case.events], until=case.until)
        self.results = self.played.results
        self.fired = [self.played.fired_on(e.index) for e in case.events]
        self.temporal = {rule.name for rule in loaded.rules if rule.correlation is not None}
        self.failures: list[dict[str, Any]] = []
        self._reported: set[tuple[str, int | None, float | None]] = set()

    def scope(self, expectation: Expectation) -> list[int]:
        if expectation.at is not None:
            return []
        if expectation.event is not None:
            return [expectation.event]
        return [e.index for e in self.case.events]

    def moments(self, expectation: Expectation) -> list[Moment]:
        """The firings an expectation is about besides those on its events:
        those at its moment (`at`), or, over the whole sequence, every
        firing made at a deadline."""
        if expectation.at is not None:
            return [m for m in self.played.moments if _same_moment(m.at, expectation.at)]
        if expectation.event is None or expectation.whole:
            return self.played.timed
        return []

    def on(self, indices: Sequence[int], expectation: Expectation | None = None) -> str:
        """' on event 2' (' on events 1, 3'), for cases of several events;
        ' at 17:05:02Z' for an expectation about a moment."""
        if expectation is not None and expectation.at is not None:
            return f" at {_iso(expectation.at)}"
        if len(self.case.events) == 1 or len(indices) == len(self.case.events) > 1:
            return ""
        return f" on event{'s' if len(indices) > 1 else ''} {', '.join(map(str, indices))}"

    def got(self, expectation: Expectation) -> list[str]:
        """Every rule that fired where the expectation looks, in order, once each."""
        got: list[str] = []
        for i in self.scope(expectation):
            got.extend(r for r in self.fired[i - 1] if r not in got)
        got.extend(m.rule for m in self.moments(expectation) if m.rule not in got)
        return got

    def check(self, expectation: Expectation) -> None:
        scope = self.scope(expectation)
        for rule in expectation.fires:
            self.check_fires(rule, expectation, scope, expectation.line("fires"))
        for rule in expectation.not_fires:
            on = [i for i in scope if rule in self.fired[i - 1]]
            at = [_iso(m.at) for m in self.moments(expectation) if m.rule == rule]
            if not on and not at:
                continue
            where = (self.on(on) if on else "") + (f" at {', '.join(at)}" if at else "")
            self.failures.append(
                {
                    "kind": "not_fires",
                    "line": expectation.line("not_fires"),
                    "event": expectation.event,
                    "rule": rule,
                    "fired_on": on,
                    "fired_at": at,
                    "message": f"{rule} fired{where}, but must not",
                }
            )
        if expectation.exactly:
            got = self.got(expectation)
            unexpected = [r for r in got if r not in expectation.fires]
            if unexpected:
                self.failures.append(
                    {
                        "kind": "exactly",
                        "line": expectation.line("exactly"),
                        "event": expectation.event,
                        "expected": list(expectation.fires),
                        "got": got,
                        "missing": [r for r in expectation.fires if r not in got],
                        "unexpected": unexpected,
                        "message": f"other rules fired{self.on(scope, expectation)} (exactly = true): "
                        + ", ".join(unexpected),
                    }
                )
        if expectation.params is not None:
            self.check_params(expectation, expectation.params)

    def check_fires(
        self, rule: str, expectation: Expectation, scope: list[int], line: int | None
    ) -> bool:
        if any(rule in self.fired[i - 1] for i in scope) or any(
            m.rule == rule for m in self.moments(expectation)
        ):
            return True
        key = (rule, expectation.event, expectation.at)
        if key in self._reported or (rule, None, None) in self._reported:
            return False
        self._reported.add(key)
        skipped = []
        for i in scope:
            entry = next((s for s in self.results[i - 1]["skipped"] if s["rule"] == rule), None)
            if entry is not None:
                skipped.append({"event": i, **{k: v for k, v in entry.items() if k != "rule"}})
        if rule in self.temporal:
            message = self._temporal_miss(rule, expectation)
        elif len(scope) == 1:
            reason = f": {skipped[0]['reason']} ({skipped[0]['detail']})" if skipped else ""
            message = f"{rule} did not fire{self.on(scope)}{reason}"
        else:
            message = f"{rule} fired on none of the {len(scope)} events"
        failure = {
            "kind": "fires",
            "line": line,
            "event": expectation.event,
            "rule": rule,
            "skipped": skipped,
            "message": message,
        }
        if expectation.at is not None:
            failure["at"] = _iso(expectation.at)
        self.failures.append(failure)
        return False

    def _temporal_miss(self, rule: str, expectation: Expectation) -> str:
        """Why a temporal rule is not where it was expected: when it did fire."""
        fired = [m for m in self.played.moments if m.rule == rule]
        where = self.on(self.scope(expectation), expectation)
        if not fired:
            still = self.played.still_open.get(rule, 0)
            open_ = f"; {still} correlation(s) still open at `until`" if still else ""
            return f"{rule} did not fire{where} (a temporal rule: it never fired{open_})"
        times = ", ".join(
            f"{_iso(m.at)}" + (f" (event {m.event})" if m.event else " (deadline)") for m in fired
        )
        return f"{rule} did not fire{where}; it fired at {times}"

    def _rendered(self, expectation: Expectation, rule: str) -> dict[str, Any]:
        if expectation.at is not None:
            return next(m.rendered for m in self.moments(expectation) if m.rule == rule)
        assert expectation.event is not None
        return next(f for f in self.results[expectation.event - 1]["fired"] if f["rule"] == rule)

    def check_params(self, expectation: Expectation, check: ParamsCheck) -> None:
        index = expectation.event
        assert index is not None or expectation.at is not None  # checked when read
        line = expectation.line("params")
        if not self.check_fires(check.rule, expectation, self.scope(expectation), line):
            return
        item = self._rendered(expectation, check.rule)
        action = item["actions"][check.action - 1]
        what = (
            f"{check.rule} action {check.action} ({check.action_type})"
            f"{self.on([index] if index else [], expectation)}"
        )
        base: dict[str, Any] = {
            "kind": "params",
            "line": line,
            "event": index,
            "rule": check.rule,
            "action": check.action,
            "type": check.action_type,
        }
        if expectation.at is not None:
            base["at"] = _iso(expectation.at)
        if action.get("error"):
            self.failures.append(
                {
                    **base,
                    "param": None,
                    "error": action["error"],
                    "message": f"{what}: its parameters could not be rendered",
                }
            )
            return
        params = action["params"]
        for name, expected in check.params.items():
            if name not in params:
                self.failures.append(
                    {
                        **base,
                        "param": name,
                        "expected": _masked(name, expected, self.mask),
                        "message": f"{what}, parameter '{name}': not among the rendered "
                        f"parameters ({', '.join(params) or 'none'})",
                    }
                )
            elif not matches(expected, params[name]):
                self.failures.append(
                    {
                        **base,
                        "param": name,
                        "expected": _masked(name, expected, self.mask),
                        "got": _masked(name, _compared(expected, params[name]), self.mask),
                        "message": f"{what}, parameter '{name}' differs",
                    }
                )


def _same_moment(a: float, b: float) -> bool:
    """Equal to the millisecond (Zoom's `event_ts` resolution)."""
    return round(a * 1000) == round(b * 1000)


def _iso(epoch: float) -> str:
    """`2026-02-05T17:05:02Z` (milliseconds when there are any)."""
    moment = datetime.datetime.fromtimestamp(epoch, datetime.UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    millis = round(epoch * 1000) % 1000
    return f"{text}.{millis:03d}Z" if millis else f"{text}Z"


def run_case(loaded: LoadedRules, case: Case, *, mask: bool = True) -> dict[str, Any]:
    """One case's report (the `cases` items of the `--json` document).

    `mask=False` shows secrets (`--show-secrets`); the caller masks the rest
    of the document (traces, details) with `engine.redact.redact_value`.
    """
    run = _Run(loaded, case, mask)
    for expectation in case.expectations:
        run.check(expectation)
    return {
        "name": case.name,
        "file": str(case.file),
        "line": case.line,
        "passed": not run.failures,
        "events": [
            {
                "index": e.index,
                "event": e.event.name,
                "id": e.event.id,
                "from": e.origin,
                "fired": run.fired[e.index - 1],
            }
            for e in case.events
        ],
        "timed": [
            {"rule": m.rule, "at": _iso(m.at), "after_event": _after(case, m.at)}
            for m in run.played.timed
        ],
        "failures": run.failures,
    }


def _after(case: Case, moment: float) -> int:
    """How many of the case's events happened before `moment`."""
    return sum(1 for e in case.events if event_time(e.event) < moment)


def run_cases(
    loaded: LoadedRules, cases: Sequence[Case], files: Sequence[Path], *, mask: bool = True
) -> dict[str, Any]:
    """The `--json` document of `zoomrules test --cases` (docs/rules.md)."""
    reports = [run_case(loaded, case, mask=mask) for case in cases]
    passed = sum(1 for r in reports if r["passed"])
    return {
        "version": FORMAT_VERSION,
        "rules": [str(p) for p in loaded.config.files],
        "files": [str(p) for p in files],
        "cases": reports,
        "summary": {"cases": len(reports), "passed": passed, "failed": len(reports) - passed},
    }


# --------------------------------------------------------------------------
# text


def value_diff(expected: Any, got: Any, indent: str) -> list[str]:
    """Expected vs got: two lines for short values, a unified diff of their
    JSON for tables, arrays and long text."""
    one_expected = orjson.dumps(expected).decode()
    one_got = orjson.dumps(got).decode()
    if not isinstance(expected, dict | list) and not isinstance(got, dict | list):
        return [f"{indent}expected: {one_expected}", f"{indent}got:      {one_got}"]
    option = orjson.OPT_INDENT_2
    lines = difflib.unified_diff(
        orjson.dumps(expected, option=option).decode().splitlines(),
        orjson.dumps(got, option=option).decode().splitlines(),
        "expected",
        "got",
        lineterm="",
        n=2,
    )
    return [indent + line for line in lines]
