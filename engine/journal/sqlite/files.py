"""The SQLite journal's files: the state directory, owner-only permissions, the lock.

The state directory holds `journal.db` (with its `-wal` and `-shm`) and
`journal.lock`, which the daemon holds for its lifetime.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from engine.errors import JournalError

DB_NAME = "journal.db"
LOCK_NAME = "journal.lock"


def recovery_hint(db: Path) -> str:
    """What to do about a journal file that cannot be used."""
    return (
        f"To recover: stop zoomrules, move the damaged file aside "
        f"(mv {db} {db}.broken; also any {db.name}-wal and {db.name}-shm next to it) and start "
        f"again with an empty journal. Pending jobs and dead letters in the old file are not "
        f"run; `sqlite3 {db}.broken .recover | sqlite3 {db}` may salvage them."
    )


def ensure_state_dir(state_dir: Path) -> None:
    """Create `state_dir` owner-only (0700); raise JournalError if it is unusable."""
    hint = (
        f"Fix: create it for the daemon's user (install -d -m 0700 -o USER {state_dir}) or point "
        f"[engine] state_dir / ZOOMRULES_STATE_DIR at a writable directory."
    )
    try:
        state_dir.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        pass  # there already, or made by another process at the same moment
    except OSError as exc:
        raise JournalError(
            f"cannot create the state directory {state_dir}: {exc.strerror}. {hint}"
        ) from None
    else:
        # Ours: owner-only whatever the umask filtered out of mkdir's mode.
        with contextlib.suppress(OSError):
            state_dir.chmod(0o700)
    if not state_dir.is_dir():
        raise JournalError(f"the state directory {state_dir} is not a directory. {hint}")
    if not os.access(state_dir, os.W_OK | os.X_OK):
        raise JournalError(f"the state directory {state_dir} is not writable. {hint}")


def create_private(path: Path) -> None:
    """Create `path` as 0600 before SQLite does (it would use the umask)."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    os.close(fd)
    path.chmod(0o600)


@contextlib.contextmanager
def exclusive_lock(state_dir: Path, *, wait: bool = False) -> Iterator[bool]:
    """Hold the journal's lock file; yields False (without waiting) if another process has it.

    The running daemon holds it for its lifetime; the kernel releases it if
    the daemon dies, so a crash never leaves a stale lock behind.
    """
    path = state_dir / LOCK_NAME
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            yield False
            return
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield True
    finally:
        os.close(fd)


def lock_holder(state_dir: Path) -> str:
    try:
        return (state_dir / LOCK_NAME).read_text().strip() or "?"
    except OSError:
        return "?"
