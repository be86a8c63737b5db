"""Running `zoomrules` as a real subprocess in tests, reading its log as it goes."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
from anyio.abc import Process

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
    def __init__(self, process: Process) -> None:
        self.process = process
        self.stderr: list[str] = []
        self.stdout: list[str] = []
        self._changed = anyio.Event()

    async def _pump(self, stream: anyio.abc.ByteReceiveStream | None, sink: list[str]) -> None:
        if stream is None:
            return
        buffer = b""
        async for chunk in stream:
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            sink.extend(line.decode(errors="replace") for line in lines)
            self._changed.set()
            self._changed = anyio.Event()
        if buffer:
            sink.append(buffer.decode(errors="replace"))
        self._changed.set()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 20.0) -> None:
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


@asynccontextmanager
async def daemon_process(
    args: Sequence[str], env: Mapping[str, str], cwd: Path | None = None
) -> AsyncIterator[DaemonProcess]:
    """Start `zoomrules ARGS`; on exit, make sure it is gone."""
    process = await anyio.open_process(
        [*ZOOMRULES, *args], env=dict(env), cwd=cwd, stdin=None, start_new_session=True
    )
    daemon = DaemonProcess(process)
    async with anyio.create_task_group() as tg:
        tg.start_soon(daemon._pump, process.stderr, daemon.stderr)
        tg.start_soon(daemon._pump, process.stdout, daemon.stdout)
        try:
            yield daemon
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGKILL)
            with anyio.CancelScope(shield=True):
                await process.wait()
            await process.aclose()


async def poll_until(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    """Wait for a condition set by another process (a file it writes): no event to await."""
    with anyio.fail_after(timeout):
        while not predicate():  # noqa: ASYNC110 - the writer is another process
            await anyio.sleep(0.02)
