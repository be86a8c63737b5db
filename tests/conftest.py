"""Shared fixtures and helpers: the Zoom example corpus, rule files, the real CLI."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
from functools import cache
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: Test data vendored into the repository (see the README.md beside each set):
#: tests and benchmarks read nothing outside the repository.
DATA_DIR = ROOT / "tests" / "data"
#: Zoom's example events, one `<product>.json` per product.
CORPUS_DIR = DATA_DIR / "zoom" / "events"
#: The JMESPath compliance suite.
COMPLIANCE_DIR = DATA_DIR / "jmespath-compliance"
EXAMPLE_RULES = ROOT / "rules.example.toml"

#: What `[zoom]` in rules.example.toml reads from the environment.
ZOOM_ENV = {
    "ZOOM_CLIENT_ID": "test-client-id",
    "ZOOM_CLIENT_SECRET": "test-client-secret",
    "ZOOM_WS_ENDPOINT": "wss://ws.zoom.us/ws?subscriptionId=test-subscription",
}


#: Fixtures that run a real nats-server: nats_server_bin, nats_server, nats_cluster.
pytest_plugins = ["tests.nats_server"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@cache
def _corpus() -> dict[str, dict[str, Any]]:
    examples: dict[str, dict[str, Any]] = {}
    for path in sorted(CORPUS_DIR.glob("*.json")):
        if path.name == "index.json":
            continue
        for name, entry in json.loads(path.read_text())["events"].items():
            examples[name] = entry["example"]
    return examples


def corpus() -> dict[str, dict[str, Any]]:
    """Every example event of Zoom's docs, by the name it is documented under."""
    return _corpus()


def product_events(product: str) -> dict[str, dict[str, Any]]:
    """One product file of the corpus (`meetings`, ...), freshly read: event name ->
    {"example", "schema", ...} as published."""
    return json.loads((CORPUS_DIR / f"{product}.json").read_text())["events"]


def example(name: str) -> dict[str, Any]:
    """A deep copy of one corpus example (safe to modify)."""
    return copy.deepcopy(_corpus()[name])


def write_rules(directory: Path, text: str, name: str = "rules.toml") -> Path:
    """Write a rule file (dedented) and return its path."""
    path = directory / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ZOOM", "PYTHON"))}
    env.update(ZOOM_ENV)
    env.update(extra)
    return env


def run_cli(
    *args: str | Path,
    env: dict[str, str] | None = None,
    input: str | bytes | None = None,
    cwd: Path | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run the real `zoomrules` command line in a subprocess."""
    if isinstance(input, bytes):
        input = input.decode()
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *map(str, args)],
        env=cli_env() if env is None else env,
        input=input,
        capture_output=True,
        text=True,
        cwd=cwd or ROOT,
        timeout=timeout,
    )
