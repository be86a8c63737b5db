"""The tests and benchmarks read nothing outside the repository.

Their data is vendored under tests/data/ (see conftest.DATA_DIR), so a clean
clone with nothing beside it runs them. This scans their sources for paths that
leave the repository: a path built from `__file__` that climbs above the root
(`Path(__file__).resolve().parents[2] / "shared"`, `ROOT.parent / ...`,
`.parents[1].parent`), a path relative to `..`, an absolute path (other than
/proc, /sys, /dev), the old data directory named in any string, or `"shared"`
joined to a path not known to be inside the repository.

The path arithmetic is followed statically: `Path(__file__)`, `.resolve()`,
`.parent`, `.parents[k]`, `/ "literal"`, `os.path.dirname`/`join`, and names
bound to such paths, in the module or imported from a sibling (`from conftest
import ROOT`).
"""

from __future__ import annotations

import ast
import os.path
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ("tests", "benchmarks")
#: Vendored data, not code.
SKIPPED_DIRS = {"data", "__pycache__", ".hypothesis", ".pytest_cache"}
#: Absolute paths that name the system, not data.
SYSTEM_PATHS = ("/proc/", "/sys/", "/dev/")
#: Calls whose string arguments are paths.
PATH_CALLS = {"Path", "pathlib.Path", "open", "os.path.join", "os.path.abspath", "os.path.dirname"}
#: `..` as a path's first component: "..", "../x", "..\\x".
PARENT_RELATIVE = re.compile(r"^\.\.(?:[/\\]|$)")
#: The old data location spelled out, in any text.
SHARED_TEXT = re.compile(r"\.\.[/\\]+shared\b")
#: The old data directory as a path component: `<somewhere> / "shared"`.
SHARED_PART = re.compile(r"^shared(?:[/\\]|$)")


def scanned_files() -> list[Path]:
    files = []
    for top in SCANNED:
        for path in sorted((ROOT / top).rglob("*")):
            rel = path.relative_to(ROOT)
            if path.is_file() and not SKIPPED_DIRS.intersection(rel.parts[:-1]):
                files.append(path)
    return files


class PathEvaluator:
    """Evaluates the path expressions of one module, as far as they are static."""

    def __init__(self, file: Path, modules: dict[Path, dict[str, str]]) -> None:
        self.file = file
        self.modules = modules  # module file -> its names bound to paths (a cache)
        self.names: dict[str, str] = {}

    def bind(self, tree: ast.Module) -> dict[str, str]:
        """The names the module binds to static paths (in source order)."""
        nodes = sorted(
            (n for n in ast.walk(tree) if isinstance(n, (ast.Assign, ast.ImportFrom))),
            key=lambda n: (n.lineno, n.col_offset),
        )
        for node in nodes:
            if isinstance(node, ast.ImportFrom):
                self._import(node)
                continue
            value = self.eval(node.value)
            if value is not None:
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        self.names[target.id] = value
        return self.names

    def _import(self, node: ast.ImportFrom) -> None:
        if not node.module or node.level:
            return
        parts = node.module.split(".")
        # A sibling (`conftest`, `action_harness`), or `benchmarks.x` / `tests.x`.
        bases = [self.file.parent] + ([ROOT] if parts[0] in SCANNED else [])
        for base in bases:
            source = base.joinpath(*parts).with_suffix(".py")
            if source.is_file() and source != self.file:
                names = module_paths(source, self.modules)
                for alias in node.names:
                    if alias.name in names:
                        self.names[alias.asname or alias.name] = names[alias.name]
                return

    def eval(self, node: ast.AST) -> str | None:
        """The absolute, normalised path `node` evaluates to, or None if not static."""
        match node:
            case ast.Name(id="__file__"):
                return str(self.file)
            case ast.Name(id=name):
                return self.names.get(name)
            case ast.Constant(value=str() as text):
                return text
            case ast.Attribute(value=inner, attr="parent"):
                path = self.eval(inner)
                return None if path is None else os.path.dirname(path)
            case ast.Subscript(
                value=ast.Attribute(value=inner, attr="parents"), slice=ast.Constant(int() as k)
            ):
                path = self.eval(inner)
                for _ in range(k + 1):
                    path = None if path is None else os.path.dirname(path)
                return path
            case ast.BinOp(left=left, op=ast.Div(), right=right):
                base, tail = self.eval(left), self.eval(right)
                if base is None or tail is None:
                    return None
                return os.path.normpath(os.path.join(base, tail))
            case ast.Call(func=ast.Attribute(value=inner, attr="resolve" | "absolute"), args=[]):
                return self.eval(inner)
            case ast.Call(func=func, args=[arg]) if _name(func) in {"Path", "os.path.dirname"}:
                path = self.eval(arg)
                if path is None or _name(func) == "Path":
                    return path
                return os.path.dirname(path)
            case ast.Call(func=func, args=[first, *rest]) if _name(func) == "os.path.join":
                parts = [self.eval(arg) for arg in (first, *rest)]
                if any(part is None for part in parts):
                    return None
                return os.path.normpath(os.path.join(*parts))  # type: ignore[arg-type]
        return None


def _name(node: ast.AST) -> str:
    return ast.unparse(node)


def module_paths(source: Path, cache: dict[Path, dict[str, str]]) -> dict[str, str]:
    if source not in cache:
        cache[source] = {}  # guards against import cycles
        evaluator = PathEvaluator(source, cache)
        cache[source] = evaluator.bind(ast.parse(source.read_text(), str(source)))
    return cache[source]


def _outside(path: str, root: Path) -> bool:
    return (
        os.path.isabs(path)
        and not Path(path).is_relative_to(root)
        and not path.startswith(SYSTEM_PATHS)
    )


def _is_path_expression(node: ast.AST) -> bool:
    """`x.parent`, `x.parents[k]`, `x / y`, `Path(x)`, `os.path.join(...)`, ..."""
    match node:
        case ast.Attribute(attr="parent") | ast.BinOp(op=ast.Div()):
            return True
        case ast.Subscript(value=ast.Attribute(attr="parents")):
            return True
        case ast.Call(func=func):
            return _name(func) in PATH_CALLS
    return False


def escapes(source: Path, text: str, root: Path = ROOT) -> Iterator[str]:
    """Each line of a Python module that reaches outside `root`, as `file:line: code: why`."""
    tree = ast.parse(text, str(source))
    evaluator = PathEvaluator(source, {})
    evaluator.bind(tree)
    path_literals: set[int] = set()  # constants used as paths: Path(c), open(c), x / c
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _name(node.func) in PATH_CALLS:
            path_literals.update(id(arg) for arg in node.args)
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            path_literals.update((id(node.left), id(node.right)))
    reported: set[int] = set()
    for node in ast.walk(tree):  # outermost first: one report per line
        why = None
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if SHARED_TEXT.search(node.value):
                why = "names the old shared data directory"
            elif id(node) in path_literals and PARENT_RELATIVE.match(node.value):
                why = "a path relative to `..`"
            elif id(node) in path_literals and _outside(node.value, root):
                why = "an absolute path outside the repository"
        elif _is_path_expression(node):
            path = evaluator.eval(node)
            if path is not None and _outside(path, root):
                why = f"leaves the repository ({path})"
            elif (
                path is None
                and isinstance(node, ast.BinOp)
                and isinstance(node.right, ast.Constant)
                and isinstance(node.right.value, str)
                and SHARED_PART.match(node.right.value)
            ):
                why = "joins the old shared data directory to a path not known to be inside"
        if why and node.lineno not in reported:
            reported.add(node.lineno)
            yield f"{source.relative_to(root)}:{node.lineno}: {ast.unparse(node)}: {why}"


def outside_references(root: Path = ROOT) -> list[str]:
    found = []
    for path in scanned_files():
        text = path.read_text(errors="replace")
        if path.suffix == ".py":
            found.extend(escapes(path, text, root))
        else:
            found.extend(
                f"{path.relative_to(root)}:{n}: {line.strip()}"
                for n, line in enumerate(text.splitlines(), 1)
                if SHARED_TEXT.search(line)
            )
    return found


def test_tests_and_benchmarks_read_nothing_outside_the_repository() -> None:
    assert scanned_files(), "nothing scanned"
    assert outside_references() == []


# The scan itself, on the references the tests and benchmarks used to make
# (`..` is spelled apart so that this file does not name the old path itself).
UP = ".."
BEFORE = [
    'CORPUS_DIR = ROOT.parent / "shared" / "zoom" / "events"',
    'SHARED = Path(__file__).resolve().parents[2] / "shared" / "zoom" / "events"',
    'SHARED = Path(__file__).resolve().parents[1].parent / "shared"',
    'EXAMPLES = json.loads((Path(__file__).resolve().parents[2] / "shared" / "z.json").read_text())',
    'EVENTS = Path(__file__).resolve().parents[2] / "shared" / "zoom" / "events" / "meetings.json"',
    'DATA = Path(__file__).parent.parent.parent / "elsewhere"',
    'DATA = os.path.join(os.path.dirname(__file__), "' + UP + '", "' + UP + '", "x")',
    'DATA = Path("' + UP + '/elsewhere")',
    'DATA = Path("/work/' + 'shared/zoom")',
    'DOC = "read from ' + UP + '/shared/zoom"',
    'DATA = Path(os.environ["HOME"]).parents[2] / "shared"',
]
AFTER = [
    'CORPUS_DIR = ROOT / "tests" / "data" / "zoom" / "events"',
    'DATA = Path(__file__).resolve().parents[1] / "tests" / "data"',
    'DOC = (Path(__file__).parent.parent / "docs" / "jmespath.md").read_text()',
    'URL = {"' + UP + "/" + UP + '/users/me": "x"}',
    'CPU = Path("/proc/cpuinfo").read_text()',
    'SHARED = ROOT / "tests" / "shared"',
]


def _scan_snippet(snippet: str) -> list[str]:
    source = ROOT / "tests" / "snippet.py"
    text = f"ROOT = Path(__file__).resolve().parent.parent\n{snippet}\n"
    return list(escapes(source, text))


@pytest.mark.parametrize("snippet", BEFORE)
def test_the_scan_catches_a_reference_outside_the_repository(snippet: str) -> None:
    assert _scan_snippet(snippet), snippet


@pytest.mark.parametrize("snippet", AFTER)
def test_the_scan_accepts_paths_inside_the_repository(snippet: str) -> None:
    assert _scan_snippet(snippet) == []


def test_the_scan_follows_names_imported_from_conftest(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text("ROOT = Path(__file__).resolve().parent\n")
    user = tmp_path / "test_user.py"
    user.write_text('from conftest import ROOT\nDATA = ROOT.parent / "elsewhere"\n')
    assert list(escapes(user, user.read_text(), tmp_path))
