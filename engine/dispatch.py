"""Running actions: order within a rule, concurrency across rules, timeouts, retries.

One *job* is one rule firing on one event: its actions run in order. Jobs
for different events and rules run concurrently, at most `max_concurrency`
at a time; `submit` waits for a free slot, which is how backpressure
reaches the event source. An action that exceeds its timeout is cancelled
(its plugin cleans up, e.g. kills a process group); a failed attempt is
retried with capped exponential backoff and full jitter, honouring a
target's `retry_after`. A failure is logged with rule, action index, event
and error, and never blocks other jobs.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.abc import TaskStatus

from engine.clock import loop_clock
from engine.errors import ActionError, ActionFailed, ParamTypeError
from engine.events import META_KEY, Event
from engine.hookspecs import ActionContext
from engine.logs import LogLimiter, shorten
from engine.retry import backoff_delay
from engine.ruleset import CompiledAction, CompiledRule
from engine.services import Services
from engine.timings import Timings

log = logging.getLogger("zoomrules.dispatch")


@dataclass
class Job:
    """One rule firing on one event."""

    event: Event
    rule: CompiledRule
    #: Index of the first action to run (a resumed job skips finished ones).
    start_at: int = 0
    #: Journal row id, when a journal is in use.
    id: int | None = None
    #: A temporal rule's firing: what its actions see under `zoomrules`
    #: besides the event's metadata (the opening event, lateness, ...).
    context: dict[str, Any] | None = None


@dataclass(slots=True)
class ActionStats:
    """What the actions of one type in one rule did (every attempt ends as
    one of `ok`, `failed` or `retries`)."""

    ok: int = 0
    failed: int = 0
    #: Failed attempts that were retried.
    retries: int = 0
    #: From each action's first attempt to its outcome (retries included).
    durations: Timings = field(default_factory=Timings)


@dataclass
class DispatchStats:
    jobs_started: int = 0
    jobs_done: int = 0
    jobs_failed: int = 0
    actions_ok: int = 0
    actions_failed: int = 0
    retries: int = 0
    fired_by_rule: Counter[str] = field(default_factory=Counter)
    failed_by_rule: Counter[str] = field(default_factory=Counter)
    #: Per (action type, rule name).
    actions: dict[tuple[str, str], ActionStats] = field(default_factory=dict)
    #: Rule name -> when it last fired (epoch seconds: its last job submitted).
    last_fired: dict[str, float] = field(default_factory=dict)

    def action(self, action_type: str, rule: str) -> ActionStats:
        """The statistics of `action_type` in `rule` (created at first use)."""
        key = (action_type, rule)
        found = self.actions.get(key)
        if found is None:
            found = self.actions[key] = ActionStats()
        return found


#: Called after each action attempt sequence ends:
#: (job, action index, error or None, attempts).
ActionObserver = Callable[[Job, int, "ActionFailed | None", int], Awaitable[None]]
#: The same, called without waiting (for bookkeeping that must cost next to nothing).
ActionRecorder = Callable[[Job, int, "ActionFailed | None", int], None]


class _Lane:
    """Where one worker (or one direct `run_job` call) runs its action attempts.

    Timeouts cost neither a cancel scope nor a timer per attempt: the lane's
    cancel scope lasts for as many attempts as finish in time, each attempt
    stores its deadline here, and the dispatcher's timer task cancels the
    scope of a lane whose attempt is past its deadline. That cancellation
    unwinds the lane's stack up to the scope; what the job had done so far
    lives in its `_Run`, so it goes on from there in a fresh scope. (A cancel
    scope with a deadline entered and left per attempt cost about 15 µs on
    the benchmark machine: more than everything else the dispatcher does
    for an action.)
    """

    __slots__ = ("deadline", "run", "scope")

    def __init__(self) -> None:
        #: Of the attempt in flight; only finite while it is awaited.
        self.deadline = math.inf
        self.scope = anyio.CancelScope()
        #: The job it runs, if any (`Dispatcher.oldest_received_at`).
        self.run: _Run | None = None


class _Spent(Exception):
    """The lane's scope was cancelled just as an attempt returned: go on in a fresh one."""


@dataclass(slots=True, eq=False)
class _Run:
    """One job's progress through its actions (survives its lane's scope)."""

    job: Job
    root: dict[str, Any]
    meta: dict[str, Any]
    index: int
    attempt: int = 0
    #: `ActionContext.state` of the current action, kept across its attempts.
    state: dict[str, Any] = field(default_factory=dict)
    ok: bool = True
    #: How the attempt in flight ended when that was settled outside its
    #: lane's scope: (True, result) or (False, _Failure).
    outcome: tuple[bool, Any] | None = None
    #: When the current action's first attempt started (the loop's clock).
    action_started: float = 0.0


class Dispatcher:
    def __init__(
        self,
        services: Services,
        *,
        max_concurrency: int = 32,
        backoff: float = 1.0,
        backoff_cap: float = 60.0,
        observer: ActionObserver | None = None,
    ) -> None:
        self.services = services
        self.backoff = backoff
        self.backoff_cap = backoff_cap
        self.observer = observer
        #: Told of each action's end too, synchronously (the status page's
        #: `engine.recent.RecentEvents.record`).
        self.recorder: ActionRecorder | None = None
        self.stats = DispatchStats()
        self.max_concurrency = max_concurrency
        # A fixed pool of workers pulls jobs from a short queue: cheaper than
        # a task per job, and `submit` waits while `max_concurrency` jobs are
        # queued or running, which is the backpressure the source feels. A
        # worker takes the next queued job as soon as it has finished one, so
        # under load one wake-up serves many jobs. Idle workers are woken one
        # at a time: by `submit` when no woken worker is on its way, and by a
        # woken worker that leaves jobs queued behind the one it takes (so
        # jobs that wait on I/O still get a worker each, while jobs that
        # never wait are run by one worker without waking the others; one
        # event for all idle workers woke every one of them for each job).
        self._queue: deque[Job] = deque()
        self._outstanding = 0  # queued + running
        self._sleepers: deque[anyio.Event] = deque()  # one per idle worker
        self._woken = 0  # workers woken for queued jobs and not running yet
        # Set when a job finishes, for whoever waits; created by the first
        # waiter, so a job costs no event unless somebody waits.
        self._space: anyio.Event | None = None  # submit, when max_concurrency are outstanding
        self._idle: anyio.Event | None = None  # wait_idle
        self._started = False
        # Timeouts (see _Lane): the timer task sleeps until `_timer_at`, the
        # earliest deadline it knows of; an attempt with an earlier deadline
        # leaves it in `_timer_hint` and wakes it.
        self._lanes: set[_Lane] = set()
        self._timer_at = math.inf
        self._timer_hint = math.inf
        self._timer_wake = anyio.Event()
        self._clock = anyio.current_time
        #: Failures repeat in floods (a target down for every job): summarised.
        self._logs = LogLimiter(log, burst=10)
        #: Whether INFO lines (a firing, an action's success) are logged at all,
        #: read when the workers start: two per job cost time when nobody reads them.
        self._info = False

    async def run(self, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run the workers; returns when cancelled (jobs in flight are cancelled)."""
        self._clock = loop_clock()
        self._info = log.isEnabledFor(logging.INFO)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._timer)
            for _ in range(self.max_concurrency):
                tg.start_soon(self._worker)
            self._started = True
            task_status.started()
        self._started = False

    @property
    def in_flight(self) -> int:
        """Jobs queued or running."""
        return self._outstanding

    def oldest_received_at(self) -> float | None:
        """When the event of the oldest job queued or running was received
        (epoch seconds); None without any. A job waiting to retry is running."""
        jobs = [job.event.received_at for job in self._queue]
        jobs.extend(lane.run.job.event.received_at for lane in self._lanes if lane.run is not None)
        return min(jobs, default=None)

    async def submit(self, job: Job) -> None:
        """Queue `job`; waits while `max_concurrency` jobs are queued or running."""
        if not self._started:
            raise RuntimeError("Dispatcher.run() is not running")
        while self._outstanding >= self.max_concurrency:
            if self._space is None:
                self._space = anyio.Event()
            await self._space.wait()
        self._outstanding += 1
        self.stats.jobs_started += 1
        self.stats.fired_by_rule[job.rule.name] += 1
        self.stats.last_fired[job.rule.name] = time.time()
        self._queue.append(job)
        if not self._woken and self._sleepers:
            self._wake_one()

    async def wait_idle(self) -> None:
        """Wait until no job is queued or running."""
        while self._outstanding:
            if self._idle is None:
                self._idle = anyio.Event()
            await self._idle.wait()

    async def run_job(self, job: Job) -> bool:
        """Run the rule's actions in order; True when every action succeeded.

        The workers run every job this way; called directly, it runs in the
        caller's task (the dispatcher must be running: its timer enforces
        the actions' timeouts).
        """
        if not self._started:
            raise RuntimeError("Dispatcher.run() is not running")
        lane = _Lane()
        self._lanes.add(lane)
        run = lane.run = self._begin(job)
        try:
            while True:
                lane.scope = anyio.CancelScope()
                try:
                    with lane.scope:
                        return await self._advance(run, lane)
                except _Spent:
                    continue
                if lane.scope.cancelled_caught:
                    run.outcome = (False, self._timed_out(run))
        finally:
            self._lanes.discard(lane)

    # -- workers --------------------------------------------------------------

    async def _worker(self) -> None:
        lane = _Lane()
        self._lanes.add(lane)
        queue = self._queue
        run: _Run | None = None
        try:
            while True:
                lane.scope = anyio.CancelScope()
                try:
                    with lane.scope:
                        while True:
                            if run is None:
                                while not queue:
                                    await self._sleep()
                                run = lane.run = self._begin(queue.popleft())
                                if queue and not self._woken and self._sleepers:
                                    self._wake_one()
                            await self._advance(run, lane)
                            run = lane.run = None
                            self._job_finished()
                except _Spent:
                    continue
                if lane.scope.cancelled_caught:
                    assert run is not None
                    run.outcome = (False, self._timed_out(run))
        finally:
            self._lanes.discard(lane)
            if run is not None:  # cancelled mid-job: the dispatcher is stopping
                self._job_finished()

    def _wake_one(self) -> None:
        self._woken += 1
        self._sleepers.popleft().set()

    async def _sleep(self) -> None:
        """Wait until `submit` wakes this worker for a queued job."""
        wake = anyio.Event()
        self._sleepers.append(wake)
        try:
            await wake.wait()
        finally:
            if wake.is_set():
                self._woken -= 1
            else:  # cancelled while idle
                self._sleepers.remove(wake)

    def _job_finished(self) -> None:
        self._outstanding -= 1
        if self._space is not None:
            self._space.set()
            self._space = None
        if not self._outstanding and self._idle is not None:
            self._idle.set()
            self._idle = None

    async def _timer(self) -> None:
        """Cancel the lanes whose attempt in flight is past its deadline."""
        while True:
            self._timer_wake = anyio.Event()
            now = self._clock()
            earliest = self._timer_hint if self._timer_hint > now else math.inf
            self._timer_hint = math.inf
            for lane in self._lanes:
                deadline = lane.deadline
                if deadline <= now:
                    lane.deadline = math.inf
                    lane.scope.cancel()
                elif deadline < earliest:
                    earliest = deadline
            self._timer_at = earliest
            with anyio.CancelScope(deadline=earliest):
                await self._timer_wake.wait()

    # -- one job --------------------------------------------------------------

    def _begin(self, job: Job) -> _Run:
        meta = job.event.metadata()  # a fresh dict: this job's own
        if job.context is not None:
            meta.update(job.context)
        meta["rule"] = job.rule.name
        meta["results"] = [None] * job.start_at
        meta["previous"] = None
        if self._info:
            resumed = f" (resumed at action {job.start_at + 1})" if job.start_at else ""
            log.info(
                "rule %r fired on %s (event %s)%s",
                job.rule.name, job.event.name, meta["event_id"], resumed,
                extra={"rule": job.rule.name, "event": job.event.name,
                       "event_id": meta["event_id"], "job_id": job.id},
            )  # fmt: skip
        return _Run(job, {**job.event.body, META_KEY: meta}, meta, job.start_at)

    async def _advance(self, run: _Run, lane: _Lane) -> bool:
        """Run the job's actions from where `run` stands; True when every one succeeded.

        An attempt that times out ends this call with CancelledError, caught
        by the lane's scope: the caller records the timeout in `run.outcome`
        and calls again, as it does after _Spent.
        """
        actions = run.job.rule.actions
        while run.index < len(actions):
            action = actions[run.index]
            outcome = run.outcome
            if outcome is None:
                outcome = await self._attempt(run, action, lane)
            run.outcome = None
            succeeded, value = outcome
            if succeeded:
                if self.observer is not None:
                    await self.observer(run.job, run.index, None, run.attempt)
                self._action_finished(run, action, value, None)
                continue
            if value.retryable and run.attempt <= (action.spec.retries or 0):
                await self._retry_later(run, action, value)
                continue
            error = ActionFailed(value.message, run.attempt)
            if self.observer is not None:
                await self.observer(run.job, run.index, error, run.attempt)
            self._action_finished(run, action, None, error)
            if not action.spec.continue_on_error:
                break
        if run.ok:
            self.stats.jobs_done += 1
        else:
            self.stats.jobs_failed += 1
        return run.ok

    async def _attempt(self, run: _Run, action: CompiledAction, lane: _Lane) -> tuple[bool, Any]:
        """One attempt at the current action: (True, result) or (False, _Failure)."""
        run.attempt += 1
        if run.attempt == 1:
            run.action_started = self._clock()
        job = run.job
        ctx = ActionContext(
            event=job.event, rule=job.rule.name, action_index=run.index, attempt=run.attempt,
            root=run.root, services=self.services, log=log, state=run.state,
        )  # fmt: skip
        try:
            params = action.render(run.root)
        except ParamTypeError as exc:
            return False, _Failure(str(exc), retryable=False)
        except Exception as exc:  # noqa: BLE001 - a template error is this event's problem
            return False, _Failure(
                f"rendering parameters: {type(exc).__name__}: {exc}", retryable=False
            )
        timeout = action.spec.timeout
        if timeout:
            lane.deadline = deadline = self._clock() + timeout
            if deadline < self._timer_at:
                self._timer_hint = min(self._timer_hint, deadline)
                self._timer_wake.set()
        outcome: tuple[bool, Any]
        try:
            outcome = True, await action.action_type.run(params, ctx)
        except ActionError as exc:
            outcome = False, _Failure(str(exc), exc.retryable, exc.retry_after)
        except Exception as exc:  # noqa: BLE001 - plugin bugs must not kill the daemon
            outcome = False, _Failure(f"{type(exc).__name__}: {exc}", retryable=True)
        finally:
            lane.deadline = math.inf
        if lane.scope.cancel_called:
            # The deadline passed as the attempt returned: its outcome stands
            # (as it would with a scope whose cancellation never reached the
            # action), but this scope is cancelled: go on in a fresh one.
            run.outcome = outcome
            raise _Spent
        return outcome

    @staticmethod
    def _timed_out(run: _Run) -> _Failure:
        timeout = run.job.rule.actions[run.index].spec.timeout
        return _Failure(f"timed out after {timeout:g}s", retryable=True)

    async def _retry_later(self, run: _Run, action: CompiledAction, failure: _Failure) -> None:
        job, retries = run.job, action.spec.retries or 0
        delay = max(
            failure.retry_after or 0.0,
            backoff_delay(run.attempt, self.backoff, self.backoff_cap),
        )
        self.stats.retries += 1
        self.stats.action(action.spec.type, job.rule.name).retries += 1
        # One line per failed attempt; the same failure over and over (a
        # target down for everyone) is summarised with counts.
        self._logs.log(
            logging.WARNING,
            ("attempt", job.rule.name, run.index, failure.message[:200]),
            "rule %r action %d (%s) attempt %d/%d failed on %s: %s; retrying in %.2fs",
            job.rule.name, run.index + 1, action.spec.type, run.attempt, retries + 1,
            job.event.name, shorten(failure.message, 300), delay,
            extra={"rule": job.rule.name, "action_index": run.index + 1, "event": job.event.name},
        )  # fmt: skip
        await anyio.sleep(delay)

    def _action_finished(
        self, run: _Run, action: CompiledAction, result: Any, error: ActionFailed | None
    ) -> None:
        """Record the current action's outcome (reported to the observer) and move on."""
        job, index = run.job, run.index
        meta = run.meta
        meta["results"].append(result)
        meta["previous"] = result
        attempts = run.attempt
        run.index += 1
        run.attempt = 0
        run.state = {}
        took = self._clock() - run.action_started
        stats = self.stats.action(action.spec.type, job.rule.name)
        stats.durations.observe(took)
        if self.recorder is not None:
            self.recorder(job, index, error, attempts)
        if error is None:
            self.stats.actions_ok += 1
            stats.ok += 1
            if self._info:
                log.info(
                    "rule %r action %d (%s) ok in %.0fms (%d attempt(s))",
                    job.rule.name, index + 1, action.spec.type, took * 1000, attempts,
                    extra={"rule": job.rule.name, "action_index": index + 1,
                           "action": action.spec.type, "event_id": job.event.id},
                )  # fmt: skip
            return
        run.ok = False
        self.stats.actions_failed += 1
        stats.failed += 1
        self.stats.failed_by_rule[job.rule.name] += 1
        dead = ""
        if job.id is not None and not action.spec.continue_on_error:
            dead = f"; dead letter {job.id}: `zoomrules dlq show {job.id}`"
        self._logs.log(
            logging.ERROR,
            ("failed", job.rule.name, index, str(error)[:200]),
            "rule %r action %d (%s) failed on %s %s after %d attempt(s) in %.1fs: %s%s",
            job.rule.name, index + 1, action.spec.type, job.event.name, job.event.id,
            error.attempts, took, shorten(str(error), 300), dead,
            extra={
                "rule": job.rule.name, "action_index": index + 1, "action": action.spec.type,
                "event": job.event.name, "event_id": job.event.id, "job_id": job.id,
            },
        )  # fmt: skip


class _Failure(Exception):
    def __init__(self, message: str, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.retry_after = retry_after
