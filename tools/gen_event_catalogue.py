"""Regenerate engine/data/zoom_events.json from the Zoom event corpus.

Usage: python tools/gen_event_catalogue.py [../shared/zoom/events/index.json]

A maintainer tool: it reads the upstream corpus beside the repository
(../shared/zoom/events/index.json), not the copy vendored for the tests under
tests/data/zoom/, which leaves index.json out.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    source = (
        Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared/zoom/events/index.json"
    )
    index = json.loads(source.read_text())
    names = sorted({event for product in index["products"].values() for event in product["events"]})
    out = ROOT / "engine/data/zoom_events.json"
    out.write_text(
        json.dumps({"source": "shared/zoom/events/index.json", "events": names}, indent=0) + "\n"
    )
    print(f"{len(names)} event names -> {out}")


if __name__ == "__main__":
    main()
