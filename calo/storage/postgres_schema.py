"""The PostgreSQL schema and its migrations, applied at start by whichever server comes first.

Owns every table of the PostgreSQL backend:
- `jobs`: each job's public JSON document (`doc`) with the queried fields as columns, and
  `claimed_by`, the server that runs it while it is pending (see calo.storage.postgres);
- `events`: the log the live feed replays; `seq` is assigned at commit time from the one
  row of `event_seq` (calo.storage.postgres_writer says why that makes its order the
  commit order);
- `job_counts`: jobs per status as per-server rows (`shard`), summed when read, so that
  no two servers' writes queue on the same counter row;
- `instances`: the servers sharing the database, their heartbeats, and the Unsplash calls
  each has reserved and not yet seen answered (`calls_in_flight`);
- `shared_state`: one row of what every server must agree on: the Unsplash rate-limit
  pause, and the budget as last reported (`budget_remaining` until `budget_until`, see
  calo.budget);
- `calo_schema`: the schema version.

Each migration runs in one transaction together with the version bump that records it
(PostgreSQL's DDL is transactional), under a session advisory lock, so that servers
started at the same moment migrate one after the other and the later ones find nothing
left to do.

Threads: `migrate` is a coroutine, run once at start on the IOLoop.
Must never: edit a released migration (append a new one), or run DDL outside `migrate`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from calo.storage.base import StoreError

if TYPE_CHECKING:
    import psycopg

# pg_advisory_lock keys of Calo Jobs (one bigint namespace per database).
MIGRATION_LOCK = 0x43414C4F_0001  # "CALO" 1: one server migrates at a time
UPKEEP_LOCK = 0x43414C4F_0002  # "CALO" 2: the server that runs upkeep and the export

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE jobs (
            num bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- creation order, never reused
            id text NOT NULL UNIQUE,
            status text NOT NULL,
            due_at bigint NOT NULL,                  -- ms since the epoch, UTC
            idempotency_key text UNIQUE,
            claimed_by text,                         -- instances.id running it while pending
            doc text NOT NULL                        -- the job as the API shows it (JSON)
        )""",
        "CREATE INDEX jobs_by_status ON jobs (status, num)",
        "CREATE INDEX jobs_pending_by_due ON jobs (due_at) WHERE status = 'pending'",
        "CREATE INDEX jobs_pending_by_claim ON jobs (claimed_by) WHERE status = 'pending'",
        """CREATE TABLE events (
            seq bigint PRIMARY KEY,                  -- from event_seq: commit order, gap-free
            type text NOT NULL,
            job_id text NOT NULL,
            created_at bigint NOT NULL,
            job text NOT NULL                        -- the job's document after the change
        )""",
        "CREATE INDEX events_by_time ON events (created_at)",
        """CREATE TABLE event_seq (
            one boolean PRIMARY KEY DEFAULT true CHECK (one),
            last bigint NOT NULL                     -- the highest seq ever committed
        )""",
        "INSERT INTO event_seq (last) VALUES (0)",
        """CREATE TABLE job_counts (
            shard integer NOT NULL,
            status text NOT NULL,
            n bigint NOT NULL,
            PRIMARY KEY (shard, status)
        )""",
        """CREATE TABLE instances (
            id text PRIMARY KEY,
            started_at timestamptz NOT NULL DEFAULT now(),
            heartbeat_at timestamptz NOT NULL DEFAULT now()
        )""",
        """CREATE TABLE shared_state (
            one boolean PRIMARY KEY DEFAULT true CHECK (one),
            rate_limited_until bigint NOT NULL DEFAULT 0  -- ms; no Unsplash call before it
        )""",
        "INSERT INTO shared_state DEFAULT VALUES",
    ),
    (
        # Each server's own pending jobs by due time: its readiness check (the job it runs
        # that is due first) and the jobs it re-reads after a lost COMMIT answer, without a sort.
        "CREATE INDEX jobs_pending_by_claim_due ON jobs (claimed_by, due_at) WHERE status = 'pending'",
        "DROP INDEX jobs_pending_by_claim",
    ),
    (
        # The Unsplash budget every server shares (calo.budget): the figure last reported,
        # and each server's calls reserved and not yet answered (only live servers' count).
        "ALTER TABLE shared_state ADD COLUMN budget_remaining integer,"  # NULL: none metered (or never known)
        " ADD COLUMN budget_until bigint NOT NULL DEFAULT 0,"  # ms; trusted until then (0: never learned)
        " ADD COLUMN budget_version bigint NOT NULL DEFAULT 0",  # bumped by every write that reserves or learns
        "ALTER TABLE instances ADD COLUMN calls_in_flight integer NOT NULL DEFAULT 0",
    ),
)


async def migrate(conn: psycopg.AsyncConnection) -> int:
    """Bring the schema up to date; returns its version. `conn` is in autocommit mode.
    Raises StoreError if the database's schema is newer than this server knows."""
    await conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS calo_schema (version integer NOT NULL)")
        version = await _version(conn)
        if version > len(MIGRATIONS):
            raise StoreError(
                f"the database has Calo Jobs schema version {version}, newer than this calo-server "
                f"knows ({len(MIGRATIONS)}); upgrade calo-server"
            )
        for number, statements in enumerate(MIGRATIONS[version:], start=version + 1):
            async with conn.transaction():
                for statement in statements:
                    await conn.execute(statement)
                await conn.execute("DELETE FROM calo_schema")
                await conn.execute("INSERT INTO calo_schema (version) VALUES (%s)", (number,))
        return len(MIGRATIONS)
    finally:
        await conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))


async def _version(conn: psycopg.AsyncConnection) -> int:
    row = await (await conn.execute("SELECT max(version) FROM calo_schema")).fetchone()
    return row[0] if row and row[0] is not None else 0
