"""Compile all the rules that can fire on one event name into one Python function.

The matcher asks for a *plan* per event name: its candidate rules, in file
order. Evaluated one condition at a time, most of an event's cost is the
per-rule overhead (a call, a loop step) and work the rules repeat: twenty
rules on `meeting.participant_joined` all read `payload.object.participant`,
four filter the same participant list by e-mail domain. `compile_plan`
generates a single function for the whole plan, with the code for each
condition inlined (`engine.expr.codegen` generates it) and two kinds of
sharing across rules:

- **Common sub-expressions.** A sub-expression evaluated on the event itself
  (not on a list element) that occurs in two or more places, and calls only
  pure functions, is computed at most once per event, on first use, into a
  local variable. If computing it raises, the error is kept and raised again
  at every later use, so each rule still reports the error its own
  evaluation would have. Runs of fields (`payload.object.topic`) start
  from the beginnings they share (`payload.object`, read once).
- **Grouped filters.** Filters over the same list whose test starts with an
  equality on the same expression, `list[?key == 'literal' && rest]`, share
  one pass over the list that buckets its elements by `key`; each filter then
  only visits its own bucket. Exact because the bucket holds, in order, the
  very elements for which the test's first operand is true (the literal is a
  string or a number other than 0 and 1, for which JMESPath's equality is
  Python's, see engine.expr.guards). If `key` raises on any element, or gives a
  value of an unexpected class, every filter falls back to its own loop, which
  raises the error at the same element as before.
- **Tested filters.** A grouped filter that is a whole condition, such as
  `list[?status == 'joined' && ends_with(email, '@x.com')]`, is only tested
  for being non-empty: the plan scans the bucket's `email` strings (gathered
  once per event for every such filter on that bucket) and stops at the
  first hit. Exact because that shortcut is only taken when every `email`
  in the bucket is a string, where the test cannot raise; otherwise the
  filter's own loop runs and raises where the interpreter would. When only
  such tests use a key, no buckets are built: one pass gathers the strings
  of the elements whose key equals the literal (worth it even for a single
  such filter).

- **Absent lists.** A condition that reads the event only through filters
  over one list (`length(participants[?...] || `[]`) > `2``) gives, when
  that list is absent (most events), a value known when compiling: the plan
  checks once per event whether the list is there, and such rules cost one
  test without it (see `_without_list`).

Each rule's code runs in its own `try`: an error is passed to `on_error` and
the next rule runs, as in the rule-by-rule matcher. `stop` returns at once.
Nothing is evaluated that rule-by-rule evaluation would not evaluate, except
the grouping pass (pure functions only, errors discarded) and, once when the
plan is compiled, each group key on null (see `_null_never_bucketed`) and
each condition decided without its list (pure functions only).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import CodeType
from typing import Any, cast

import jmespath

from engine.expr.codegen import (
    CodeGenerator,
    ExpressionRef,
    compile_parsed,
    is_true,
    parsed_result,
)
from engine.expr.guards import is_pure, set_comparable, shareable
from engine.hookspecs import JMESPathFunction

Node = dict[str, Any]
#: `plan(root, context) -> fired items`, in file order.
PlanFunction = Callable[[Any, Any], list[Any]]
ErrorHandler = Callable[[Any, Any, Exception], None]

__all__ = [
    "PlanFunction",
    "PlanSource",
    "PlanStep",
    "Raised",
    "compile_plan",
    "generate_plan",
    "reads_only_fields",
]

_ROOT = "r"

#: Node types whose value on the event is cheap and cannot raise; a shared
#: one needs no error bookkeeping.
_SAFE = frozenset({"field", "identity", "current", "literal"})
_SAFE_CHAINS = frozenset({"subexpression", "index_expression"})
#: Nodes whose children are all evaluated on the node's own input.
_FORKS = frozenset(
    {
        "comparator",
        "and_expression",
        "or_expression",
        "not_expression",
        "function_expression",
        "multi_select_list",
        "multi_select_dict",
        "key_val_pair",
    }
)
_CHAINS = frozenset(
    {
        "subexpression",
        "index_expression",
        "pipe",
        "projection",
        "value_projection",
        "filter_projection",
        "flatten",
    }
)


@dataclass(frozen=True, slots=True)
class PlanStep:
    """One rule of a plan."""

    #: What the plan returns when the rule fires.
    item: Any
    #: The condition's AST, or None: then `search` (if any) is called instead.
    tree: Node | None
    #: The condition as a function, for rules without a tree; None with no tree
    #: means the rule has no condition.
    search: Callable[[Any], Any] | None
    stop: bool


class _Unset:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<unset>"


class Raised:
    """A shared sub-expression that raised; every later use raises it again."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


_UNSET = _Unset()
#: A group whose key raised or gave an unexpected value: filters run their own loop.
_UNGROUPED = _Unset()


def _strings(elements: Any, name: str) -> list[str] | None:
    """The values of field `name` of `elements` when every element is exactly
    a dict and every value exactly a str; otherwise None."""
    values = [e.get(name) if e.__class__ is dict else None for e in elements]
    for value in values:
        if value.__class__ is not str:
            return None
    return cast(list[str], values)


_PLAN_RUNTIME: dict[str, Any] = {
    "_U": _UNSET,
    "_strings": _strings,
    "_UNGROUPED": _UNGROUPED,
    "_Raised": Raised,
    # Key classes that can never equal a grouped literal (a string, or a
    # number other than 0 and 1): null, booleans, arrays, objects.
    "_NEVER_EQUAL": frozenset({type(None), bool, list, dict}),
    # Every class a grouping pass knows what to do with.
    "_KEY_CLASSES": frozenset({str, int, float, type(None), bool, list, dict}),
}


def compile_plan(
    steps: Sequence[PlanStep],
    functions: Mapping[str, JMESPathFunction],
    on_error: ErrorHandler,
) -> PlanFunction:
    """One function evaluating `steps` in order: `plan(root, context)` returns
    the items of the rules that fire, honouring `stop`; a rule whose condition
    raises is reported as `on_error(item, context, error)` and does not fire.

    Raises SyntaxError, RecursionError or MemoryError when Python cannot
    compile the plan (the caller then evaluates rule by rule).
    """
    return generate_plan(steps, functions, on_error).build()


def generate_plan(
    steps: Sequence[PlanStep],
    functions: Mapping[str, JMESPathFunction],
    on_error: ErrorHandler,
) -> PlanSource:
    """The first half of `compile_plan`: the plan's Python source, not yet
    compiled. Generating it runs Python code (another thread may run
    meanwhile); `PlanSource.build` then calls `compile()`, which holds the
    interpreter lock for as long as it takes: about proportional to
    `len(source)`, which lets a caller cut a large plan into smaller ones
    first (engine.matcher)."""
    return _PlanGenerator(functions).plan(steps, on_error)


@dataclass(slots=True)
class PlanSource:
    """A plan's generated source and what its code runs in."""

    source: str
    #: The plan function's name in `namespace`.
    name: str
    namespace: dict[str, Any]
    exprefs: list[tuple[str, str, Node]]
    rules: int

    @property
    def filename(self) -> str:
        """What its code objects give as their file name."""
        return f"<plan of {self.rules} rules>"

    def build(self, code: CodeType | None = None) -> PlanFunction:
        """Define the plan function (once), from `code`, what `compile()`
        gives for `source` and `filename` (compiled here if None)."""
        namespace = self.namespace
        if code is None:
            code = compile(self.source, self.filename, "exec")
        exec(code, namespace)
        for const, fname, child in self.exprefs:
            namespace[const] = ExpressionRef(child, namespace[fname])
        plan: PlanFunction = namespace[self.name]
        plan.__jmespath_source__ = self.source  # type: ignore[attr-defined]
        return plan


def reads_only_fields(steps: Sequence[PlanStep], hidden: str) -> bool:
    """True when the plan reads the document it is given only by named
    fields other than `hidden`.

    The matcher then hands the plan the event's body instead of building its
    root document (the body plus the engine's metadata under `hidden`): every
    field but `hidden` has the same value in both, and nothing else is read.
    Whole-document reads (`@`, `*`, `[]`, `keys(@)`, ...) all go through an
    identity node.
    """
    for step in steps:
        if step.tree is None:
            if step.search is not None:
                return False
            continue
        for node in _root_context_nodes(step.tree):
            kind = node["type"]
            if kind in ("identity", "current") or (kind == "field" and node["value"] == hidden):
                return False
    return True


class _PlanGenerator(CodeGenerator):
    def __init__(self, functions: Mapping[str, JMESPathFunction]) -> None:
        super().__init__(functions)
        self._namespace.update(_PLAN_RUNTIME)
        #: id(node) -> (node, canonical key); the node is kept so its id stays unique.
        self._keys: dict[int, tuple[Node, str]] = {}
        #: id(node) -> its canonical key if it is shareable, else None
        #: (the nodes are kept alive by _keys or the trees).
        self._shared: dict[int, str | None] = {}
        self._memo: dict[str, str] = {}
        #: Shared field reads (they cannot raise): read once at the top of
        #: the plan, so each use is a plain variable (and the plan shorter).
        self._eager: dict[str, str] = {}
        self._nodes: dict[str, Node] = {}
        self._eager_done: set[str] = set()
        self._groups: dict[tuple[str, str], str] = {}
        #: Slot -> the name of the generated function computing it.
        self._computers: dict[str, str] = {}
        #: (group slot, literal, field) -> the variable holding that field of
        #: every element of the literal's bucket, as `_strings` gives it.
        self._strings: dict[tuple[str, Any, str], str] = {}
        #: Groups only used by string tests: never bucketed, see _string_filter_test.
        self._direct: set[str] = set()
        #: Group key -> whether null elements never get into its buckets.
        self._null_keys: dict[str, bool] = {}
        #: Eager slot -> the variable telling whether its value is a list
        #: (set at the top of the plan), see _without_list.
        self._list_flags: dict[str, str] = {}

    def _is_pure(self, name: str) -> bool:
        return is_pure(name, self._custom)

    def _literal(self, value: Any) -> str:
        """Strings and numbers inline, as Python constants of the plan's code
        (the expression compiler names them instead, so that expressions
        differing only in literals share code; a plan shares nothing).

        A plan is one large function per event name and events come in no
        order, so a plan's code is rarely in the CPU's cache: a constant
        (`LOAD_CONST`, two bytes) instead of a global name (`LOAD_GLOBAL`,
        twelve bytes of code and a look-up in the plan's namespace) keeps
        what an event runs smaller. Floats only when their repr is one
        (not inf or nan)."""
        cls = value.__class__
        if cls is str or cls is int or (cls is float and math.isfinite(value)):
            return repr(value)
        return super()._literal(value)

    def _key(self, node: Node) -> str:
        known = self._keys.get(id(node))
        if known is None:
            # jmespath builds every node with the same keys in the same
            # order, so repr is a faithful canonical form.
            known = self._keys[id(node)] = (node, repr(node))
        return known[1]

    # -- planning ----------------------------------------------------------

    def _find_sharing(self, trees: list[Node]) -> None:
        """Slots for the sub-expressions and filter groups used twice or more."""
        group_uses: dict[tuple[str, str], int] = {}
        group_tests: dict[tuple[str, str], int] = {}
        counted: list[Node] = []
        for tree in trees:
            try:
                for node in _root_context_nodes(tree):
                    group = self._group_key(node)
                    if group is not None:
                        group_uses[group] = group_uses.get(group, 0) + 1
                        if node is tree and _string_filter_shape(node, self._custom):
                            group_tests[group] = group_tests.get(group, 0) + 1
                    # Canonicalised here, where a tree too deep for it can be left out.
                    self._shared[id(node)] = (
                        self._key(node)
                        if node["type"] not in _UNKEYED and shareable(node, self._is_pure)
                        else None
                    )
            except RecursionError:  # too deep to canonicalise: shares nothing
                continue
            counted.append(tree)
        for group, count in group_uses.items():
            # A key only string tests use is worth it even for one filter:
            # gathering its strings costs less per element than the filter's
            # own loop, and the test then stops at the first that passes.
            tested = group_tests.get(group) == count
            if count >= 2 or tested:
                slot = self._groups[group] = f"g{len(self._groups)}"
                if tested:
                    self._direct.add(slot)
        # Sub-expressions used twice or more; then only those still used
        # twice once the sub-expressions of a shared one count only once:
        # computed once per event through it, they need no slot of their own
        # (a rule's condition repeated in another rule shares the whole
        # condition, not each of its parts).
        every = self._count_uses(counted, None)
        uses = self._count_uses(counted, {key for key, count in every.items() if count >= 2})
        for key, count in uses.items():
            if count >= 2:
                self._memo[key] = f"m{len(self._memo)}"
                if _cannot_raise(self._nodes[key]):
                    self._eager[key] = self._memo[key]
        self._share_prefixes(counted)

    def _share_prefixes(self, trees: list[Node]) -> None:
        """Read once, at the top, the beginnings that runs of fields read on
        the event share (`payload` and `payload.object` of
        `payload.object.topic` and `payload.object.id`): each run then
        starts from the longest one (see _n_subexpression) instead of
        walking the event from its root again. Only field reads, which
        cannot raise."""
        runs: dict[tuple[str, ...], None] = {}
        for tree in trees:
            for node in _root_context_nodes(tree):
                fields = _field_names(node)
                if fields is not None and len(fields) >= 2:
                    runs[fields] = None
        counts: dict[tuple[str, ...], int] = {}
        for fields in runs:
            for end in range(1, len(fields)):
                counts[fields[:end]] = counts.get(fields[:end], 0) + 1
        for prefix, count in counts.items():
            if count >= 2:
                node = _field_run_node(prefix)
                key = repr(node)  # as _key gives it: jmespath's own shape
                slot = self._memo.setdefault(key, f"m{len(self._memo)}")
                self._nodes.setdefault(key, node)
                self._eager[key] = slot

    def _count_uses(self, trees: list[Node], shared: set[str] | None) -> dict[str, int]:
        """How many times each shareable sub-expression is evaluated per
        event; with `shared`, the keys that will have a slot, below which
        only their first occurrence is evaluated."""
        uses: dict[str, int] = {}
        expanded: set[str] = set()

        def count(node: Node) -> bool:
            key = self._use_key(node, tree)
            if key is None:
                return True
            uses[key] = uses.get(key, 0) + 1
            self._nodes.setdefault(key, node)
            if shared is None or key not in shared:
                return True
            if key in expanded:
                return False  # computed by its first occurrence
            expanded.add(key)
            return True

        for tree in trees:
            _root_context_nodes(tree, count)
        return uses

    def _use_key(self, node: Node, tree: Node) -> str | None:
        """The key under which a use of `node` (in condition `tree`) is shared."""
        key = self._shared[id(node)]
        if key is not None and node is tree and self._string_filter(node) is not None:
            # A whole condition that is only tested (see _test): rules with
            # the same one share the test, not the filtered list.
            return _TEST + key
        return key

    def _group_key(self, node: Node) -> tuple[str, str] | None:
        """Filters with equal group keys can share one bucketing of their list.

        Only the list and the key are evaluated by the grouping pass, so only
        they need be pure.
        """
        split = _grouped_filter(node)
        if split is None:
            return None
        base, key, _, _ = split
        if not (shareable(base, self._is_pure) and shareable(key, self._is_pure)):
            return None
        return self._key(base), self._key(key)

    def plan(self, steps: Sequence[PlanStep], on_error: ErrorHandler) -> PlanSource:
        self._find_sharing([step.tree for step in steps if step.tree is not None])
        self._namespace["_fail"] = on_error
        name = self._tmp("_plan")
        self._lines, self._indent = [f"def {name}({_ROOT}, ctx):"], 1
        for key in self._eager:
            self._read_eagerly(key)
        slots_at = len(self._lines)
        self._emit("fired = []")
        for step in steps:
            self._step(step)
        self._emit("return fired")
        # Known now that the steps have asked for their `_strings` variables.
        eager = set(self._eager.values())
        slots = [
            *(m for m in self._memo.values() if m not in eager),
            *(g for g in self._groups.values() if g not in self._direct),
            *self._strings.values(),
        ]
        if slots:
            self._lines.insert(slots_at, "    " + " = ".join(slots) + " = _U")
        for slot, flag in self._list_flags.items():
            self._lines.insert(slots_at, f"    {flag} = isinstance({slot}, list)")
        self._defs.append("\n".join(self._lines))
        source = "\n\n".join(self._defs)
        return PlanSource(source, name, self._namespace, self._exprefs, len(steps))

    def _test(self, tree: Node) -> str:
        """A Python condition true iff the condition `tree` is JMESPath-true
        on the event."""
        shape = self._string_filter(tree)
        if shape is None:
            return self._truthy(self.node(tree, _ROOT), tree)
        slot = self._memo.get(_TEST + self._key(tree))
        if slot is None:
            return self._string_filter_test(tree, shape)
        return self._memoized(slot, lambda: self._string_filter_test(tree, shape))

    def _step(self, step: PlanStep) -> None:
        if step.tree is not None and step.search is not None:
            saved = (len(self._lines), self._indent, len(self._defs), len(self._exprefs))
            computers, strings = dict(self._computers), dict(self._strings)
            try:
                self._emit_step(step)
                return
            except RecursionError:
                # An absurdly deep condition: call its own function instead
                # (which may be jmespath's interpreter, see engine.expr.codegen),
                # forgetting everything its code had started to define.
                lines, self._indent, defs, exprefs = saved
                del self._lines[lines:], self._defs[defs:], self._exprefs[exprefs:]
                self._computers, self._strings = computers, strings
                step = PlanStep(step.item, None, step.search, step.stop)
        self._emit_step(step)

    def _emit_step(self, step: PlanStep) -> None:
        item = self._const(step.item)
        fire = [f"fired.append({item})"] + (["return fired"] if step.stop else [])
        if step.tree is None and step.search is None:
            for line in fire:
                self._emit(line)
            return
        absent = self._without_list(step.tree) if step.tree is not None else None
        if absent is not None:
            flag, fires = absent
            # Without the list (most events), the outcome known at compile time.
            self._emit(f"if not {flag}:")
            with self._block():
                for line in fire if fires else ["pass"]:
                    self._emit(line)
            self._emit("else:")
            with self._block():
                self._emit_try(step, item, fire)
            return
        self._emit_try(step, item, fire)

    def _emit_try(self, step: PlanStep, item: str, fire: list[str]) -> None:
        self._emit("try:")
        with self._block():
            if step.tree is not None:
                test = self._test(step.tree)
            else:
                value = self._assign(f"{self._const(step.search)}({_ROOT})")
                test = self._truthy(value, None)
            self._emit(f"if {test}:")
            with self._block():
                for line in fire:
                    self._emit(line)
        self._emit("except Exception as _x:")
        with self._block():
            self._emit(f"_fail({item}, ctx, _x)")

    def _without_list(self, tree: Node) -> tuple[str, bool] | None:
        """For a condition that reads the event only through filters over one
        list, `payload.object.participants[?...]`, what it gives when that
        list is absent: (the variable telling whether it is a list, whether
        the rule then fires); None for any other condition.

        Every such filter gives null when its base is no list, without
        evaluating anything else, so the condition then gives what it gives
        with those filters replaced by null: a value that no longer depends
        on the event (no other read of it is left, and every function is
        pure), computed here once. Only taken when the base is read eagerly
        (it cannot raise) and that computation does not raise (an error is
        left to the rule's own code, to be reported at run time).
        """
        base_key: str | None = None
        for node in _root_context_nodes(tree):
            if node["type"] == "filter_projection":
                key = self._key(node["children"][0])
                if key in self._eager:
                    base_key = key
                    break
        if base_key is None or not shareable(tree, self._is_pure):
            return None
        try:
            constant = _replace_filters(tree, base_key, self._key)
            for node in _root_context_nodes(constant):
                if node["type"] in ("field", "identity", "current"):
                    return None
            # jmespath's own interpreter: the reference, and cheaper than
            # generating code for a value computed once.
            parsed = parsed_result("<condition without its list>", constant)
            value = parsed.search(None, jmespath.Options(custom_functions=self._funcs))
        except Exception:  # noqa: BLE001 - RecursionError included: no shortcut
            return None
        slot = self._read_eagerly(base_key)
        flag = self._list_flags.get(slot)
        if flag is None:
            flag = self._list_flags[slot] = f"l{slot}"
        return flag, is_true(value)

    # -- shared evaluation -------------------------------------------------

    def node(self, node: Node, cur: str) -> str:
        if cur == _ROOT and self._memo:
            key = self._key(node)
            slot = self._eager.get(key)
            if slot is not None:
                return self._read_eagerly(key)
            slot = self._memo.get(key)
            if slot is not None:
                compute = getattr(self, f"_n_{node['type']}")
                if _calls_nothing(node):
                    return self._memoized_plainly(slot, lambda: compute(node, _ROOT))
                return self._memoized(slot, lambda: compute(node, _ROOT))
        return super().node(node, cur)

    def _read_eagerly(self, key: str) -> str:
        """The variable holding a shared field read; the first time (at the
        top of the plan), the statements reading it, after those of the
        reads it builds on."""
        slot = self._eager[key]
        if key not in self._eager_done:
            self._eager_done.add(key)
            node = self._nodes[key]
            read = getattr(self, f"_n_{node['type']}")
            self._emit(f"{slot} = {read(node, _ROOT)}")
        return slot

    def _memoized(self, slot: str, compute: Callable[[], str]) -> str:
        """A shared sub-expression that may raise (the ones that cannot are
        read eagerly): computed at its first use, its error kept."""
        self._emit(f"if {slot} is _U:")
        with self._block():
            self._emit("try:")
            with self._block():
                self._emit(f"{slot} = {compute()}")
            self._emit("except Exception as _y:")
            with self._block():
                self._emit(f"{slot} = _Raised(_y)")
                self._emit("raise")
        self._emit(f"elif {slot}.__class__ is _Raised:")
        with self._block():
            self._emit(f"raise {slot}.error")
        return slot

    def _n_subexpression(self, node: Node, cur: str) -> str:
        fields = _field_names(node) if cur == _ROOT and self._eager else None
        if fields is None:
            return super()._n_subexpression(node, cur)
        for end in range(len(fields) - 1, 0, -1):
            key = repr(_field_run_node(fields[:end]))
            if key in self._eager:
                # Read at the top of the plan (see _share_prefixes).
                base, rest = self._read_eagerly(key), list(fields[end:])
                if len(rest) >= 2:
                    return self._field_run(rest, base)
                out = self._tmp()
                # visit_field: a dict (or anything with .get) answers;
                # anything else has no field.
                self._emit("try:")
                with self._block():
                    self._emit(f"{out} = {base}.get({rest[0]!r})")
                self._emit("except AttributeError:")
                with self._block():
                    self._emit(f"{out} = None")
                return out
        return super()._n_subexpression(node, cur)

    def _memoized_plainly(self, slot: str, compute: Callable[[], str]) -> str:
        """A shared sub-expression that calls no function (such as
        `a.b == 'x' || a.b == `1``): computed at its first use, with no
        error kept. Only functions raise JMESPath errors; what else could
        raise here (Python's recursion limit on absurdly deep data, an odd
        object's `==` in a document built in code) raises again, the same,
        when a later use computes it anew, as the slot is still unset. So
        each use costs one test, not two."""
        self._emit(f"if {slot} is _U:")
        with self._block():
            self._emit(f"{slot} = {compute()}")
        return slot

    def _n_filter_projection(self, node: Node, cur: str) -> str:
        if cur != _ROOT or not self._groups:
            return super()._n_filter_projection(node, cur)
        group_key = self._group_key(node)
        slot = self._groups.get(group_key) if group_key is not None else None
        split = _grouped_filter(node)
        if slot is None or split is None:
            return super()._n_filter_projection(node, cur)
        base_node, key_node, literal, rest = split
        self._fill(slot, base_node, key_node)
        out = self._tmp()
        self._emit(f"if {slot} is _UNGROUPED:")
        with self._block():
            # Rare (the key raised): compiled when first needed.
            plain = self._const(_Deferred(node, self._custom))
            self._emit(f"{out} = {plain}({_ROOT})")
        self._emit(f"elif {slot} is None:")
        with self._block():
            self._emit(f"{out} = None")
        self._emit("else:")
        with self._block():
            bucket = self._assign(f"{slot}.get({self._literal(literal)}, ())")
            right = node["children"][1]
            if rest is None and right["type"] == "identity":
                # The bucket itself, less null elements (the projection drops them).
                if self._null_never_bucketed(key_node):
                    self._emit(f"{out} = list({bucket})")
                else:
                    self._emit(f"{out} = [e for e in {bucket} if e is not None]")
            else:
                self._emit(f"{out} = {self._project('True', bucket, right, rest)}")
        return out

    def _fill(self, slot: str, base_node: Node, key_node: Node) -> None:
        """Make sure the group `slot` is filled (by its first use in the event)."""
        base = self.node(base_node, _ROOT)
        fill = self._computers.get(slot)
        if fill is None:
            fill = self._computers[slot] = self._group_filler(key_node)
        self._emit(f"if {slot} is _U:")
        with self._block():
            # No call for the events without the list (most of them).
            self._emit(f"{slot} = {fill}({base}) if isinstance({base}, list) else None")

    def _string_filter(self, node: Node) -> tuple[str, _StringFilter] | None:
        """`node`'s group slot and string-filter shape, if it has both."""
        shape = _string_filter_shape(node, self._custom)
        group_key = self._group_key(node) if shape is not None else None
        slot = self._groups.get(group_key) if group_key is not None else None
        if slot is None or shape is None:
            return None
        return slot, shape

    def _string_filter_test(self, node: Node, found: tuple[str, _StringFilter]) -> str:
        """Whether the grouped filter `list[?key == lit && ends_with(field, 'text')]`
        (or starts_with, contains) is non-empty: a variable holding True or False.

        The filtered list itself is not needed, only whether some element of
        the bucket passes, so the scan may stop at the first that does, but
        only where no later element could have raised: when every element of
        the bucket is a dict whose `field` is a str, the test cannot raise
        (both arguments are strings). The strings are gathered once per
        event and bucket (`_strings`), for every filter on that bucket and
        field; where they are not all strings, the filter runs its full
        loop, which raises at the same element as the interpreter.
        """
        slot, (literal, field, method, text) = found
        base_node, key_node, _, rest = _grouped_filter(node)  # type: ignore[misc]
        strings = self._strings.get((slot, literal, field))
        if strings is None:
            strings = self._strings[(slot, literal, field)] = self._tmp("s")
        out = self._tmp()
        if slot in self._direct:
            self._gather_directly(strings, base_node, key_node, literal, field)
            self._emit(f"if {strings} is None:")
            with self._block():
                self._emit(f"{out} = False")  # no list: the filter gives null
            self._emit(f"elif {strings} is _UNGROUPED:")
            with self._block():
                self._deferred_test(out, node)
            self._emit("else:")
            with self._block():
                self._scan(out, strings, method, text)
            return out
        self._fill(slot, base_node, key_node)
        self._emit(f"if {slot} is _UNGROUPED:")
        with self._block():
            self._deferred_test(out, node)
        self._emit(f"elif {slot} is None:")
        with self._block():
            self._emit(f"{out} = False")  # no list: the filter gives null
        self._emit("else:")
        with self._block():
            bucket = self._assign(f"{slot}.get({self._literal(literal)}, ())")
            self._emit(f"if {strings} is _U:")
            with self._block():
                self._emit(f"{strings} = _strings({bucket}, {field!r})")
            self._emit(f"if {strings} is None:")
            with self._block():
                full = self._project("True", bucket, node["children"][1], rest)
                self._emit(f"{out} = True if {full} else False")
            self._emit("else:")
            with self._block():
                self._scan(out, strings, method, text)
        return out

    def _deferred_test(self, out: str, node: Node) -> None:
        """`out` = whether the filter `node`, evaluated on its own, is true."""
        plain = self._const(_Deferred(node, self._custom))
        value = self._assign(f"{plain}({_ROOT})")
        self._emit(f"{out} = True if {self._truthy(value, None)} else False")

    def _scan(self, out: str, strings: str, method: str, text: str) -> None:
        """`out` = whether some of `strings` passes the test, stopping at the first."""
        self._emit(f"{out} = False")
        each = self._tmp("s")
        needle = self._literal(text)
        found = f"{needle} in {each}" if method == "contains" else f"{each}.{method}({needle})"
        self._emit(f"for {each} in {strings}:")
        with self._block():
            self._emit(f"if {found}:")
            with self._block():
                self._emit(f"{out} = True")
                self._emit("break")

    def _gather_directly(
        self, strings: str, base_node: Node, key_node: Node, literal: Any, field: str
    ) -> None:
        """Fill `strings` (once per event) with the `field` strings of the
        elements whose key equals `literal`, in one pass over the list, for a
        group that only string tests use (the bucket itself is never needed,
        so the group is not built). None when the base is no list;
        _UNGROUPED when the key raises or gives an unexpected class, or an
        element whose key equals the literal is not a dict or its field no
        str: the test then evaluates the filter on its own."""
        base = self.node(base_node, _ROOT)
        name = f"{self._key(key_node)}\0{field}"
        gather = self._computers.get(name)
        if gather is None:
            gather = self._computers[name] = self._gatherer(key_node, field)
        self._emit(f"if {strings} is _U:")
        with self._block():
            self._emit(
                f"{strings} = {gather}({base}, {self._literal(literal)}) "
                f"if isinstance({base}, list) else None"
            )

    def _gatherer(self, key_node: Node, field: str) -> str:
        """A function `(list, literal)` for _gather_directly."""
        name, base, literal = self._tmp("_gather"), self._tmp("v"), self._tmp("l")
        out, elem, cls, text = self._tmp("s"), self._tmp("e"), self._tmp("c"), self._tmp("x")
        with self._defining(name, f"{base}, {literal}"):
            self._emit(f"{out} = []")
            self._emit("try:")
            with self._block():
                self._emit(f"for {elem} in {base}:")
                with self._block():
                    if key_node["type"] == "field":
                        self._gather_by_field(elem, key_node["value"], literal, field, out)
                    else:
                        key = self.node(key_node, elem)
                        self._emit(f"{cls} = {key}.__class__")
                        # As in _fill_group: for these classes and the grouped
                        # literals, JMESPath's equality is Python's.
                        self._emit(f"if {cls} is str or {cls} is int or {cls} is float:")
                        with self._block():
                            self._emit(f"if {key} == {literal}:")
                            with self._block():
                                self._emit(
                                    f"{text} = {elem}.get({field!r}) "
                                    f"if {elem}.__class__ is dict else None"
                                )
                                self._emit(f"if {text}.__class__ is not str:")
                                with self._block():
                                    self._emit("return _UNGROUPED")
                                self._emit(f"{out}.append({text})")
                        self._emit(f"elif {cls} not in _NEVER_EQUAL:")
                        with self._block():
                            self._emit("return _UNGROUPED")
            self._emit("except Exception:")
            with self._block():
                self._emit("return _UNGROUPED")
            self._emit(f"return {out}")
        return name

    def _gather_by_field(self, elem: str, name: str, literal: str, field: str, out: str) -> None:
        """The loop body of _gatherer for a key that is a plain field
        (`status == 'joined'`), the usual case: the element's class is
        tested once for both reads, and the key's class only when it equals
        the literal (7 of the generic body's 24 steps fewer per element).

        Exact as the generic body: a key equal to the literal must be a str,
        int or float (where JMESPath's equality is Python's); one that is
        not equal is skipped if of a JSON class (null, booleans, arrays and
        objects never equal the literal), and any other class, or a field
        read from something that is neither a dict nor null, gives up
        (_UNGROUPED: the filter's own loop then decides)."""
        key, text = self._tmp("k"), self._tmp("x")
        self._emit(f"if {elem}.__class__ is dict:")
        with self._block():
            self._emit(f"{key} = {elem}.get({name!r})")
            self._emit(f"if {key} == {literal}:")
            with self._block():
                self._emit(
                    f"if {key}.__class__ is not str and {key}.__class__ is not int "
                    f"and {key}.__class__ is not float:"
                )
                with self._block():
                    self._emit("return _UNGROUPED")
                self._emit(f"{text} = {elem}.get({field!r})")
                self._emit(f"if {text}.__class__ is not str:")
                with self._block():
                    self._emit("return _UNGROUPED")
                self._emit(f"{out}.append({text})")
            self._emit(f"elif {key}.__class__ not in _KEY_CLASSES:")
            with self._block():
                self._emit("return _UNGROUPED")
        self._emit(f"elif {elem} is not None and _field({elem}, {name!r}) is not None:")
        with self._block():
            self._emit("return _UNGROUPED")

    def _null_never_bucketed(self, key_node: Node) -> bool:
        """Whether a null element can never be in a bucket of `key`.

        A null element is bucketed when its key is a string or number. The
        key is pure, so its value on null is the same in every event: it is
        computed once, here. If that raises, or gives a value of a class the
        grouping does not know, the answer is no (though such a null element
        would in fact make the pass give up grouping).
        """
        key = self._key(key_node)
        known = self._null_keys.get(key)
        if known is None:
            try:
                parsed = parsed_result("<group key>", key_node)
                value = compile_parsed(parsed, parsed.expression, self._custom)(None)
            except Exception:  # noqa: BLE001 - any error: assume the worst
                known = False
            else:
                known = value.__class__ in _PLAN_RUNTIME["_NEVER_EQUAL"]
            self._null_keys[key] = known
        return known

    def _group_filler(self, key_node: Node) -> str:
        """A function bucketing a list's elements by `key` (None for no list)."""
        name, base, slot = self._tmp("_group"), self._tmp("v"), self._tmp("g")
        with self._defining(name, base):
            self._fill_group(slot, base, key_node)
            self._emit(f"return {slot}")
        return name

    def _fill_group(self, slot: str, base: str, key_node: Node) -> None:
        """Bucket the elements of `base` by `key` (None if it is no list)."""
        self._emit(f"if not isinstance({base}, list):")
        with self._block():
            self._emit(f"{slot} = None")
        self._emit("else:")
        with self._block():
            self._emit(f"{slot} = {{}}")
            self._emit("try:")
            with self._block():
                elem, cls, bucket = self._tmp("e"), self._tmp("c"), self._tmp("b")
                self._emit(f"for {elem} in {base}:")
                with self._block():
                    key = self.node(key_node, elem)
                    self._emit(f"{cls} = {key}.__class__")
                    self._emit(f"if {cls} is str or {cls} is int or {cls} is float:")
                    with self._block():
                        self._emit(f"{bucket} = {slot}.get({key})")
                        self._emit(f"if {bucket} is None:")
                        with self._block():
                            self._emit(f"{slot}[{key}] = [{elem}]")
                        self._emit("else:")
                        with self._block():
                            self._emit(f"{bucket}.append({elem})")
                    self._emit(f"elif {cls} not in _NEVER_EQUAL:")
                    with self._block():
                        self._emit(f"{slot} = _UNGROUPED")
                        self._emit("break")
            self._emit("except Exception:")
            with self._block():
                self._emit(f"{slot} = _UNGROUPED")


class _Deferred:
    """A filter's own search, compiled when first called (it rarely is)."""

    __slots__ = ("_node", "_functions", "_search")

    def __init__(self, node: Node, functions: Mapping[str, JMESPathFunction]) -> None:
        self._node = node
        self._functions = functions
        self._search: Callable[[Any], Any] | None = None

    def __call__(self, document: Any) -> Any:
        if self._search is None:
            parsed = parsed_result("<filter of a plan>", self._node)
            self._search = compile_parsed(parsed, parsed.expression, self._functions)
        return self._search(document)


def _root_context_nodes(tree: Node, descend: Callable[[Node], bool] | None = None) -> list[Node]:
    """The nodes of `tree` that are evaluated on the event itself; with
    `descend`, only below the nodes for which it answers true."""
    found: list[Node] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        found.append(node)
        if descend is not None and not descend(node):
            continue
        kind = node["type"]
        children = node.get("children", ())
        if kind in _CHAINS:
            # Only the first link sees the event; the rest see its result.
            stack.append(children[0])
        elif kind in _FORKS:
            # An expref's body is a separate function evaluated on other values.
            stack.extend(c for c in children if isinstance(c, dict) and c["type"] != "expref")
    return found


def _replace_filters(tree: Node, base_key: str, key: Callable[[Node], str]) -> Node:
    """`tree` with each filter over `base_key` evaluated on the event
    replaced by a null literal (a copy; `tree` is left as it is)."""
    if tree["type"] == "filter_projection" and key(tree["children"][0]) == base_key:
        return {"type": "literal", "value": None, "children": []}
    kind = tree["type"]
    children = tree.get("children")
    if not children:
        return tree
    if kind in _CHAINS:
        # Only the first link sees the event; the rest see its result.
        return {**tree, "children": [_replace_filters(children[0], base_key, key), *children[1:]]}
    if kind in _FORKS:
        return {
            **tree,
            "children": [
                _replace_filters(c, base_key, key)
                if isinstance(c, dict) and c["type"] != "expref"
                else c
                for c in children
            ],
        }
    return tree


def _field_names(node: Node) -> tuple[str, ...] | None:
    """`a` or `a.b.c` (fields only): its field names."""
    if node["type"] == "field":
        return (node["value"],)
    if node["type"] != "subexpression":
        return None
    names = []
    for child in node["children"]:
        if child["type"] != "field":
            return None
        names.append(child["value"])
    return tuple(names)


def _field_run_node(names: tuple[str, ...]) -> Node:
    """The AST jmespath gives `a` or `a.b.c`."""
    fields = [{"type": "field", "children": [], "value": name} for name in names]
    if len(fields) == 1:
        return fields[0]
    return {"type": "subexpression", "children": fields}


def _calls_nothing(node: Node) -> bool:
    """Whether no function is called anywhere in `node` (filters included)."""
    stack = [node]
    while stack:
        current = stack.pop()
        if current["type"] == "function_expression":
            return False
        stack.extend(c for c in current.get("children", ()) if isinstance(c, dict))
    return True


def _cannot_raise(node: Node) -> bool:
    kind = node["type"]
    if kind in _SAFE:
        return True
    if kind in _SAFE_CHAINS:
        return all(child["type"] in _SAFE or child["type"] == "index" for child in node["children"])
    return False


#: (literal, field, method, text) of a filter `list[?key == literal &&
#: f(field, 'text')]`: see _string_filter_shape.
_StringFilter = tuple[Any, str, str, str]

#: Nodes never worth a slot of their own.
_UNKEYED = frozenset({"literal", "identity", "current"})

#: Canonical-key prefix of a condition's test, as opposed to its value.
_TEST = "?"

#: The string tests a `_string_filter_test` knows, as Python's str method (or
#: `contains`, Python's `in`).
_STRING_TESTS = {"ends_with": "endswith", "starts_with": "startswith", "contains": "contains"}


def _string_filter_shape(
    node: Node, custom: Mapping[str, JMESPathFunction]
) -> _StringFilter | None:
    """`list[?key == literal && f(field, 'text')]` with `f` JMESPath's own
    ends_with, starts_with or contains, `field` a plain field of the element,
    and nothing projected after the filter: (literal, field, f's str
    method, text)."""
    split = _grouped_filter(node)
    if split is None or node["children"][1]["type"] != "identity":
        return None
    _, _, literal, rest = split
    if rest is None or rest["type"] != "function_expression":
        return None
    name = rest["value"]
    if name not in _STRING_TESTS or name in custom or len(rest["children"]) != 2:
        return None
    subject, needle = rest["children"]
    if subject["type"] != "field" or needle["type"] != "literal":
        return None
    if needle["value"].__class__ is not str:
        return None
    return literal, subject["value"], _STRING_TESTS[name], needle["value"]


def _grouped_filter(node: Node) -> tuple[Node, Node, Any, Node | None] | None:
    """`base[?key == literal && rest]`: (base, key, literal, rest or None)."""
    if node["type"] != "filter_projection":
        return None
    base, _, condition = node["children"]
    leftmost, path = condition, []
    while leftmost["type"] == "and_expression":
        path.append(leftmost)
        leftmost = leftmost["children"][0]
    if leftmost["type"] != "comparator" or leftmost["value"] != "eq":
        return None
    key, literal = leftmost["children"]
    if literal["type"] != "literal":
        key, literal = literal, key
    if literal["type"] != "literal" or key["type"] == "literal":
        return None
    if not set_comparable(literal["value"]):
        return None
    return base, key, literal["value"], _without_leftmost(path)


def _without_leftmost(path: list[Node]) -> Node | None:
    """The `&&` chain `path` (outermost first) with its leftmost test removed,
    the rest evaluated in the same order."""
    rest: Node | None = None
    for and_node in reversed(path):
        right = and_node["children"][1]
        rest = right if rest is None else {"type": "and_expression", "children": [rest, right]}
    return rest
