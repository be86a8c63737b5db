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
import random
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.abc import TaskStatus

from engine.events import META_KEY, Event
from engine.hookspecs import ActionContext, ActionError
from engine.ruleset import CompiledAction, CompiledRule, ParamTypeError
from engine.services import Services

log = logging.getLogger("zoomrules.dispatch")


class ActionFailed(Exception):
    """An action that failed for good (retries exhausted or not retryable)."""

    def __init__(self, message: str, attempts: int) -> None:
        super().__init__(message)
        self.attempts = attempts


@dataclass
class Job:
    """One rule firing on one event."""

    event: Event
    rule: CompiledRule
    #: Index of the first action to run (a resumed job skips finished ones).
    start_at: int = 0
    #: Journal row id, when a journal is in use.
    id: int | None = None


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


#: Called after each action attempt sequence ends:
#: (job, action index, error or None, attempts).
ActionObserver = Callable[[Job, int, "ActionFailed | None", int], Awaitable[None]]


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**(attempt-1))]."""
    return random.uniform(0, min(cap, base * (2 ** (attempt - 1))))


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
        self.stats = DispatchStats()
        self.max_concurrency = max_concurrency
        # A fixed pool of workers pulls jobs from a short queue: cheaper than
        # a task per job, and `submit` waits while `max_concurrency` jobs are
        # queued or running, which is the backpressure the source feels.
        self._queue: deque[Job] = deque()
        self._outstanding = 0  # queued + running
        self._idle_workers = 0
        self._work = anyio.Event()
        self._space = anyio.Event()
        self._idle = anyio.Event()
        self._idle.set()
        self._started = False

    async def run(self, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run the workers; returns when cancelled (jobs in flight are cancelled)."""
        async with anyio.create_task_group() as tg:
            for _ in range(self.max_concurrency):
                tg.start_soon(self._worker)
            self._started = True
            task_status.started()
        self._started = False

    @property
    def in_flight(self) -> int:
        """Jobs queued or running."""
        return self._outstanding

    async def submit(self, job: Job) -> None:
        """Queue `job`; waits while `max_concurrency` jobs are queued or running."""
        if not self._started:
            raise RuntimeError("Dispatcher.run() is not running")
        while self._outstanding >= self.max_concurrency:
            if self._space.is_set():
                self._space = anyio.Event()
            await self._space.wait()
        self._outstanding += 1
        if self._idle.is_set():
            self._idle = anyio.Event()
        self.stats.jobs_started += 1
        self.stats.fired_by_rule[job.rule.name] += 1
        self._queue.append(job)
        if self._idle_workers:
            self._work.set()

    async def wait_idle(self) -> None:
        """Wait until no job is queued or running."""
        while self._outstanding:
            await self._idle.wait()

    async def _next_job(self) -> Job:
        while not self._queue:
            if self._work.is_set():
                self._work = anyio.Event()
            self._idle_workers += 1
            try:
                await self._work.wait()
            finally:
                self._idle_workers -= 1
        return self._queue.popleft()

    async def _worker(self) -> None:
        while True:
            job = await self._next_job()
            try:
                await self.run_job(job)
            finally:
                self._outstanding -= 1
                self._space.set()
                if not self._outstanding:
                    self._idle.set()

    async def run_job(self, job: Job) -> bool:
        """Run the rule's actions in order; True when every action succeeded."""
        meta: dict[str, Any] = {
            **job.event.metadata(),
            "rule": job.rule.name,
            "results": [],
            "previous": None,
        }
        root = {**job.event.body, META_KEY: meta}
        ok = True
        for index, action in enumerate(job.rule.actions):
            if index < job.start_at:
                meta["results"].append(None)
                continue
            error: ActionFailed | None = None
            attempts = 0
            try:
                result, attempts = await self._run_action(job, index, action, root)
            except ActionFailed as exc:
                error, attempts, result = exc, exc.attempts, None
            if self.observer is not None:
                await self.observer(job, index, error, attempts)
            meta["results"].append(result)
            meta["previous"] = result
            if error is None:
                self.stats.actions_ok += 1
                continue
            ok = False
            self.stats.actions_failed += 1
            self.stats.failed_by_rule[job.rule.name] += 1
            log.error(
                "rule %r action %d (%s) failed on %s %s after %d attempt(s): %s",
                job.rule.name, index + 1, action.spec.type, job.event.name, job.event.id,
                attempts, error,
                extra={
                    "rule": job.rule.name, "action_index": index + 1, "action": action.spec.type,
                    "event": job.event.name, "event_id": job.event.id,
                },
            )  # fmt: skip
            if not action.spec.continue_on_error:
                break
        if ok:
            self.stats.jobs_done += 1
        else:
            self.stats.jobs_failed += 1
        return ok

    async def _run_action(
        self, job: Job, index: int, action: CompiledAction, root: dict[str, Any]
    ) -> tuple[Any, int]:
        state: dict[str, Any] = {}
        retries = action.spec.retries or 0
        attempt = 0
        while True:
            attempt += 1
            ctx = ActionContext(
                event=job.event, rule=job.rule.name, action_index=index, attempt=attempt,
                root=root, services=self.services, log=log, state=state,
            )  # fmt: skip
            try:
                return await self._attempt(action, ctx), attempt
            except _Failure as failure:
                if not failure.retryable or attempt > retries:
                    raise ActionFailed(failure.message, attempt) from None
                delay = max(
                    failure.retry_after or 0.0,
                    backoff_delay(attempt, self.backoff, self.backoff_cap),
                )
                self.stats.retries += 1
                log.warning(
                    "rule %r action %d (%s) attempt %d/%d failed on %s: %s; retrying in %.2fs",
                    job.rule.name, index + 1, action.spec.type, attempt, retries + 1,
                    job.event.name, failure.message, delay,
                    extra={"rule": job.rule.name, "action_index": index + 1, "event": job.event.name},
                )  # fmt: skip
                await anyio.sleep(delay)

    async def _attempt(self, action: CompiledAction, ctx: ActionContext) -> Any:
        try:
            params = action.render(ctx.root)
        except ParamTypeError as exc:
            raise _Failure(str(exc), retryable=False) from None
        except Exception as exc:  # noqa: BLE001 - a template error is this event's problem
            raise _Failure(
                f"rendering parameters: {type(exc).__name__}: {exc}", retryable=False
            ) from None
        timeout = action.spec.timeout or math.inf
        try:
            # A bare cancel scope with a deadline (what fail_after wraps, minus
            # its generator overhead, which shows on this hot path).
            with anyio.CancelScope(deadline=anyio.current_time() + timeout) as scope:
                result = await action.action_type.run(params, ctx)
        except ActionError as exc:
            raise _Failure(str(exc), exc.retryable, exc.retry_after) from None
        except Exception as exc:  # noqa: BLE001 - plugin bugs must not kill the daemon
            raise _Failure(f"{type(exc).__name__}: {exc}", retryable=True) from None
        if scope.cancelled_caught:
            raise _Failure(f"timed out after {timeout:g}s", retryable=True)
        return result


class _Failure(Exception):
    def __init__(self, message: str, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.retry_after = retry_after
