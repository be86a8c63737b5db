"""The embedded journal backend: one SQLite database in `[engine] state_dir`.

- `schema`: tables and migrations; `files`: the state directory,
  permissions and the daemon's lock; `rows`: rows as they travel;
- `db`: `JournalDB`, every statement on one synchronous connection;
- `batches` and `writer`: committing queued operations in one transaction,
  in a writer process of its own;
- `store`: `SqliteJournal`, the daemon's async, group-committed store;
- `admin`: `SqliteAdmin`, what `zoomrules dlq` uses beside a running daemon.
"""

from engine.journal.sqlite.admin import open_admin
from engine.journal.sqlite.store import open_store

__all__ = ["open_admin", "open_store"]
