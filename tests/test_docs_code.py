"""The `python` code blocks of the documentation run as written.

Each page's blocks run in order, in one module of their own (so a later
block uses what an earlier one defined, as a reader pasting them into one
file would), in an empty working directory. A page with python blocks is
found automatically; a block that stops running fails this test with the
page and the block's line.
"""

from __future__ import annotations

import os
import re
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md"))
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(page: Path) -> list[tuple[int, str]]:
    """(line of the opening fence, code) of each python block of `page`."""
    text = page.read_text()
    return [(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in _BLOCK.finditer(text)]


PAGES = [page for page in DOCS if python_blocks(page)]


def test_the_plugin_guide_has_runnable_code() -> None:
    assert ROOT / "docs" / "plugins.md" in PAGES
    assert len(python_blocks(ROOT / "docs" / "plugins.md")) >= 4


@pytest.mark.parametrize("page", PAGES, ids=[page.name for page in PAGES])
def test_python_blocks_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"docs_{page.stem.replace('-', '_')}"
    module = types.ModuleType(name)
    module.__file__ = str(page)
    monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.chdir(tmp_path)
    for line, code in python_blocks(page):
        try:
            exec(compile(code, f"{page}:{line}", "exec"), module.__dict__)  # noqa: S102
        except Exception as exc:
            pytest.fail(f"{page.name}, the block at line {line}: {type(exc).__name__}: {exc}")
    assert os.getcwd() == str(tmp_path)
