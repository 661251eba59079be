"""The SQLite store: the conformance suite, plus what only SQLite has (files, locks, processes)."""

from __future__ import annotations

import gc
import multiprocessing
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from bridge.store import StoreUnavailable
from bridge.store.sqlite import MIGRATIONS, SCHEMA_VERSION, SQLiteStore

try:  # tests/ may be a package (tests.store_conformance) or a rootdir (store_conformance)
    from tests.store_conformance import FakeClock, StoreConformance
except ImportError:  # pragma: no cover - depends on how pytest was started
    from store_conformance import FakeClock, StoreConformance

PROCESSES = 8


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """Where the database under test lives (a directory that does not exist yet)."""
    return tmp_path / "state" / "bridge.db"


@pytest.fixture
def clock() -> FakeClock:
    """A fake clock for the SQLite-specific tests."""
    return FakeClock()


@pytest.fixture
def store(db_path: Path, clock: FakeClock) -> Iterator[SQLiteStore]:
    """A SQLite store on a fresh file."""
    s = SQLiteStore(db_path, clock=clock)
    yield s
    s.close()


class TestSQLiteConformance(StoreConformance):
    """The shared conformance suite, run on SQLiteStore."""

    @pytest.fixture
    def store(self, db_path: Path, clock: FakeClock) -> Iterator[SQLiteStore]:
        """A SQLite store on a fresh file, reading time from the fake clock."""
        s = SQLiteStore(db_path, clock=clock)
        yield s
        s.close()


def raw(path: Path, timeout: float = 5.0) -> sqlite3.Connection:
    """A plain sqlite3 connection in autocommit mode, as another program would open it."""
    return sqlite3.connect(path, timeout=timeout, isolation_level=None)


# -- files and connection settings -----------------------------------------------------------


def test_wal_mode_and_pragmas(store: SQLiteStore, db_path: Path) -> None:
    with closing(raw(db_path)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with store._engine.connect() as conn:
        pragma = lambda name: conn.exec_driver_sql(f"PRAGMA {name}").scalar_one()  # noqa: E731
        assert pragma("journal_mode") == "wal"
        assert pragma("busy_timeout") == 5000
        assert pragma("synchronous") == 1  # NORMAL
        assert pragma("foreign_keys") == 1


def test_file_and_directory_modes(store: SQLiteStore, db_path: Path) -> None:
    store.put("code", "k", {"v": 1}, ttl=60)
    assert stat.S_IMODE(db_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(db_path.parent.stat().st_mode) == 0o700
    for sidecar in (db_path.with_name("bridge.db-wal"), db_path.with_name("bridge.db-shm")):
        if sidecar.exists():  # SQLite gives its WAL files the database's permissions
            assert stat.S_IMODE(sidecar.stat().st_mode) & 0o077 == 0


def test_existing_directory_mode_is_left_alone(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    SQLiteStore(tmp_path / "bridge.db").close()
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o755


def test_migrations_set_user_version_and_are_idempotent(db_path: Path, clock: FakeClock) -> None:
    assert SCHEMA_VERSION == len(MIGRATIONS) >= 1
    first = SQLiteStore(db_path, clock=clock)
    first.put("code", "k", {"v": 1}, ttl=60)
    first.save_document("rp", "app1", {"n": 1}, expected_version=0)
    first.migrate()
    first.close()
    with closing(raw(db_path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"records", "documents", "audit"} <= tables
    again = SQLiteStore(db_path, clock=clock)  # reopening does not re-run or break anything
    again.migrate()
    assert again.get("code", "k") == {"v": 1}
    assert again.get_document("rp", "app1") is not None
    again.close()
    with closing(raw(db_path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_newer_schema_is_refused(db_path: Path) -> None:
    SQLiteStore(db_path).close()
    with closing(raw(db_path)) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreUnavailable, match="newer"):
        SQLiteStore(db_path)


# -- several connections, threads and processes ----------------------------------------------


def test_two_stores_on_one_file_share_state(db_path: Path, clock: FakeClock) -> None:
    one = SQLiteStore(db_path, clock=clock)
    two = SQLiteStore(db_path, clock=clock)
    try:
        one.put("code", "k", {"v": 1}, ttl=60)
        assert two.get("code", "k") == {"v": 1}
        assert two.take("code", "k") == {"v": 1}
        assert one.get("code", "k") is None
        assert one.take("code", "k") is None
        assert two.add("replay", "id", {"v": 1}, ttl=60) is True
        assert one.add("replay", "id", {"v": 2}, ttl=60) is False
        doc = one.save_document("rp", "app1", {"n": 1}, expected_version=0)
        assert two.get_document("rp", "app1") == doc
    finally:
        one.close()
        two.close()


def test_locked_database_is_unavailable_then_recovers(db_path: Path) -> None:
    timeout_ms = 200
    s = SQLiteStore(db_path, busy_timeout_ms=timeout_ms)
    s.put("code", "k", {"v": "before"}, ttl=60)
    locker = raw(db_path, timeout=0)
    try:
        locker.execute("BEGIN EXCLUSIVE")
        for attempt in (s.ping, lambda: s.put("code", "k", {"secret": "hunter2"}, ttl=60)):
            started = time.monotonic()
            with pytest.raises(StoreUnavailable) as info:
                attempt()
            elapsed = time.monotonic() - started
            # It waited for the busy timeout, and not much longer.
            assert timeout_ms / 1000 * 0.9 <= elapsed < 3.0
            assert "locked" in str(info.value)
            assert "hunter2" not in str(info.value) and "code" not in str(info.value)
    finally:
        locker.rollback()
        locker.close()
    s.ping()
    s.put("code", "k", {"v": "after"}, ttl=60)
    assert s.get("code", "k") == {"v": "after"}
    s.close()


def test_locked_database_at_startup_is_unavailable(db_path: Path) -> None:
    SQLiteStore(db_path).close()
    with closing(raw(db_path)) as conn:
        conn.execute("PRAGMA user_version = 0")  # pretend a migration is pending
    locker = raw(db_path, timeout=0)
    try:
        locker.execute("BEGIN EXCLUSIVE")
        with pytest.raises(StoreUnavailable):
            SQLiteStore(db_path, busy_timeout_ms=100)
    finally:
        locker.rollback()
        locker.close()


def test_garbage_file_is_unavailable(db_path: Path) -> None:
    s = SQLiteStore(db_path)
    s.put("code", "k", {"v": 1}, ttl=60)
    s.close()  # drop pooled connections, as a restarted worker would have none
    for sidecar in (db_path.with_name("bridge.db-wal"), db_path.with_name("bridge.db-shm")):
        sidecar.unlink(missing_ok=True)
    db_path.write_bytes(b"this is not an SQLite database, just garbage\x00\xff" * 100)
    with pytest.raises(StoreUnavailable, match="not a database"):
        s.ping()
    with pytest.raises(StoreUnavailable, match="not a database"):
        s.get("code", "k")
    with pytest.raises(StoreUnavailable, match="not a database"):
        s.put("code", "k", {"v": 2}, ttl=60)
    with pytest.raises(StoreUnavailable, match="not a database"):
        SQLiteStore(db_path)
    s.close()


def test_unusable_path_is_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where a directory should be")
    with pytest.raises(StoreUnavailable):
        SQLiteStore(blocker / "bridge.db")
    with pytest.raises(StoreUnavailable):
        SQLiteStore(tmp_path)  # a directory, not a database file


def test_expired_record_is_purged_from_the_table(
    store: SQLiteStore, db_path: Path, clock: FakeClock
) -> None:
    def rows() -> int:
        with closing(raw(db_path)) as conn:
            return conn.execute("SELECT count(*) FROM records").fetchone()[0]

    store.put("code", "k", {"v": 1}, ttl=30)
    assert rows() == 1
    clock.advance(31)
    assert store.get("code", "k") is None
    assert rows() == 1  # reads never write; the row waits for a purge
    assert store.purge_expired() == 1
    assert rows() == 0


def test_put_purges_expired_records_at_most_once_a_minute(
    store: SQLiteStore, db_path: Path, clock: FakeClock
) -> None:
    def keys() -> set[str]:
        with closing(raw(db_path)) as conn:
            return {r[0] for r in conn.execute("SELECT key FROM records")}

    store.put("code", "a", {"v": 1}, ttl=5)  # the first write purges (nothing to purge yet)
    clock.advance(10)
    store.put("code", "b", {"v": 1}, ttl=5)  # too soon for another purge: "a" stays
    assert keys() == {"a", "b"}
    clock.advance(60)
    assert store.add("code", "c", {"v": 1}, ttl=500) is True  # due: expired rows go first
    assert keys() == {"c"}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_uses_its_own_connections(store: SQLiteStore) -> None:
    # gunicorn --preload forks after the app (and its store) exists: the child must not reuse
    # the parent's pooled SQLite connections.
    store.put("code", "k", {"v": 1}, ttl=60)
    assert store.get("code", "k") == {"v": 1}  # the parent now holds its thread's connection
    parents = store._connections.get()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        outcome = b"E"
        try:
            taken = store.take("code", "k") == {"v": 1}
            outcome = b"1" if taken and store._connections.get() is not parents else b"0"
        finally:
            os.write(write_end, outcome)
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        outcome = pipe.read()
    os.waitpid(pid, 0)
    assert outcome == b"1"
    assert store.get("code", "k") is None  # and the parent's connection still works
    store.put("code", "k2", {"v": 2}, ttl=60)
    assert store.get("code", "k2") == {"v": 2}
    assert store._connections.get() is parents


def _open_files(path: Path) -> int:
    """How many of this process's file descriptors are open on path."""
    fds = Path("/proc/self/fd")
    count = 0
    for fd in fds.iterdir():
        try:
            count += os.readlink(fd) == str(path)
        except OSError:
            pass  # closed while we looked
    return count


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_threads_connections_end_with_their_threads(store: SQLiteStore, db_path: Path) -> None:
    # Record reads and writes use a connection of the calling thread's own; a server that
    # starts a thread per request (Flask's development server) must not pile them up.
    store.put("code", "k", {"v": 1}, ttl=60)
    seen: list[bool] = []
    open_after: list[int] = []

    def use() -> None:
        seen.append(store.get("code", "k") == {"v": 1})
        store.put("code", f"t{threading.get_ident()}", {"v": 2}, ttl=60)

    for _ in range(5):
        threads = [threading.Thread(target=use) for _ in range(10)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        gc.collect()
        open_after.append(_open_files(db_path))
        # Only the main thread's connection is still held by the store.
        assert len(store._connections._held) == 1
    assert seen == [True] * 50
    # SQLite keeps a closed connection's descriptor for reuse while others hold locks on the
    # file, so the count settles at the most threads ever at once; it must not keep growing.
    assert open_after[1:] == open_after[:-1]
    store.close()  # closes the main thread's connection too; the next use reopens one
    assert _open_files(db_path) == 0
    assert store.get("code", "k") == {"v": 1}


def _worker(path: str, barrier: Any, index: int, results: Any, counts: Any) -> None:
    """Child process: create/open the store with the others, then race them for one key."""
    barrier.wait(timeout=60)  # 1: every worker opens (and so migrates) a brand-new file at once
    store = SQLiteStore(path)
    try:
        store.put("worker", str(index), {"index": index}, ttl=600)
        barrier.wait(timeout=60)  # 2: all opened; the parent now puts the one-time code
        barrier.wait(timeout=60)  # 3: go
        results.put(store.take("code", "once"))
        counts.put([store.count("failures", "shared", ttl=600) for _ in range(10)])
    finally:
        store.close()


def test_processes_create_the_database_then_only_one_takes(db_path: Path) -> None:
    # One test for three races (create, take, count) because spawning interpreters is slow.
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(PROCESSES + 1)
    results = ctx.Queue()
    counts = ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(str(db_path), barrier, i, results, counts))
        for i in range(PROCESSES)
    ]
    for proc in procs:
        proc.start()
    try:
        barrier.wait(timeout=60)
        barrier.wait(timeout=60)
        s = SQLiteStore(db_path)
        s.put("code", "once", {"secret": "s3cr3t"}, ttl=600)
        barrier.wait(timeout=60)
        got = [results.get(timeout=60) for _ in range(PROCESSES)]
        counted = sorted(n for _ in range(PROCESSES) for n in counts.get(timeout=60))
    finally:
        for proc in procs:
            proc.join(timeout=60)
            if proc.is_alive():
                proc.kill()
    assert [proc.exitcode for proc in procs] == [0] * PROCESSES
    assert [r for r in got if r is not None] == [{"secret": "s3cr3t"}]
    assert counted == list(range(1, PROCESSES * 10 + 1))  # no increment lost across processes
    assert s.get("code", "once") is None
    assert [s.get("worker", str(i)) for i in range(PROCESSES)] == [
        {"index": i} for i in range(PROCESSES)
    ]
    s.close()
    with closing(raw(db_path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert stat.S_IMODE(db_path.stat().st_mode) == 0o600


def test_wal_switch_retries_while_another_worker_holds_the_new_file(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another worker has just created the file and is writing to it (RESERVED lock, still in
    # rollback-journal mode). SQLite refuses our switch to WAL at once, without consulting the
    # busy handler, so the store must retry by itself within its busy timeout.
    db_path.parent.mkdir(mode=0o700)
    db_path.touch(mode=0o600)
    locker = raw(db_path, timeout=0)
    locker.execute("BEGIN IMMEDIATE")
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="locked"):
        SQLiteStore(db_path, busy_timeout_ms=200)
    assert 0.18 <= time.monotonic() - started < 3.0

    real_sleep = time.sleep

    def sleep_then_release(seconds: float) -> None:
        # The store is backing off: the other worker finishes now.
        if locker.in_transaction:
            locker.rollback()
        real_sleep(seconds)

    monkeypatch.setattr(time, "sleep", sleep_then_release)
    s = SQLiteStore(db_path, busy_timeout_ms=5000)
    assert not locker.in_transaction  # it did have to wait for the other worker
    locker.close()
    s.put("code", "k", {"v": 1}, ttl=60)
    assert s.get("code", "k") == {"v": 1}
    s.close()
    with closing(raw(db_path)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
