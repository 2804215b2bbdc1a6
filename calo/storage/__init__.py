"""Storage backends behind one interface (`calo.storage.base.Storage`).

SQLite in `--data-dir` is the default; `--database-url postgresql://...` selects
PostgreSQL, which several servers can share. `open_storage` is the only place that knows
both; the PostgreSQL module (and psycopg, the `[postgres]` extra) is imported only when
it is selected.

Must never: start anything (the caller awaits `Storage.start`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from calo.storage.base import Storage, StoreError

if TYPE_CHECKING:
    from calo.config import Settings

__all__ = ["Storage", "StoreError", "open_storage"]


def open_storage(settings: Settings) -> Storage:
    """The backend the settings select, not yet started. Raises StoreError when the
    PostgreSQL extra is not installed."""
    if not settings.database_url:
        from calo.storage.sqlite import SqliteStorage

        return SqliteStorage(settings.data_dir, write_timeout=settings.write_timeout)
    try:
        from calo.storage.postgres import PostgresStorage
    except ImportError as exc:
        extra = "pip install 'calo-jobs[postgres]'"
        raise StoreError(f"--database-url needs the PostgreSQL extra: {extra} ({exc})") from None
    return PostgresStorage(
        settings.database_url, instance_lease=settings.instance_lease, pool_size=settings.database_pool_size,
    )
