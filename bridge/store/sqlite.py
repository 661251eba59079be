"""The SQLite store: the embedded default backend (WAL, safe for several threads and processes).

Written with SQLAlchemy Core. Every write runs in a `BEGIN IMMEDIATE` transaction so it takes
SQLite's single write lock up front: a deferred transaction that reads first and then writes can
fail with SQLITE_BUSY without ever waiting on the busy timeout, which immediate transactions do.

The time-limited records and the audit insert (every sign-in and token grant uses them) run
their statements, compiled once from the Core definitions below, on a pysqlite connection of
the calling thread's own: checking a pooled connection out of SQLAlchemy and back for each of
them cost ~20 us, four times SQLite's own work for a record read.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy.exc as sa_exc
from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Float,
    Integer,
    MetaData,
    Table,
    Text,
    bindparam,
    case,
    create_engine,
    delete,
    event,
    func,
    insert,
    literal,
    literal_column,
    select,
    update,
)
from sqlalchemy.dialects.sqlite import dialect as sqlite_dialect
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import URL

from bridge.store import (
    AuditEvent,
    Clock,
    Document,
    StoreError,
    StoreUnavailable,
    VersionConflict,
)

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "SQLiteStore"]

# Opportunistic purges of expired records run at most this often (seconds of clock time).
PURGE_INTERVAL = 60.0

# Ordered schema migrations; step N (1-based) moves `PRAGMA user_version` from N-1 to N.
# Never edit a released step: append a new one, so every existing database can be brought forward.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """
        CREATE TABLE records (
            kind TEXT NOT NULL,
            key TEXT NOT NULL,
            value TEXT NOT NULL,        -- JSON object
            expires_at REAL NOT NULL,   -- Unix time; the record is live while expires_at > now
            PRIMARY KEY (kind, key)
        )
        """,
        "CREATE INDEX records_expires_at ON records (expires_at)",
        """
        CREATE TABLE documents (
            kind TEXT NOT NULL,
            key TEXT NOT NULL,
            version INTEGER NOT NULL CHECK (version > 0),
            body TEXT NOT NULL,         -- JSON object
            updated_at REAL NOT NULL,   -- Unix time
            PRIMARY KEY (kind, key)
        )
        """,
        """
        CREATE TABLE audit (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            time INTEGER NOT NULL,      -- microseconds since the Unix epoch, UTC: exact, sortable
            event TEXT NOT NULL,
            outcome TEXT NOT NULL,
            username TEXT,
            subject TEXT,
            source TEXT,
            client_ip TEXT,
            user_agent TEXT,
            request_id TEXT,
            detail TEXT NOT NULL        -- JSON object
        )
        """,
        "CREATE INDEX audit_time ON audit (time)",
        "CREATE INDEX audit_username ON audit (username, time)",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)

# Table descriptions for building statements; the DDL above is the source of truth.
_metadata = MetaData()
_records = Table(
    "records",
    _metadata,
    Column("kind", Text, primary_key=True),
    Column("key", Text, primary_key=True),
    Column("value", Text, nullable=False),
    Column("expires_at", Float, nullable=False),
)
_documents = Table(
    "documents",
    _metadata,
    Column("kind", Text, primary_key=True),
    Column("key", Text, primary_key=True),
    Column("version", Integer, nullable=False),
    Column("body", Text, nullable=False),
    Column("updated_at", Float, nullable=False),
)
_audit = Table(
    "audit",
    _metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("time", Integer, nullable=False),
    Column("event", Text, nullable=False),
    Column("outcome", Text, nullable=False),
    Column("username", Text),
    Column("subject", Text),
    Column("source", Text),
    Column("client_ip", Text),
    Column("user_agent", Text),
    Column("request_id", Text),
    Column("detail", Text, nullable=False),
)

# The statements of a sign-in's writes, built once: building a statement and computing its
# cache key on every call cost SQLAlchemy more CPU than SQLite spends running it.
_upsert = sqlite_insert(_records)
_PUT_RECORD = _upsert.on_conflict_do_update(
    index_elements=[_records.c.kind, _records.c.key],
    set_={"value": _upsert.excluded.value, "expires_at": _upsert.excluded.expires_at},
)
# One record by kind and key; "live" adds that it has not expired.
_THIS_RECORD = (_records.c.kind == bindparam("k_kind"), _records.c.key == bindparam("k_key"))
_LIVE = (*_THIS_RECORD, _records.c.expires_at > bindparam("k_now"))
_DELETE_RECORD = delete(_records).where(*_THIS_RECORD)
_GET_RECORD = select(_records.c.value).where(*_LIVE)
_TAKE_RECORD = delete(_records).where(*_LIVE).returning(_records.c.value)
# Insert, or take over an expired row, or do nothing (rowcount 0) when a live record is there.
_ADD_RECORD = _upsert.on_conflict_do_update(
    index_elements=[_records.c.kind, _records.c.key],
    set_={"value": _upsert.excluded.value, "expires_at": _upsert.excluded.expires_at},
    where=_records.c.expires_at <= bindparam("k_now"),
)
# A counter is a record whose value is {"count": n}. Counting up is one upsert: a live record
# gains `by` (never below zero), an absent or expired one starts a new window at `by`; counting
# down touches only a live record, so it never stores anything new. (Constants are written as
# SQL literals: the statements run with the caller's parameters only.)
_COUNT = literal_column("'count'")
_COUNT_PATH = literal_column("'$.count'")
_COUNT_NOW = func.coalesce(func.json_extract(_records.c.value, _COUNT_PATH), literal_column("0"))
_COUNTED = func.json_object(_COUNT, func.max(literal_column("0"), _COUNT_NOW + bindparam("by")))
_STILL_LIVE = _records.c.expires_at > bindparam("k_now")
_COUNT_UP = (
    sqlite_insert(_records)
    .values(
        kind=bindparam("k_kind"),
        key=bindparam("k_key"),
        value=func.json_object(_COUNT, bindparam("by")),
        expires_at=bindparam("expires_at"),
    )
    .on_conflict_do_update(
        index_elements=[_records.c.kind, _records.c.key],
        set_={
            "value": case((_STILL_LIVE, _COUNTED), else_=func.json_object(_COUNT, bindparam("by"))),
            "expires_at": case(
                (_STILL_LIVE, _records.c.expires_at), else_=bindparam("expires_at")
            ),
        },
    )
    .returning(func.json_extract(_records.c.value, _COUNT_PATH))
)
_COUNT_DOWN = (
    update(_records)
    .where(*_LIVE)
    .values(value=_COUNTED)
    .returning(func.json_extract(_records.c.value, _COUNT_PATH))
)
_PURGE_RECORDS = delete(_records).where(_records.c.expires_at <= bindparam("k_now"))
_APPEND_AUDIT = insert(_audit)


def _driver_sql(statement: Any) -> str:
    """A Core statement as SQLite SQL with :named parameters, compiled once at import."""
    return str(statement.compile(dialect=sqlite_dialect(paramstyle="named")))


# The records' statements and the audit insert run straight on a driver connection: SQLAlchemy's
# execution layer (compiled-cache lookup, result objects) cost ~30 us a statement here, more
# than SQLite's own work, on every sign-in.
_SQL_PUT_RECORD = _driver_sql(_PUT_RECORD)
_SQL_ADD_RECORD = _driver_sql(_ADD_RECORD)
_SQL_GET_RECORD = _driver_sql(_GET_RECORD)
_SQL_COUNT_UP = _driver_sql(_COUNT_UP)
_SQL_COUNT_DOWN = _driver_sql(_COUNT_DOWN)
_SQL_TAKE_RECORD = _driver_sql(_TAKE_RECORD)
_SQL_DELETE_RECORD = _driver_sql(_DELETE_RECORD)
_SQL_PURGE_RECORDS = _driver_sql(_PURGE_RECORDS)
_SQL_APPEND_AUDIT = _driver_sql(_APPEND_AUDIT)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
# Row used by ping() for its rolled-back write; a kind callers are unlikely to use.
_PING_KIND = "\x00bridge-ping"

# SQLite connections must never cross a fork (gunicorn --preload): the child drops the
# parent's pooled and per-thread connections without closing them, so the parent's stay intact.
_engines: weakref.WeakSet[Engine] = weakref.WeakSet()
_thread_connections: weakref.WeakSet[ThreadConnections] = weakref.WeakSet()


def _dispose_after_fork() -> None:
    for engine in list(_engines):
        engine.dispose(close=False)
    for connections in list(_thread_connections):
        connections.forget()


os.register_at_fork(after_in_child=_dispose_after_fork)


class _Held:
    """A thread's driver connection (a holder, since pysqlite connections take no weakref)."""

    __slots__ = ("__weakref__", "connection")

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection: sqlite3.Connection | None = connection


class ThreadConnections:
    """One pysqlite connection per thread, opened on first use and kept for the thread's life.

    A thread's connection is closed when the thread ends (its holder is dropped with the
    thread's locals), on close(), and after a database error, so the next use reopens it.
    """

    def __init__(self, open_connection: Callable[[], sqlite3.Connection]) -> None:
        self._open = open_connection
        self._local = threading.local()
        self._held: weakref.WeakSet[_Held] = weakref.WeakSet()
        self._lock = threading.Lock()
        _thread_connections.add(self)

    def get(self) -> sqlite3.Connection:
        """The calling thread's connection, opened if it has none."""
        held: _Held | None = getattr(self._local, "held", None)
        if held is not None and held.connection is not None:
            return held.connection
        held = _Held(self._open())
        self._local.held = held
        with self._lock:
            self._held.add(held)
        return held.connection  # type: ignore[return-value]

    def drop(self) -> None:
        """Close the calling thread's connection (after an error it may not survive)."""
        held: _Held | None = getattr(self._local, "held", None)
        if held is not None and held.connection is not None:
            connection, held.connection = held.connection, None
            _close_quietly(connection)

    def close(self) -> None:
        """Close every thread's connection; threads reopen theirs on their next use."""
        with self._lock:
            held = list(self._held)
        for item in held:
            connection, item.connection = item.connection, None
            if connection is not None:
                _close_quietly(connection)

    def forget(self) -> None:
        """In a forked child: let go of the parent's connections without closing them."""
        with self._lock:
            _inherited.extend(self._held)
            self._held = weakref.WeakSet()
        self._local = threading.local()


# The parent's connections, kept open (never used) in a forked child: closing them there could
# disturb the parent's locks on the database file.
_inherited: list[_Held] = []


def _close_quietly(connection: sqlite3.Connection) -> None:
    try:
        connection.close()
    except sqlite3.Error:
        pass  # a connection that cannot even close has nothing left to release


def _driver(conn: Connection) -> sqlite3.Connection:
    """The pysqlite connection under a SQLAlchemy one (same transaction)."""
    return conn.connection.driver_connection  # type: ignore[return-value]


def _check_name(what: str, name: str) -> None:
    """Reject kinds and keys that are not strings SQLite can store exactly."""
    if not isinstance(name, str):
        raise TypeError(f"{what} must be a str")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} is not valid Unicode text") from None


def _encode(what: str, value: Mapping[str, Any]) -> str:
    """Serialise a mapping to JSON text, or raise TypeError before anything is written."""
    if not isinstance(value, Mapping):
        raise TypeError(f"{what} must be a mapping")
    try:
        # allow_nan=False: NaN and Infinity are not JSON and other backends could not read them.
        return json.dumps(dict(value), allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{what} is not JSON-serialisable: {type(exc).__name__}") from None


def _check_ttl(ttl: float) -> None:
    """A ttl must be a positive, finite number of seconds."""
    if isinstance(ttl, bool) or not isinstance(ttl, int | float):
        raise TypeError("ttl must be a number of seconds")
    if not (ttl > 0 and math.isfinite(ttl)):
        raise ValueError("ttl must be a positive, finite number of seconds")


def _to_micros(what: str, moment: datetime) -> int:
    """Convert an aware datetime to integer microseconds since the epoch (exact, sortable)."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        # A naive datetime would silently be read as local time; refuse to guess.
        raise ValueError(f"{what} must be a timezone-aware datetime")
    return (moment - _EPOCH) // _MICROSECOND


def _from_micros(micros: int) -> datetime:
    """Convert microseconds since the epoch back to an aware UTC datetime."""
    return _EPOCH + timedelta(microseconds=micros)


def _failure(exc: BaseException) -> StoreError:
    """Map a database failure to a store error whose message carries no values."""
    orig = getattr(exc, "orig", None) or exc
    reason = str(orig.args[0]) if getattr(orig, "args", None) else type(orig).__name__
    # SQLite's own messages name tables and columns, never bound values; keep them short.
    reason = reason.splitlines()[0][:120] if reason else type(orig).__name__
    if isinstance(exc, sa_exc.IntegrityError | sa_exc.DataError | sqlite3.IntegrityError):
        return StoreError(f"SQLite store rejected the write: {reason}")
    return StoreUnavailable(f"SQLite store unavailable: {reason}")


class SQLiteStore:
    """The `Store` contract on one SQLite file, shared by threads and worker processes."""

    def __init__(
        self,
        path: str | Path,
        busy_timeout_ms: int = 5000,
        clock: Clock | None = None,
        *,
        tolerate_unavailable: bool = False,
    ) -> None:
        """Open (creating if needed) the database at path and bring its schema up to date.

        With tolerate_unavailable, a database that cannot be opened or migrated now does not
        raise: every use retries and raises StoreUnavailable until it works. Server workers
        use this so they start (and report not-ready) while the store is broken.
        """
        if busy_timeout_ms < 0:
            raise ValueError("busy_timeout_ms must not be negative")
        self.path = Path(path)
        self._clock: Callable[[], float] = clock or time.time
        self._busy_timeout_ms = int(busy_timeout_ms)
        self._purge_lock = threading.Lock()
        self._next_purge = -math.inf
        self._schema_ready = False
        self._schema_lock = threading.Lock()
        self._engine = create_engine(
            URL.create("sqlite", database=str(self.path)),
            # sqlite3's own busy handler covers the first pragmas of a new connection.
            connect_args={"timeout": self._busy_timeout_ms / 1000},
            # Bound values include one-time codes and sessions: keep them out of exception text.
            hide_parameters=True,
            # Connections are cheap; enough for a threaded worker without queueing on the pool.
            pool_size=5,
            max_overflow=20,
        )
        event.listen(self._engine, "connect", self._on_connect)
        _engines.add(self._engine)
        self._connections = ThreadConnections(self._open_driver_connection)
        try:
            self._prepare_schema()
        except StoreUnavailable:
            if not tolerate_unavailable:
                self._engine.dispose()
                raise

    # -- connection plumbing ------------------------------------------------------------------

    def _create_file(self) -> None:
        """Create the parent directory (0700) and an empty database file (0600) if missing."""
        try:
            if not self.path.parent.exists():
                self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                return  # an existing file (perhaps just created by another worker) is kept as is
            try:
                os.fchmod(fd, 0o600)  # exact mode whatever the umask; the WAL files inherit it
            finally:
                os.close(fd)
            # A zero-length file is a valid empty SQLite database; migrate() fills it in.
        except OSError as exc:
            raise StoreUnavailable(
                f"SQLite store unavailable: cannot create database file ({exc.strerror})"
            ) from None

    def _on_connect(self, dbapi_connection: sqlite3.Connection, _record: Any) -> None:
        """Configure every new connection (pragmas are per connection, not per database)."""
        # Let SQLAlchemy's "begin" listener emit BEGIN itself, so writes can use BEGIN IMMEDIATE.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}").fetchall()
            self._enable_wal(cursor)
            # NORMAL is durable across application crashes in WAL mode, and much faster.
            cursor.execute("PRAGMA synchronous = NORMAL").fetchall()
            cursor.execute("PRAGMA foreign_keys = ON").fetchall()
        finally:
            cursor.close()

    def _open_driver_connection(self) -> sqlite3.Connection:
        """A new pysqlite connection, configured as SQLAlchemy's pooled ones are."""
        # Used by one thread at a time; close() may close it from another.
        connection = sqlite3.connect(
            self.path, timeout=self._busy_timeout_ms / 1000, check_same_thread=False
        )
        try:
            self._on_connect(connection, None)
        except BaseException:
            connection.close()
            raise
        return connection

    def _enable_wal(self, cursor: sqlite3.Cursor) -> None:
        """Switch the database to WAL, retrying within the busy timeout while others hold it."""
        # Turning a new database into WAL needs an exclusive lock, and SQLite answers contention
        # on it with an immediate SQLITE_BUSY instead of calling the busy handler (to avoid a
        # deadlock). That happens when several workers create the database at the same moment,
        # so back off and retry as the busy handler would. Once the file is in WAL mode (which
        # persists) the pragma is a no-op that never contends.
        deadline = time.monotonic() + self._busy_timeout_ms / 1000
        delay = 0.001
        while True:
            try:
                cursor.execute("PRAGMA journal_mode = WAL").fetchall()
                return
            except sqlite3.OperationalError as exc:
                busy = getattr(exc, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_BUSY
                remaining = deadline - time.monotonic()
                if not busy or remaining <= 0:
                    raise
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, 0.05)

    @staticmethod
    def _begin(conn: Connection, statement: str) -> None:
        """Start the transaction: BEGIN, or BEGIN IMMEDIATE for connections about to write.

        pysqlite runs in autocommit mode here (isolation_level None) and SQLAlchemy's own begin
        emits nothing for it, so the statement goes straight to the driver. This replaces a
        "begin" event listener: any engine-level listener makes SQLAlchemy dispatch every
        execution event on every statement, which cost more CPU than SQLite's own work.
        """
        conn.connection.driver_connection.execute(statement)  # sqlite3.Error: see _errors

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Translate driver and SQLAlchemy failures into store errors."""
        try:
            yield
        except (sa_exc.DBAPIError, sa_exc.TimeoutError, sqlite3.Error) as exc:
            raise _failure(exc) from None

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        """A connection inside a deferred (read) transaction, committed on exit."""
        if not self._schema_ready:
            self._prepare_schema()
        with self._read_unchecked() as conn:
            yield conn

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """A connection holding the write lock (BEGIN IMMEDIATE), committed on success."""
        if not self._schema_ready:
            self._prepare_schema()
        with self._write_unchecked() as conn:
            yield conn

    @contextmanager
    def _records_transaction(self, begin: str) -> Iterator[sqlite3.Connection]:
        """The calling thread's driver connection inside a transaction, committed on success.

        begin is "BEGIN DEFERRED" for reads, "BEGIN IMMEDIATE" for writes (see the module).
        """
        if not self._schema_ready:
            self._prepare_schema()
        with self._errors():
            connection = self._connections.get()
            try:
                connection.execute(begin)
                yield connection
                connection.commit()
            except sqlite3.Error:
                # Busy, locked, or a damaged file: start over on a new connection next time.
                self._connections.drop()
                raise
            except BaseException:
                connection.rollback()
                raise

    @contextmanager
    def _read_unchecked(self) -> Iterator[Connection]:
        with self._errors(), self._engine.connect() as conn:
            self._begin(conn, "BEGIN DEFERRED")
            with conn.begin():
                yield conn

    @contextmanager
    def _write_unchecked(self) -> Iterator[Connection]:
        with self._errors(), self._engine.connect() as conn:
            self._begin(conn, "BEGIN IMMEDIATE")
            with conn.begin():
                yield conn

    # -- schema -------------------------------------------------------------------------------

    def _prepare_schema(self) -> None:
        """Create the file if missing and migrate, once; later uses skip this check."""
        with self._schema_lock:
            if not self._schema_ready:
                self._create_file()
                self.migrate()
                self._schema_ready = True

    def migrate(self) -> None:
        """Apply any pending schema migrations (idempotent; safe when workers start together)."""
        with self._read_unchecked() as conn:
            current = conn.exec_driver_sql("PRAGMA user_version").scalar_one()
        if current == SCHEMA_VERSION:
            return  # the common case: no write lock needed
        with self._write_unchecked() as conn:
            # Re-read under the write lock: another worker may have migrated in the meantime.
            current = conn.exec_driver_sql("PRAGMA user_version").scalar_one()
            if current > SCHEMA_VERSION:
                raise StoreUnavailable(
                    f"SQLite store unavailable: schema version {current} is newer than "
                    f"this release supports ({SCHEMA_VERSION})"
                )
            for version in range(current + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[version - 1]:
                    conn.exec_driver_sql(statement)
                # user_version lives in the database header and commits with the transaction.
                conn.exec_driver_sql(f"PRAGMA user_version = {version}")

    # -- time-limited records -----------------------------------------------------------------

    def _purge_due(self, now: float) -> bool:
        """True (and reschedule) if an opportunistic purge of expired records is due."""
        with self._purge_lock:
            if now < self._next_purge:
                return False
            self._next_purge = now + PURGE_INTERVAL
            return True

    @staticmethod
    def _purge_records(connection: sqlite3.Connection, now: float) -> int:
        """Delete expired records inside the caller's transaction; return how many."""
        return connection.execute(_SQL_PURGE_RECORDS, {"k_now": now}).rowcount

    def put(self, kind: str, key: str, value: Mapping[str, Any], ttl: float) -> None:
        """Store a record that expires after ttl seconds, replacing any existing one."""
        _check_name("kind", kind)
        _check_name("key", key)
        _check_ttl(ttl)
        text = _encode("value", value)
        now = self._clock()
        row = {"kind": kind, "key": key, "value": text, "expires_at": now + ttl}
        with self._records_transaction("BEGIN IMMEDIATE") as db:
            if self._purge_due(now):
                self._purge_records(db, now)
            db.execute(_SQL_PUT_RECORD, row)

    def add(self, kind: str, key: str, value: Mapping[str, Any], ttl: float) -> bool:
        """Store a record only if no live one exists (replay caches); True if it was added."""
        _check_name("kind", kind)
        _check_name("key", key)
        _check_ttl(ttl)
        text = _encode("value", value)
        now = self._clock()
        row = {"kind": kind, "key": key, "value": text, "expires_at": now + ttl, "k_now": now}
        # One statement decides atomically (see _ADD_RECORD).
        with self._records_transaction("BEGIN IMMEDIATE") as db:
            if self._purge_due(now):
                self._purge_records(db, now)
            return db.execute(_SQL_ADD_RECORD, row).rowcount == 1

    def count(self, kind: str, key: str, ttl: float, by: int = 1) -> int:
        """Atomically add `by` to a counter record and return the new count (fixed window)."""
        _check_name("kind", kind)
        _check_name("key", key)
        _check_ttl(ttl)
        if isinstance(by, bool) or not isinstance(by, int):
            raise TypeError("by must be an int")
        now = self._clock()
        # One statement under the write lock (BEGIN IMMEDIATE): no increment is lost, across
        # threads and processes alike.
        row = {"k_kind": kind, "k_key": key, "k_now": now, "by": by, "expires_at": now + ttl}
        with self._records_transaction("BEGIN IMMEDIATE") as db:
            counted = db.execute(_SQL_COUNT_UP if by > 0 else _SQL_COUNT_DOWN, row).fetchone()
        return 0 if counted is None else int(counted[0])

    def get(self, kind: str, key: str) -> dict[str, Any] | None:
        """Return a live record, or None if absent or expired."""
        _check_name("kind", kind)
        _check_name("key", key)
        match = {"k_kind": kind, "k_key": key, "k_now": self._clock()}
        with self._records_transaction("BEGIN DEFERRED") as db:
            row = db.execute(_SQL_GET_RECORD, match).fetchone()
        return None if row is None else json.loads(row[0])

    def take(self, kind: str, key: str) -> dict[str, Any] | None:
        """Atomically read and delete a live record: at most one caller ever gets it."""
        _check_name("kind", kind)
        _check_name("key", key)
        # A single DELETE ... RETURNING under the write lock: whoever deletes the row gets it,
        # across threads and processes alike.
        match = {"k_kind": kind, "k_key": key, "k_now": self._clock()}
        with self._records_transaction("BEGIN IMMEDIATE") as db:
            row = db.execute(_SQL_TAKE_RECORD, match).fetchone()
        return None if row is None else json.loads(row[0])

    def delete(self, kind: str, key: str) -> None:
        """Delete a record if present."""
        _check_name("kind", kind)
        _check_name("key", key)
        with self._records_transaction("BEGIN IMMEDIATE") as db:
            db.execute(_SQL_DELETE_RECORD, {"k_kind": kind, "k_key": key})

    # -- versioned documents ------------------------------------------------------------------

    @staticmethod
    def _document(row: Any) -> Document:
        """Build a Document from a documents row."""
        return Document(
            kind=row.kind,
            key=row.key,
            version=row.version,
            body=json.loads(row.body),
            updated_at=datetime.fromtimestamp(row.updated_at, UTC),
        )

    def get_document(self, kind: str, key: str) -> Document | None:
        """Return the current version of a document, or None."""
        _check_name("kind", kind)
        _check_name("key", key)
        stmt = select(_documents).where(_documents.c.kind == kind, _documents.c.key == key)
        with self._read() as conn:
            row = conn.execute(stmt).one_or_none()
        return None if row is None else self._document(row)

    def list_documents(self, kind: str) -> list[Document]:
        """Return every document of a kind, ordered by key."""
        _check_name("kind", kind)
        # SQLite's default BINARY collation orders UTF-8 by code point, as Python's sorted().
        stmt = select(_documents).where(_documents.c.kind == kind).order_by(_documents.c.key)
        with self._read() as conn:
            rows = conn.execute(stmt).all()
        return [self._document(row) for row in rows]

    def save_document(
        self, kind: str, key: str, body: Mapping[str, Any], expected_version: int
    ) -> Document:
        """Save a document if its current version is expected_version (0: must not exist yet).

        Raises VersionConflict otherwise; returns the saved document with its new version.
        """
        _check_name("kind", kind)
        _check_name("key", key)
        if isinstance(expected_version, bool) or not isinstance(expected_version, int):
            raise TypeError("expected_version must be an int")
        if expected_version < 0:
            raise ValueError("expected_version must not be negative")
        text = _encode("body", body)
        now = self._clock()
        version = expected_version + 1
        with self._write() as conn:
            if expected_version == 0:
                try:
                    conn.execute(
                        insert(_documents).values(
                            kind=kind, key=key, version=1, body=text, updated_at=now
                        )
                    )
                except sa_exc.IntegrityError:
                    # The primary key makes a concurrent or repeated create fail here.
                    raise VersionConflict("document already exists") from None
            else:
                # Compare-and-set in one statement: only the writer that still sees
                # expected_version changes the row.
                result = conn.execute(
                    update(_documents)
                    .where(
                        _documents.c.kind == kind,
                        _documents.c.key == key,
                        _documents.c.version == expected_version,
                    )
                    .values(version=version, body=text, updated_at=now)
                )
                if result.rowcount != 1:
                    raise VersionConflict(f"document is not at version {expected_version}")
        return Document(
            kind=kind,
            key=key,
            version=version,
            body=json.loads(text),
            updated_at=datetime.fromtimestamp(now, UTC),
        )

    def delete_document(self, kind: str, key: str, expected_version: int) -> None:
        """Delete a document at expected_version; raises VersionConflict if it moved on."""
        _check_name("kind", kind)
        _check_name("key", key)
        if isinstance(expected_version, bool) or not isinstance(expected_version, int):
            raise TypeError("expected_version must be an int")
        if expected_version < 1:
            raise ValueError("expected_version of an existing document is at least 1")
        stmt = delete(_documents).where(
            _documents.c.kind == kind,
            _documents.c.key == key,
            _documents.c.version == expected_version,
        )
        with self._write() as conn:
            if conn.execute(stmt).rowcount != 1:
                raise VersionConflict(f"document is not at version {expected_version}")

    # -- audit trail --------------------------------------------------------------------------

    def append_audit(self, event: AuditEvent) -> None:
        """Append an event to the audit trail."""
        micros = _to_micros("event.time", event.time)
        detail = _encode("event.detail", event.detail)
        values = {
            "id": None,  # SQLite assigns the next rowid
            "time": micros,
            "event": event.event,
            "outcome": event.outcome,
            "username": event.username,
            "subject": event.subject,
            "source": event.source,
            "client_ip": event.client_ip,
            "user_agent": event.user_agent,
            "request_id": event.request_id,
            "detail": detail,
        }
        with self._records_transaction("BEGIN IMMEDIATE") as db:
            db.execute(_SQL_APPEND_AUDIT, values)

    def query_audit(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        username: str | None = None,
        outcome: str | None = None,
        event: str | None = None,
        limit: int = 100,
    ) -> list[AuditEvent]:
        """Return matching audit events (since <= time < until), newest first."""
        if limit < 0:
            raise ValueError("limit must not be negative")
        stmt = select(_audit)
        if since is not None:
            stmt = stmt.where(_audit.c.time >= _to_micros("since", since))
        if until is not None:
            stmt = stmt.where(_audit.c.time < _to_micros("until", until))
        if username is not None:
            stmt = stmt.where(_audit.c.username == username)
        if outcome is not None:
            stmt = stmt.where(_audit.c.outcome == outcome)
        if event is not None:
            stmt = stmt.where(_audit.c.event == event)
        # id breaks ties between events of the same microsecond: later appends count as newer.
        stmt = stmt.order_by(_audit.c.time.desc(), _audit.c.id.desc()).limit(limit)
        with self._read() as conn:
            rows = conn.execute(stmt).all()
        return [
            AuditEvent(
                event=row.event,
                outcome=row.outcome,
                time=_from_micros(row.time),
                username=row.username,
                subject=row.subject,
                source=row.source,
                client_ip=row.client_ip,
                user_agent=row.user_agent,
                request_id=row.request_id,
                detail=json.loads(row.detail),
            )
            for row in rows
        ]

    # -- maintenance --------------------------------------------------------------------------

    def purge_expired(self, audit_before: datetime | None = None) -> int:
        """Delete expired records (and audit events older than audit_before); return the count."""
        cutoff = None if audit_before is None else _to_micros("audit_before", audit_before)
        now = self._clock()
        with self._write() as conn:
            count = self._purge_records(_driver(conn), now)
            if cutoff is not None:
                count += conn.execute(delete(_audit).where(_audit.c.time < cutoff)).rowcount
        with self._purge_lock:
            self._next_purge = max(self._next_purge, now + PURGE_INTERVAL)
        return count

    def ping(self) -> None:
        """Raise StoreUnavailable unless the backend answers a trivial read and write check."""
        if not self._schema_ready:
            self._prepare_schema()
        with self._errors(), self._engine.connect() as conn:
            # BEGIN IMMEDIATE waits for (at most busy_timeout) and takes the write lock, so a
            # database locked by someone else is reported rather than only a readable one.
            self._begin(conn, "BEGIN IMMEDIATE")
            transaction = conn.begin()
            try:
                conn.execute(select(literal(1)).select_from(_records).limit(1)).all()
                stmt = sqlite_insert(_records).values(
                    kind=_PING_KIND, key="", value="{}", expires_at=0.0
                )
                conn.execute(stmt.on_conflict_do_nothing())
            finally:
                transaction.rollback()

    def close(self) -> None:
        """Release connections (the store reconnects if it is used again)."""
        self._connections.close()
        self._engine.dispose()
