"""An action target for tests and benchmarks: a fast local HTTP endpoint that
counts requests by their idempotency header, and can answer slowly, stall,
or fail. Imported by the tests as `http_target` and by the benchmarks as
`tests.http_target` (it needs nothing else of the tests).
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from anyio.abc import SocketAttribute, SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream

IDEMPOTENCY_HEADER = "x-idempotency-key"


class Target:
    """An action target: counts (path, idempotency key) of every request it gets."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.status = 200
        self.counts: Counter[tuple[str, str]] = Counter()
        #: (path, key) -> monotonic time its first response was sent.
        self.completed: dict[tuple[str, str], float] = {}
        self.received = 0
        self._open = anyio.Event()
        self._open.set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stall(self) -> None:
        """Hold every request (from now on) until `release()`."""
        self._open = anyio.Event()

    def release(self) -> None:
        self._open.set()

    async def _answer(self, path: str, key: str) -> bytes:
        self.received += 1
        await self._open.wait()
        if self.delay:
            await anyio.sleep(self.delay)
        if self.status >= 400:
            return _response(self.status, b"down")
        self.counts[(path, key)] += 1
        self.completed.setdefault((path, key), time.monotonic())
        return _response(200, b"{}")

    async def _serve_client(self, client: SocketStream) -> None:
        """A minimal HTTP/1.1 keep-alive server (uvicorn is too slow for a burst)."""
        buffered = BufferedByteReceiveStream(client)
        async with client:
            with contextlib.suppress(
                anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError, OSError
            ):
                while True:
                    head = (await buffered.receive_until(b"\r\n\r\n", 65536)).decode()
                    request_line, *lines = head.split("\r\n")
                    headers = {
                        name.strip().lower(): value.strip()
                        for name, _, value in (line.partition(":") for line in lines)
                    }
                    length = int(headers.get("content-length", "0"))
                    if length:
                        await buffered.receive_exactly(length)
                    path = request_line.split(" ")[1]
                    await client.send(await self._answer(path, headers.get(IDEMPOTENCY_HEADER, "")))

    @asynccontextmanager
    async def serve(self) -> AsyncIterator[Target]:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        self.port = listener.extra(SocketAttribute.local_port)
        async with listener, anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, self._serve_client)
            try:
                yield self
            finally:
                self.release()
                tg.cancel_scope.cancel()


def _response(status: int, body: bytes) -> bytes:
    return (
        f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
