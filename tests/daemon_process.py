"""Running `zoomrules` as a real subprocess in tests, reading its log as it goes."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
from anyio.abc import Process, TaskGroup

from engine.simulator import Simulator

ZOOMRULES = [sys.executable, "-m", "engine.cli"]


def simulator_env(sim: Simulator, state_dir: Path, **extra: str) -> dict[str, str]:
    """The daemon's environment pointing at `sim` (no network beyond loopback)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ZOOM", "ZOOMRULES"))}
    env.update(
        ZOOM_CLIENT_ID=sim.client_id,
        ZOOM_CLIENT_SECRET=sim.client_secret,
        ZOOM_WS_ENDPOINT=sim.ws_endpoint,
        ZOOM_OAUTH_URL=sim.oauth_url,
        ZOOM_API_BASE_URL=sim.api_base_url,
        ZOOMRULES_STATE_DIR=str(state_dir),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


class DaemonProcess:
    """`zoomrules ARGS` as a real subprocess, restartable, its output kept line by line.

    Made by `daemon_process`, whose task group reads the output; `start`
    again after `kill` or `stop` runs a new process with the same
    arguments, and its lines are appended to the same lists.
    """

    def __init__(
        self, args: Sequence[str], env: Mapping[str, str], cwd: Path | None, tasks: TaskGroup
    ) -> None:
        self.args = [*ZOOMRULES, *args]
        self.env = dict(env)
        self.cwd = cwd
        self.stderr: list[str] = []
        self.stdout: list[str] = []
        self._tasks = tasks
        self._process: Process | None = None
        self._changed = anyio.Event()

    @property
    def process(self) -> Process:
        assert self._process is not None, "not started"
        return self._process

    @property
    def pid(self) -> int:
        return self.process.pid

    async def start(self) -> DaemonProcess:
        assert self._process is None or self._process.returncode is not None, "still running"
        self._process = process = await anyio.open_process(
            self.args, env=self.env, cwd=self.cwd, stdin=None, start_new_session=True
        )
        self._tasks.start_soon(self._pump, process.stderr, self.stderr)
        self._tasks.start_soon(self._pump, process.stdout, self.stdout)
        return self

    async def _pump(self, stream: anyio.abc.ByteReceiveStream | None, sink: list[str]) -> None:
        if stream is None:
            return
        buffer = b""
        with contextlib.suppress(anyio.ClosedResourceError):  # closed by `ensure_dead`
            async for chunk in stream:
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                sink.extend(line.decode(errors="replace") for line in lines)
                self._changed.set()
                self._changed = anyio.Event()
        if buffer:
            sink.append(buffer.decode(errors="replace"))
        self._changed.set()

    def output(self) -> str:
        """Everything it wrote so far (standard error, then standard output)."""
        return "\n".join([*self.stderr, *self.stdout])

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 20.0) -> None:
        try:
            await self._wait_for(predicate, timeout)
        except TimeoutError:
            raise AssertionError(
                f"the condition did not hold within {timeout}s; the daemon's last lines:\n"
                + "\n".join(self.stderr[-30:])
            ) from None

    async def _wait_for(self, predicate: Callable[[], bool], timeout: float) -> None:
        with anyio.fail_after(timeout):
            while not predicate():
                changed = self._changed
                if self.process.returncode is not None and not predicate():
                    # Give the pumps a last chance to deliver buffered output.
                    with anyio.move_on_after(1):
                        await changed.wait()
                    if not predicate():
                        raise AssertionError(
                            f"daemon exited ({self.process.returncode}) before the condition held;\n"
                            + "\n".join(self.stderr[-30:])
                        )
                    return
                with anyio.move_on_after(0.25):  # also re-check process state
                    await changed.wait()

    async def wait_log(self, text: str, count: int = 1, timeout: float = 20.0) -> None:
        await self.wait_for(lambda: sum(text in line for line in self.stderr) >= count, timeout)

    def send_signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    async def wait_exit(self, timeout: float = 30.0) -> int:
        with anyio.fail_after(timeout):
            return await self.process.wait()

    async def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then its exit status."""
        self.send_signal(signal.SIGTERM)
        return await self.wait_exit(timeout)

    async def kill(self) -> None:
        """SIGKILL, and wait until it is gone."""
        self.send_signal(signal.SIGKILL)
        await self.wait_exit(10)

    async def ensure_dead(self) -> None:
        process = self._process
        if process is None:
            return
        with anyio.CancelScope(shield=True):
            if process.returncode is None:
                process.send_signal(signal.SIGKILL)
            await process.wait()
            await process.aclose()


@asynccontextmanager
async def daemon_process(
    args: Sequence[str], env: Mapping[str, str], cwd: Path | None = None, *, start: bool = True
) -> AsyncIterator[DaemonProcess]:
    """`zoomrules ARGS` (started unless `start=False`); on exit, make sure it is gone."""
    async with anyio.create_task_group() as tg:
        daemon = DaemonProcess(args, env, cwd, tg)
        try:
            if start:
                await daemon.start()
            yield daemon
        finally:
            await daemon.ensure_dead()


async def poll_until(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    """Wait for a condition set by another process (a file it writes): no event to await."""
    with anyio.fail_after(timeout):
        while not predicate():  # noqa: ASYNC110 - the writer is another process
            await anyio.sleep(0.02)
