"""Regenerate engine/data/demo_events.json (the `zoomrules demo` scenario) from the corpus.

Events are Zoom's examples as published in ../shared/zoom/events/meetings.json;
only participant names/emails are varied so that one of them is a VIP.

A maintainer tool: it reads the upstream corpus beside the repository
(../shared/zoom/events/), not the copy vendored for the tests under tests/data/zoom/.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    corpus = json.loads((ROOT.parent / "shared/zoom/events/meetings.json").read_text())["events"]

    def example(name: str) -> dict:
        return copy.deepcopy(corpus[name]["example"])

    def joined(user: str, email: str, minute: int) -> dict:
        event = example("meeting.participant_joined")
        participant = event["payload"]["object"]["participant"]
        participant.update(user_name=user, email=email, join_time=f"2026-02-05T17:{minute:02d}:00Z")
        event["event_ts"] += (minute - 2) * 60_000
        return event

    scenario = [
        example("meeting.created"),
        example("meeting.started"),
        joined("Riley Park", "riley.park@example.com", 2),
        joined("Dana Whitfield", "dana@vip.example.com", 4),
        joined("Sam Ortiz", "sam.ortiz@example.com", 5),
        example("meeting.participant_left"),
        example("meeting.ended"),
        example("recording.completed"),
    ]
    out = ROOT / "engine/data/demo_events.json"
    out.write_text(json.dumps(scenario, indent=1) + "\n")
    print(f"{len(scenario)} events -> {out}")


if __name__ == "__main__":
    main()
