"""Event -> matcher -> throttle -> jobs: the engine's one-way data flow.

The pipeline shares its thread with everything else of the daemon (the
sources' heartbeats and socket reads, the dispatcher): `choose` matches an
event without keeping that thread longer than `MATCH_SLICE` at a time, and
`compile_plans`, a task of whoever runs the pipeline, compiles the matcher's
plans off that thread (see engine.matcher): their code is generated in a
worker thread, and Python's compile() of a large one, which would hold the
interpreter lock all along, runs in a child process (`PlanCompilerProcess`).
"""

from __future__ import annotations

import logging
import marshal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from types import CodeType, TracebackType
from typing import Any, Protocol

import anyio
import anyio.lowlevel
from anyio.abc import Process, TaskStatus
from anyio.streams.buffered import BufferedByteReceiveStream

from engine.dispatch import Dispatcher, Job
from engine.events import Event
from engine.expr.templates import to_text
from engine.loader import LoadedRules
from engine.logs import LogLimiter, shorten
from engine.matcher import LARGE_PLAN_SOURCE, PLAN_SOURCE_LIMIT, UncompiledPart
from engine.recent import RecentEvents
from engine.ruleset import CompiledRule
from engine.throttle import Throttle

log = logging.getLogger("zoomrules.pipeline")

#: Longest `choose` runs (seconds) before it lets the event loop run: rules
#: not compiled yet, or many of them, can take far longer for one event.
MATCH_SLICE = 0.02
_TURNS_PER_PAUSE = 3
#: A throttle key that could not be evaluated.
_NO_KEY = object()


class SharedThrottles(Protocol):
    """Throttle windows shared by a cluster's nodes (`engine.shared_limits`)."""

    async def allow(self, rule: str, key: object, limit: int, per: float, occurrence: str) -> bool:
        """Record a firing of `rule` for `key` by the event `occurrence` unless
        the window is full; the same occurrence is allowed again (an event
        matched a second time after its node died)."""
        ...


@dataclass
class PipelineStats:
    events: int = 0
    throttled: Counter[str] = field(default_factory=Counter)
    throttle_key_errors: Counter[str] = field(default_factory=Counter)


class Pipeline:
    """Matches each event and hands the resulting jobs to the dispatcher.

    `rules` may be swapped at any time (SIGHUP reload); an event already
    being matched finishes with the rules it started with.
    """

    def __init__(
        self,
        rules: LoadedRules,
        dispatcher: Dispatcher,
        *,
        shared_throttles: SharedThrottles | None = None,
    ) -> None:
        self.rules = rules
        self.dispatcher = dispatcher
        #: In a cluster, `choose` throttles in windows every node shares.
        self.shared_throttles = shared_throttles
        self.stats = PipelineStats()
        #: The last events matched, when kept (`keep_recent`: the status page).
        self.recent: RecentEvents | None = None
        #: Per-event lines that a flood could repeat are rate-limited.
        self._logs = LogLimiter(log)
        #: When `choose` must next let the event loop run (time.perf_counter).
        self._deadline = 0.0
        #: Set when the matcher wants plans compiled (`compile_plans`).
        self._plans_wanted: anyio.Event | None = None
        #: Set (and replaced) whenever `compile_plans` installed something or
        #: went idle.
        self._plans_changed: anyio.Event | None = None

    def replace_rules(self, rules: LoadedRules) -> None:
        # Keep throttle windows of rules that survive a reload, so a reload
        # does not reset rate limits.
        for name, throttle in self.rules.throttles.items():
            fresh = rules.throttles.get(name)
            if fresh is not None and (fresh.limit, fresh.per) == (throttle.limit, throttle.per):
                rules.throttles[name] = throttle
        self.rules = rules

    def keep_recent(self, size: int) -> RecentEvents:
        """Keep the last `size` events matched, with the rules each fired and
        their actions' outcomes (see engine.recent); returns where."""
        if self.recent is None:
            self.recent = RecentEvents(size)
            self.dispatcher.recorder = self.recent.record
        return self.recent

    def select(self, event: Event) -> list[CompiledRule]:
        """The rules that fire for `event` after throttling.

        Compiles the matcher's plan for the event's name here and now when
        there is none yet (`choose` does not)."""
        rules = self.rules
        self.stats.events += 1
        found = rules.matcher.match_event(event)
        fired = self._throttled(rules, event, found)
        if self.recent is not None:
            self.recent.add(event, rules, found, fired)
        return fired

    async def choose(self, event: Event) -> list[CompiledRule]:
        """`select`, letting the event loop run at least every `MATCH_SLICE`
        seconds (counting the caller's time since the last time it did).

        Rules whose plan is not compiled yet are evaluated in turn, which is
        exact but slower, while `compile_plans` compiles it."""
        rules = self.rules
        self.stats.events += 1
        matcher = rules.matcher
        found = matcher.matching(event)
        if found.__class__ is not list:
            matching: Any = found
            while not matching.run(self._deadline):
                await self._pause()
            found = matching.fired
            if matcher.wants_work and self._plans_wanted is not None:
                self._plans_wanted.set()
        if time.perf_counter() > self._deadline:
            await self._pause()
        if self.shared_throttles is not None and found and rules.throttles:
            fired = await self._shared_throttled(rules, event, found, self.shared_throttles)
        else:
            fired = self._throttled(rules, event, found)
        if self.recent is not None:
            self.recent.add(event, rules, found, fired)
        return fired

    async def _pause(self) -> None:
        # A task whose sleep is over, or whose socket has data, is woken in
        # two turns of the event loop (the timer or the I/O callback sets a
        # future, whose callback schedules the task): this task yields for
        # three turns so that such a task runs now, not after its next slice.
        for _ in range(_TURNS_PER_PAUSE):
            await anyio.lowlevel.checkpoint()
        self._deadline = time.perf_counter() + MATCH_SLICE

    def _throttled(
        self, rules: LoadedRules, event: Event, fired: list[CompiledRule]
    ) -> list[CompiledRule]:
        if not fired or not rules.throttles:
            return fired
        root = event.root()
        return [
            rule
            for rule in fired
            if self._allowed(rule, event, root, rules.throttles.get(rule.name))
        ]

    def _allowed(
        self, rule: CompiledRule, event: Event, root: dict[str, Any], throttle: Throttle | None
    ) -> bool:
        if throttle is None or rule.throttle_key is None:
            return True
        key = self._throttle_key(rule, event, root)
        if key is _NO_KEY or throttle.allow(key):
            return True
        self._said_throttled(rule, event, key)
        return False

    async def _shared_throttled(
        self,
        rules: LoadedRules,
        event: Event,
        fired: list[CompiledRule],
        shared: SharedThrottles,
    ) -> list[CompiledRule]:
        root = event.root()
        allowed = []
        for rule in fired:
            throttle = rules.throttles.get(rule.name)
            if throttle is None or rule.throttle_key is None:
                allowed.append(rule)
                continue
            key = self._throttle_key(rule, event, root)
            if key is _NO_KEY or await shared.allow(
                rule.name, key, throttle.limit, throttle.per, event.id
            ):
                allowed.append(rule)
            else:
                self._said_throttled(rule, event, key)
        return allowed

    def _throttle_key(self, rule: CompiledRule, event: Event, root: dict[str, Any]) -> object:
        """The rule's throttle key for the event, or `_NO_KEY` when it failed
        (then the firing is not throttled: a bad key must not drop it silently)."""
        assert rule.throttle_key is not None
        try:
            return rule.throttle_key(root)
        except Exception as exc:  # noqa: BLE001 - said, and not throttled
            self.stats.throttle_key_errors[rule.name] += 1
            self._logs.log(
                logging.WARNING,
                ("key failed", rule.name),
                "throttle key of rule %r failed on %s: %s; not throttled",
                rule.name, event.name, shorten(str(exc)),
            )  # fmt: skip
            return _NO_KEY

    def _said_throttled(self, rule: CompiledRule, event: Event, key: object) -> None:
        self.stats.throttled[rule.name] += 1
        self._logs.log(
            logging.INFO,
            ("throttled", rule.name),
            "rule %r throttled for key %r",
            rule.name, shorten(to_text(key), 100),
            extra={"rule": rule.name, "event": event.name},
        )  # fmt: skip

    async def handle(self, event: Event) -> int:
        """Match `event` and submit its jobs (waits while the dispatcher is full)."""
        fired = await self.choose(event)
        for rule in fired:
            await self.dispatcher.submit(Job(event, rule))
        return len(fired)

    # -- compiling plans ------------------------------------------------------

    async def compile_plans(
        self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Compile the plans `choose` found missing, one part at a time, for
        the rules in use; runs until cancelled.

        Whoever runs the pipeline runs this as a task alongside it. A part's
        source is generated in a worker thread, and compiled there too when
        it is small (engine.matcher.PLAN_SOURCE_LIMIT: Python's compile()
        holds the interpreter lock while it runs, stopping the event loop);
        a larger one is compiled by a `PlanCompilerProcess`, or, without
        one, generated again in parts small enough for the thread. A part
        being generated when the task is cancelled is finished first."""
        self._plans_wanted = anyio.Event()
        self._plans_changed = anyio.Event()
        async with PlanCompilerProcess() as child:
            task_status.started()
            while True:
                work = self.rules.matcher.plan_work()
                if work is None:
                    self._plans_progressed()
                    await self._plans_wanted.wait()
                    self._plans_wanted = anyio.Event()
                    continue
                limit = PLAN_SOURCE_LIMIT if child.unavailable else LARGE_PLAN_SOURCE
                result = await anyio.to_thread.run_sync(work.run, limit)
                if isinstance(result, UncompiledPart):
                    try:
                        code = await child.compile(result.source, result.filename)
                    except PlanCompilerLost:
                        continue  # the same work again, in parts small enough for a thread
                    except (SyntaxError, RecursionError, MemoryError) as exc:
                        work.failed(result, exc)
                        continue
                    work.install(result.finish(code))
                else:
                    work.install(result)
                self._plans_progressed()

    def _plans_progressed(self) -> None:
        changed, self._plans_changed = self._plans_changed, anyio.Event()
        if changed is not None:
            changed.set()

    async def wait_plans_compiled(self) -> None:
        """Wait until `compile_plans` has compiled every plan asked for so
        far (for tests: it must be running)."""
        while self.rules.matcher.wants_work:
            changed = self._plans_changed
            assert changed is not None, "compile_plans is not running"
            await changed.wait()


class PlanCompilerLost(Exception):
    """The plan compiler process could not be started or died."""


#: The plan compiler process: compiles what it reads, answers with the code
#: (marshal) or the error. Frames: 8-byte big-endian length, then the bytes.
_CHILD = r"""
import marshal, signal, sys
for name in ("SIGINT", "SIGTERM", "SIGHUP"):
    signal.signal(getattr(signal, name), signal.SIG_IGN)
read, out = sys.stdin.buffer.read, sys.stdout.buffer
while True:
    head = read(8)
    if len(head) < 8:
        break
    body = read(int.from_bytes(head, "big"))
    filename, _, source = body.partition(b"\0")
    try:
        code = compile(source.decode("utf-8", "surrogatepass"), filename.decode(), "exec")
        answer = b"+" + marshal.dumps(code)
    except (SyntaxError, RecursionError, MemoryError, ValueError) as exc:
        answer = b"-" + type(exc).__name__.encode() + b"\0" + str(exc).encode(errors="replace")
    out.write(len(answer).to_bytes(8, "big") + answer)
    out.flush()
"""
_ERRORS: dict[str, type[Exception]] = {
    "SyntaxError": SyntaxError,
    "RecursionError": RecursionError,
    "MemoryError": MemoryError,
}


class PlanCompilerProcess:
    """Python's compile() in a child process (`python -I -c ...`), started
    at the first use: compiling a large generated plan holds the interpreter
    lock for as long as it takes (0.35 s for 1,000 rules), which would stop
    the event loop, while loading the code it gives (marshal) takes about
    1% of that.

    The child imports nothing but the standard library, ignores SIGINT,
    SIGTERM and SIGHUP (a signal meant for the daemon, such as systemd's to
    every process of the service, is the daemon's to handle) and exits when
    its input is closed: at the end of `async with`, or when the daemon dies.
    If it cannot be started or dies, `compile` raises PlanCompilerLost and
    `unavailable` is true from then on.
    """

    def __init__(self) -> None:
        self._process: Process | None = None
        self._answers: BufferedByteReceiveStream | None = None
        #: A request was sent and its answer not read (yet).
        self._busy = False
        self.unavailable = False

    async def __aenter__(self) -> PlanCompilerProcess:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        with anyio.CancelScope(shield=True):
            if self._busy:  # cancelled while it compiles: its answer is of no use
                process.kill()
            with anyio.move_on_after(2):
                try:
                    if process.stdin is not None:
                        await process.stdin.aclose()
                    await process.wait()
                except OSError:
                    pass
            if process.returncode is None:
                process.kill()
            await process.aclose()

    async def compile(self, source: str, filename: str) -> CodeType:
        """`compile(source, filename, "exec")`, in the child; its
        SyntaxError, RecursionError or MemoryError is raised here."""
        if self.unavailable:
            raise PlanCompilerLost("no plan compiler process")
        try:
            if self._process is None:
                self._process = await anyio.open_process(
                    [sys.executable, "-I", "-c", _CHILD],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                )
                assert self._process.stdout is not None
                self._answers = BufferedByteReceiveStream(self._process.stdout)
            process, answers = self._process, self._answers
            assert process.stdin is not None and answers is not None
            frame = filename.encode() + b"\0" + source.encode("utf-8", "surrogatepass")
            self._busy = True
            await process.stdin.send(len(frame).to_bytes(8, "big") + frame)
            head = await answers.receive_exactly(8)
            answer = await answers.receive_exactly(int.from_bytes(head, "big"))
            self._busy = False
        except (OSError, anyio.BrokenResourceError, anyio.EndOfStream, anyio.IncompleteRead) as exc:
            self.unavailable = True
            log.warning(
                "the plan compiler process is gone (%s): compiling plans in smaller parts "
                "in a thread from now on",
                exc or type(exc).__name__,
            )
            await self.aclose()
            raise PlanCompilerLost(str(exc)) from None
        if answer[:1] == b"+":
            code: CodeType = marshal.loads(answer[1:])
            return code
        kind, _, message = answer[1:].partition(b"\0")
        raise _ERRORS.get(kind.decode(), ValueError)(message.decode(errors="replace"))
