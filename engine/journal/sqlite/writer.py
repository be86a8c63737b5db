"""The journal's writer process: SQLite writes off the daemon's GIL.

The daemon's event loop is busy Python nearly all the time (reading frames,
matching, running jobs). A writer *thread* has to take the GIL back after
every SQLite call, and each time waits for the loop to let go of it:
measured here, that tripled the writer's time and made the journal the
bottleneck of the whole daemon. A separate process has its own interpreter,
so its SQLite work runs in parallel on another core, and the loop only pays
for pickling each batch of rows.

Protocol: the daemon starts `python -m engine.journal.sqlite DB` with pipes
on stdin and stdout, and writes segments (appends, new jobs, outcomes) to
its stdin; the process applies them strictly in the order sent
(`engine.journal.sqlite.batches.apply_segment`, one transaction each) and answers each on
stdout, in the same order. Several segments may be in flight: the daemon
does not wait for one answer before sending the next, so the pipe's latency
through a busy event loop does not cap throughput. Each message is an
8-byte big-endian length and a `marshal` dump of plain tuples, lists,
strings, bytes and numbers: several times cheaper on the event loop than
pickling op objects, and safe because both ends are the same interpreter
(`sys.executable`), the only condition marshal's format needs.

The process only ever opens the database the daemon has already checked,
locked and migrated. It exits when its stdin closes (the daemon closed it,
or died: a SIGKILL of the daemon leaves no writer behind), after finishing
the batch it has.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import marshal
import os
import signal
import struct
import sys
from pathlib import Path
from typing import Any, BinaryIO

import anyio
import orjson
from anyio.abc import Process

from engine.errors import JournalWriterLost
from engine.events import per_delivery_fields, set_per_delivery_fields
from engine.journal.sqlite.batches import SegmentAnswer, apply_segment
from engine.journal.sqlite.db import JournalDB
from engine.journal.sqlite.rows import EventRow, JobsRow, OutcomeRow

log = logging.getLogger("zoomrules.journal")

_LENGTH = struct.Struct(">Q")

#: The daemon's message after a refused segment (see `serve`): try again.
RETRY = "retry"


#: Pipe capacity asked for (Linux; the default is 64 KiB): a whole batch
#: then goes into the pipe at once, instead of trickling through while the
#: busy event loop gets around to refilling it (measured: ~10 ms a batch).
_PIPE_SIZE = 1 << 20
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


def _pipe() -> tuple[int, int]:
    read, write = os.pipe()
    with contextlib.suppress(OSError):  # not Linux, or above pipe-max-size: keep the default
        fcntl.fcntl(write, _F_SETPIPE_SZ, _PIPE_SIZE)
    return read, write


class WriterProcess:
    """The daemon's end of a running writer process."""

    def __init__(self, process: Process, to_child: int, from_child: int) -> None:
        self._process = process
        self._to_child = to_child
        self._from_child = from_child
        self._buffer = bytearray()

    @classmethod
    async def start(cls, path: Path) -> WriterProcess:
        """Start a writer for the journal at `path`; it has opened it when this returns."""
        # The daemon's own import path, wherever it was started from.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        child_in, to_child = _pipe()
        from_child, child_out = _pipe()
        try:
            process = await anyio.open_process(
                # The ids it computes leave out the same per-delivery fields.
                [
                    sys.executable,
                    "-m",
                    "engine.journal.sqlite",
                    str(path),
                    orjson.dumps(per_delivery_fields()).decode(),
                ],
                stdin=child_in,
                stdout=child_out,
                stderr=None,  # its own errors go where the daemon's go
                env=env,
                # Out of the terminal's process group: a Ctrl-C is the
                # daemon's to handle (it then closes our stdin).
                start_new_session=True,
            )
        except OSError as exc:
            os.close(to_child)
            os.close(from_child)
            raise JournalWriterLost(f"cannot start the journal's writer process: {exc}") from None
        finally:
            os.close(child_in)
            os.close(child_out)
        os.set_blocking(to_child, False)
        os.set_blocking(from_child, False)
        writer = cls(process, to_child, from_child)
        try:
            ready = await writer.receive()
        except JournalWriterLost:
            await writer.kill()
            raise
        if ready != "ready":
            await writer.kill()
            raise JournalWriterLost(f"the journal's writer process failed to start: {ready}")
        return writer

    async def send(
        self,
        rows: list[EventRow],
        jobs: list[JobsRow],
        finished: list[OutcomeRow],
        dedup_window: float,
    ) -> None:
        """Queue a segment (`apply_segment`'s arguments); its answer comes back
        from `receive`, in send order."""
        # Version 2: no back-references, so no table of every object dumped
        # (a quarter cheaper here; strings repeat, which costs bytes only).
        await self._send_message((rows, jobs, finished, dedup_window))

    async def send_retry(self) -> None:
        """After a refused segment: the segments sent from now on are tried again."""
        await self._send_message(RETRY)

    async def _send_message(self, message: Any) -> None:
        data = marshal.dumps(message, 2)
        view = memoryview(_LENGTH.pack(len(data)) + data)
        while view:
            try:
                view = view[os.write(self._to_child, view) :]
            except BlockingIOError:
                try:
                    await anyio.wait_writable(self._to_child)
                except anyio.ClosedResourceError:  # `kill` closed the pipe meanwhile
                    raise JournalWriterLost("the journal's writer process is gone") from None
            except OSError as exc:  # EPIPE: it is gone; EBADF: we closed it
                raise JournalWriterLost(f"the journal's writer process is gone ({exc})") from None

    async def receive(self) -> Any:
        """The answer to the oldest batch not yet answered."""
        (length,) = _LENGTH.unpack(await self._receive_exactly(_LENGTH.size))
        return marshal.loads(await self._receive_exactly(length))

    async def _receive_exactly(self, count: int) -> bytes:
        buffer = self._buffer
        while len(buffer) < count:
            try:
                chunk = os.read(self._from_child, max(_PIPE_SIZE, count - len(buffer)))
            except BlockingIOError:
                try:
                    await anyio.wait_readable(self._from_child)
                except anyio.ClosedResourceError:
                    raise JournalWriterLost("the journal's writer process is gone") from None
                continue
            except OSError as exc:
                raise JournalWriterLost(f"the journal's writer process is gone ({exc})") from None
            if not chunk:
                code = self._process.returncode
                detail = f"exit status {code}" if code is not None else "its output closed"
                raise JournalWriterLost(f"the journal's writer process died ({detail})")
            buffer += chunk
        data = bytes(buffer[:count])
        del buffer[:count]
        return data

    async def close(self) -> None:
        """Let it finish and exit (after every answer was received)."""
        with anyio.CancelScope(shield=True):
            self._close_fds()  # its stdin ends: it exits once done
            with anyio.move_on_after(30):
                await self._process.wait()
                return
            await self.kill()

    async def kill(self) -> None:
        with anyio.CancelScope(shield=True):
            self._close_fds()
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()
            await self._process.aclose()

    def _close_fds(self) -> None:
        for fd in (self._to_child, self._from_child):
            if fd < 0:
                continue
            # Wakes a task waiting on it (ClosedResourceError) before the
            # number can be reused by another file.
            anyio.notify_closing(fd)
            with contextlib.suppress(OSError):
                os.close(fd)
        self._to_child = self._from_child = -1

    @property
    def pid(self) -> int:
        return self._process.pid


# -- in the writer process ------------------------------------------------------


def _read(stream: BinaryIO) -> Any:
    header = stream.read(_LENGTH.size)
    if len(header) < _LENGTH.size:
        return None  # the daemon closed our stdin: done
    (length,) = _LENGTH.unpack(header)
    data = stream.read(length)
    if len(data) < length:
        return None  # the daemon died half-way through sending: nothing to do
    return marshal.loads(data)


def _write(stream: BinaryIO, message: Any) -> None:
    data = marshal.dumps(message)
    stream.write(_LENGTH.pack(len(data)) + data)
    stream.flush()


def serve(path: Path, stdin: BinaryIO, stdout: BinaryIO) -> None:
    """The writer process's loop: segments in, answers out, in order."""
    try:
        db = JournalDB.connect(path)
    except Exception as exc:  # noqa: BLE001 - reported to the daemon, which falls back
        _write(stdout, f"{type(exc).__name__}: {exc}")
        return
    try:
        _write(stdout, "ready")
        #: Set when a segment could not be written (the storage refused it):
        #: every segment after it is answered the same without a try, so
        #: nothing commits out of order, until the daemon says RETRY and
        #: sends them all again.
        refused: SegmentAnswer | None = None
        while (message := _read(stdin)) is not None:
            if message == RETRY:
                refused = None
                continue
            if refused is not None:
                _write(stdout, refused)
                continue
            rows, jobs, finished, dedup_window = message
            answer: SegmentAnswer = apply_segment(db, rows, jobs, finished, dedup_window)
            if answer[0] is None:
                refused = answer
            _write(stdout, answer)
    except BrokenPipeError:
        pass  # the daemon is gone; what we committed stays committed
    finally:
        db.close()


def main() -> None:
    # The daemon decides when we stop, by closing our stdin once everything
    # is written; a signal meant for the daemon (systemd sends SIGTERM to
    # the whole service) must not cut a batch short.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    if os.environ.get("ZR_BATCH") and hasattr(os, "sched_setscheduler"):
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    logging.basicConfig(level=logging.WARNING, format="zoomrules journal writer: %(message)s")
    if len(sys.argv) > 2:
        set_per_delivery_fields(orjson.loads(sys.argv[2]))
    serve(Path(sys.argv[1]), sys.stdin.buffer, sys.stdout.buffer)
