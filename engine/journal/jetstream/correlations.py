"""Temporal rules' state in a cluster: a snapshot in the `correlations` bucket.

One node at a time runs the cluster's temporal rules (`engine.correlator`,
under the lease of the `correlator` bucket). It keeps the open correlations
in memory and saves them whole, with the position of the last event they
have seen (the cursor):

    head        {"gen", "chunks", "cursor", "node", "saved_at"}
    s<gen>_<i>  the snapshot's zlib-compressed JSON, in pieces NATS takes
    cancel_<h>  [rule, key]: a `zoomrules timers cancel` for the node to apply

A save writes the new generation's pieces, then the head with the revision
it last read or wrote (compare-and-set): the head is the commit, and a node
that was taken over cannot overwrite its successor's state
(`CorrelationsTakenOver`). Why one snapshot and not an entry per key: the
cursor must change with the state in one write, or a node taking over would
match some events twice against state that already holds them.
"""

from __future__ import annotations

import hashlib
import logging
import time
import zlib
from collections.abc import Sequence
from typing import Any

import orjson

from engine.errors import CorrelationsTakenOver
from engine.journal.store import CorrelationRow, CorrelationSnapshot
from engine.nats_link import NatsLink

log = logging.getLogger("zoomrules.journal")

HEAD = "head"
_CANCEL = "cancel_"
#: A piece of a snapshot: well under NATS's default 1 MB message limit.
PIECE = 256 * 1024


def encode(snapshot: CorrelationSnapshot) -> bytes:
    rows = [
        [row.rule, row.key, row.definition, row.form, row.seq, row.deadline, row.gap,
         orjson.Fragment(row.events)]
        for row in snapshot.rows
    ]  # fmt: skip
    return zlib.compress(orjson.dumps({"rows": rows, "gaps": snapshot.gaps}))


def decode(data: bytes, cursor: int) -> CorrelationSnapshot:
    doc = orjson.loads(zlib.decompress(data))
    rows = [
        CorrelationRow(rule, key, definition, form, seq, deadline, bool(gap), orjson.dumps(events))
        for rule, key, definition, form, seq, deadline, gap, events in doc["rows"]
    ]
    gaps = [(float(start), float(end)) for start, end in doc["gaps"]]
    return CorrelationSnapshot(rows, gaps, cursor)


class SnapshotBucket:
    """The `correlations` bucket, from a node's or a command's side."""

    def __init__(self, link: NatsLink) -> None:
        self.link = link
        #: The head's revision this node last read or wrote (0: none yet).
        self.revision = 0
        self._gen = 0
        self._chunks = 0
        #: Cancel requests handed out by the last `claim_cancelled`: removed
        #: at the next one, once the state that applied them was saved.
        self._claimed: list[str] = []

    async def _bucket(self) -> Any:
        return await self.link.bucket("correlations")

    async def _head(self) -> tuple[dict[str, Any], int] | None:
        from nats.js.errors import KeyNotFoundError

        try:
            entry = await (await self._bucket()).get(HEAD)
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        return orjson.loads(entry.value), entry.revision

    async def read(self) -> CorrelationSnapshot | None:
        """The last saved snapshot (None: never saved), remembering its revision."""
        found = await self._head()
        if found is None:
            self.revision = 0
            return None
        head, revision = found
        bucket = await self._bucket()
        gen, chunks = int(head["gen"]), int(head["chunks"])
        pieces = [(await bucket.get(f"s{gen}_{i}")).value for i in range(chunks)]
        self.revision, self._gen, self._chunks = revision, gen, chunks
        return decode(b"".join(pieces), int(head["cursor"]))

    async def write(self, snapshot: CorrelationSnapshot, node: str) -> None:
        """Save `snapshot` after the one last read or written here."""
        from nats.js.errors import KeyWrongLastSequenceError

        bucket = await self._bucket()
        data = encode(snapshot)
        gen = self._gen + 1
        pieces = [data[i : i + PIECE] for i in range(0, len(data), PIECE)] or [b""]
        for index, piece in enumerate(pieces):
            await bucket.put(f"s{gen}_{index}", piece)
        head = orjson.dumps(
            {
                "gen": gen,
                "chunks": len(pieces),
                "cursor": snapshot.cursor,
                "node": node,
                "saved_at": time.time(),
            }
        )
        try:
            if self.revision:
                self.revision = await bucket.update(HEAD, head, last=self.revision)
            else:
                self.revision = await bucket.create(HEAD, head)
        except KeyWrongLastSequenceError:
            raise CorrelationsTakenOver(
                "another node saved the cluster's temporal rule state since this one"
            ) from None
        old_gen, old_chunks = self._gen, self._chunks
        self._gen, self._chunks = gen, len(pieces)
        for index in range(old_chunks):
            try:
                await bucket.delete(f"s{old_gen}_{index}")
            except Exception as exc:  # noqa: BLE001 - an orphan piece, harmless
                log.debug("correlations: cannot delete an old piece (%s)", exc)

    # -- zoomrules timers cancel ----------------------------------------------------

    async def request_cancel(self, items: Sequence[tuple[str, str]]) -> None:
        bucket = await self._bucket()
        for rule, key in items:
            name = hashlib.sha256(f"{rule}\0{key}".encode()).hexdigest()[:32]
            await bucket.put(f"{_CANCEL}{name}", orjson.dumps([rule, key]))

    async def claim_cancelled(self) -> list[tuple[str, str]]:
        """Cancel requests not handed out yet; the caller saves the state
        that applied them before calling again (only then are they removed:
        a node dying in between leaves them to its successor)."""
        from nats.js.errors import KeyNotFoundError, NoKeysError

        bucket = await self._bucket()
        for key in self._claimed:
            await bucket.purge(key)
        self._claimed = []
        try:
            keys = [key for key in await bucket.keys() if key.startswith(_CANCEL)]
        except NoKeysError:
            return []
        found = []
        for key in keys:
            try:
                entry = await bucket.get(key)
            except KeyNotFoundError:
                continue
            if entry.value:
                rule, value = orjson.loads(entry.value)
                found.append((str(rule), str(value)))
            self._claimed.append(key)
        return found
