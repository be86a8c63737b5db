"""Shared benchmark workload: realistic rules over real Zoom event examples.

Rules: `on` is an exact event name (most) or a glob; conditions take the
shapes real rule files use (equality on nested fields, string functions,
e-mail domains, boolean combinations, filters over lists). Events: the
corpus examples for the chosen names, with values varied so conditions are
sometimes true and sometimes false.
"""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Any

#: Zoom's example events, as vendored for the tests (tests/data/zoom/README.md).
CORPUS_DIR = Path(__file__).resolve().parents[1] / "tests" / "data" / "zoom" / "events"

#: Condition shapes, each with the field it needs: a rule on an exact event
#: name only gets shapes whose field that event has (as a person writing a
#: rule for that event would); glob rules get the shapes that need nothing.
CONDITIONS: list[tuple[str, str | None]] = [
    ("payload.object.topic == '{topic}'", None),
    ("contains(payload.object.topic, '{word}')", "payload.object.topic"),
    (
        "starts_with(payload.object.topic, '{word}') || payload.object.type == `{type}`",
        "payload.object.topic",
    ),
    ("email_domain(payload.object.participant.email) == '{domain}'", None),
    (
        "ends_with(payload.object.participant.email, '@{domain}') && payload.account_id != 'x'",
        "payload.object.participant.email",
    ),
    ("payload.object.id == '{id}' || payload.object.id == `{id}`", None),
    ("payload.object.recording_files[?file_size > `{size}`]", None),
    (
        "lower(payload.object.topic) == '{lower}' && !contains(payload.object.topic, 'secret')",
        "payload.object.topic",
    ),
    ("length(payload.object.participants[?email_domain(email) == '{domain}'] || `[]`) > `2`", None),
    ("payload.object.participants[?status == 'joined' && ends_with(email, '@{domain}')]", None),
    ("event_ts > `{ts}` && payload.account_id", None),
]
TOPICS = ["Weekly project sync", "Board meeting", "Incident bridge", "All hands", "1:1 Riley"]
WORDS = ["sync", "Board", "Incident", "hands", "Riley"]
DOMAINS = ["example.com", "vip.example.com", "partner.example.org"]


def _has(document: dict[str, Any], dotted: str) -> bool:
    node: Any = document
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return node is not None


def corpus() -> dict[str, dict[str, Any]]:
    events: dict[str, dict[str, Any]] = {}
    for path in sorted(CORPUS_DIR.glob("*.json")):
        if path.name == "index.json":
            continue
        for name, entry in json.loads(path.read_text())["events"].items():
            example = entry.get("example")
            if isinstance(example, dict) and example.get("event") == name:
                events[name] = example
    return events


#: How many of the chosen event names come from each family.
FAMILIES = {
    "meeting.": 16, "webinar.": 8, "recording.": 6, "user.": 6,
    "team_chat.": 6, "phone.": 6, "zoomroom.": 2,
}  # fmt: skip


def choose_names(count: int = 50) -> list[str]:
    """Event names spread over the families real rule files care about."""
    names = sorted(corpus())
    chosen: list[str] = []
    for prefix, share in FAMILIES.items():
        family = [n for n in names if n.startswith(prefix)]
        step = max(1, len(family) // share)
        chosen.extend(family[::step][:share])
    rest = [n for n in names if n not in chosen]
    return (chosen + rest)[:count]


def _values(rng: random.Random) -> dict[str, Any]:
    topic = rng.choice(TOPICS)
    return {
        "topic": topic,
        "lower": topic.lower(),
        "word": rng.choice(WORDS),
        "type": rng.choice([2, 8]),
        "domain": rng.choice(DOMAINS),
        "id": rng.choice(["85746065432", "95204914252"]),
        "size": rng.choice([1_000_000, 40_000_000, 60_000_000]),
        "ts": rng.choice([1_600_000_000_000, 1_770_312_600_000]),
    }


#: The action of every generated rule: the benchmarks' own `noop` type.
NOOP_ACTION = 'type = "noop"\n  note = "{{ payload.object.topic }}"'
#: A built-in action instead, for a file that `zoomrules` itself reads.
LOG_ACTION = 'type = "log"\n  path = "/tmp/x-{{ payload.object.topic }}.log"'


def rules_toml(
    rule_count: int,
    names: list[str],
    *,
    glob_share: float = 0.05,
    seed: int = 7,
    unique: bool = False,
    filters: bool = True,
    action: str = NOOP_ACTION,
) -> str:
    """A rule file of `rule_count` rules spread over `names`.

    `unique` makes every condition text different (as in a real large rule
    file), so nothing is saved by the compiler's per-text cache. `filters`
    False leaves out the shapes that filter lists (`[?...]`). `action` is
    the body of each rule's `[[rule.action]]` table.
    """
    conditions = [(c, need) for c, need in CONDITIONS if filters or "[?" not in c]
    rng = random.Random(seed)
    examples = corpus()
    globs = sorted({n.split(".")[0] + ".*" for n in names})
    out: list[str] = []
    for index in range(rule_count):
        if rng.random() < glob_share:
            on, shapes = rng.choice(globs), [c for c, need in conditions if need is None]
        else:
            on = names[index % len(names)]
            shapes = [c for c, need in conditions if need is None or _has(examples[on], need)]
        when = rng.choice(shapes).format(**_values(rng))
        if unique:
            when = f"({when}) && event_ts != `{index}`"
        out.append(
            f'[[rule]]\nname = "r{index}"\non = ["{on}"]\nwhen = """{when}"""\n'
            f"  [[rule.action]]\n  {action}\n"
        )
    return "\n".join(out)


def events(count: int, names: list[str], *, seed: int = 11) -> list[dict[str, Any]]:
    """`count` events drawn from the corpus examples of `names`, values varied."""
    rng = random.Random(seed)
    examples = corpus()
    variants: list[dict[str, Any]] = []
    for _ in range(500):
        body = copy.deepcopy(examples[rng.choice(names)])
        obj = body.get("payload", {}).get("object")
        if isinstance(obj, dict):
            if "topic" in obj:
                obj["topic"] = rng.choice(TOPICS)
            participant = obj.get("participant")
            if isinstance(participant, dict):
                participant["email"] = f"user{rng.randint(1, 99)}@{rng.choice(DOMAINS)}"
            if rng.random() < 0.3:
                # A meeting report-style list of 20 participants, for filter conditions.
                obj["participants"] = [
                    {
                        "user_name": f"P{i}",
                        "email": f"p{i}@{rng.choice(DOMAINS)}",
                        "status": "joined",
                    }
                    for i in range(20)
                ]
        variants.append(body)
    return [variants[i % len(variants)] for i in range(count)]
