"""The one conformance suite every `Store` backend passes.

A backend's test module subclasses `StoreConformance` and provides the `store` fixture, building
the backend with the `clock` fixture (a `FakeClock`) so expiry is tested by moving time, never by
sleeping::

    class TestSQLiteConformance(StoreConformance):
        @pytest.fixture
        def store(self, tmp_path, clock):
            s = SQLiteStore(tmp_path / "bridge.db", clock=clock)
            yield s
            s.close()
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, TypeVar

import pytest

from bridge.store import AuditEvent, Store, VersionConflict

T = TypeVar("T")

RACERS = 20
T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)

# Keys that would break naive SQL building, LIKE patterns, encodings or size limits.
AWKWARD_KEYS = [
    "ключ-鍵-🔑",
    'it\'s a "quoted" key; DROP TABLE records; --',
    "100%",
    "a_c",
    "back\\slash",
    "tab\tnew\nline",
    " leading and trailing spaces ",
    "é" * 5120,  # 10 KB of UTF-8
    "".join(chr(0x20 + i % 0x5F) for i in range(10 * 1024)),  # 10 KB of printable ASCII
]


class FakeClock:
    """A controllable clock: call it for the time; `advance` moves it forward."""

    def __init__(self, now: float = 1_714_564_800.0) -> None:
        """Start at `now` (Unix time)."""
        self.now = now

    def __call__(self) -> float:
        """Return the current fake time."""
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by `seconds`."""
        self.now += seconds


def race(n: int, action: Callable[[int], T]) -> list[T]:
    """Run action(i) in n threads released together by a barrier; return results, re-raise."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[i] = action(i)
        except BaseException as exc:  # collected and re-raised in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "racing threads did not finish"
    if errors:
        raise errors[0]
    return results


def audit_event(minutes: float, **fields: Any) -> AuditEvent:
    """An audit event `minutes` after T0, with defaults for the required fields."""
    fields.setdefault("event", "login")
    fields.setdefault("outcome", "success")
    return AuditEvent(time=T0 + timedelta(minutes=minutes), **fields)


class StoreConformance:
    """Behaviour every backend must show; subclasses provide the `store` fixture."""

    @pytest.fixture
    def clock(self) -> FakeClock:
        """The fake clock the backend under test must read its time from."""
        return FakeClock()

    @pytest.fixture
    def store(self, clock: FakeClock) -> Store:
        """The backend under test, built with `clock`; every backend module overrides this."""
        raise NotImplementedError("a backend's test class must provide the store fixture")

    # -- records ------------------------------------------------------------------------------

    def test_put_get_round_trip(self, store: Store) -> None:
        value = {"s": "x", "n": 1, "f": 1.5, "b": True, "none": None, "list": [1, {"a": []}]}
        store.put("code", "k1", value, ttl=60)
        assert store.get("code", "k1") == value

    def test_get_returns_a_copy_not_shared_state(self, store: Store) -> None:
        store.put("code", "k1", {"a": [1]}, ttl=60)
        got = store.get("code", "k1")
        assert got is not None
        got["a"].append(2)
        assert store.get("code", "k1") == {"a": [1]}

    def test_put_replaces_value_and_ttl(self, store: Store, clock: FakeClock) -> None:
        store.put("code", "k1", {"v": 1}, ttl=10)
        store.put("code", "k1", {"v": 2}, ttl=100)
        assert store.get("code", "k1") == {"v": 2}
        clock.advance(50)
        assert store.get("code", "k1") == {"v": 2}

    def test_get_missing_is_none(self, store: Store) -> None:
        assert store.get("code", "nope") is None

    def test_record_expires_when_clock_advances(self, store: Store, clock: FakeClock) -> None:
        store.put("code", "k1", {"v": 1}, ttl=30)
        clock.advance(29.5)
        assert store.get("code", "k1") == {"v": 1}
        clock.advance(0.5)  # live iff expires_at > now: gone exactly at expiry
        assert store.get("code", "k1") is None

    def test_fractional_ttl(self, store: Store, clock: FakeClock) -> None:
        store.put("code", "k1", {"v": 1}, ttl=0.25)
        assert store.get("code", "k1") == {"v": 1}
        clock.advance(0.3)
        assert store.get("code", "k1") is None

    def test_take_returns_once(self, store: Store) -> None:
        store.put("code", "k1", {"v": 1}, ttl=60)
        assert store.take("code", "k1") == {"v": 1}
        assert store.take("code", "k1") is None
        assert store.get("code", "k1") is None

    def test_take_missing_is_none(self, store: Store) -> None:
        assert store.take("code", "nope") is None

    def test_take_expired_is_none(self, store: Store, clock: FakeClock) -> None:
        store.put("code", "k1", {"v": 1}, ttl=5)
        clock.advance(6)
        assert store.take("code", "k1") is None

    def test_concurrent_take_only_one_wins(self, store: Store) -> None:
        store.put("code", "once", {"secret": "s3cr3t"}, ttl=60)
        results = race(RACERS, lambda _i: store.take("code", "once"))
        assert [r for r in results if r is not None] == [{"secret": "s3cr3t"}]

    def test_add_is_put_if_absent(self, store: Store) -> None:
        assert store.add("replay", "id1", {"v": 1}, ttl=60) is True
        assert store.add("replay", "id1", {"v": 2}, ttl=60) is False
        assert store.get("replay", "id1") == {"v": 1}

    def test_add_over_expired_record(self, store: Store, clock: FakeClock) -> None:
        store.put("replay", "id1", {"v": 1}, ttl=5)
        clock.advance(5)
        assert store.add("replay", "id1", {"v": 2}, ttl=60) is True
        assert store.get("replay", "id1") == {"v": 2}
        clock.advance(30)  # the new record carries the new ttl, not the old expiry
        assert store.get("replay", "id1") == {"v": 2}

    def test_add_after_take_and_delete(self, store: Store) -> None:
        assert store.add("replay", "id1", {"v": 1}, ttl=60) is True
        store.take("replay", "id1")
        assert store.add("replay", "id1", {"v": 2}, ttl=60) is True
        store.delete("replay", "id1")
        assert store.add("replay", "id1", {"v": 3}, ttl=60) is True

    def test_concurrent_add_only_one_wins(self, store: Store) -> None:
        results = race(RACERS, lambda i: store.add("replay", "assertion-1", {"by": i}, ttl=60))
        assert results.count(True) == 1
        assert results.count(False) == RACERS - 1
        assert store.get("replay", "assertion-1") == {"by": results.index(True)}

    def test_count_starts_at_one_and_keeps_its_window(
        self, store: Store, clock: FakeClock
    ) -> None:
        assert [store.count("failures", "u1", ttl=60) for _ in range(3)] == [1, 2, 3]
        assert store.count("failures", "u2", ttl=60) == 1  # keys are independent
        assert store.get("failures", "u1") == {"count": 3}
        clock.advance(59)
        assert store.count("failures", "u1", ttl=60) == 4  # a hit does not extend the window
        clock.advance(1)
        assert store.get("failures", "u1") is None
        assert store.count("failures", "u1", ttl=60) == 1
        store.delete("failures", "u1")
        assert store.count("failures", "u1", ttl=60) == 1

    def test_count_down_never_goes_below_zero(self, store: Store, clock: FakeClock) -> None:
        assert store.count("failures", "u1", ttl=60, by=-1) == 0
        assert store.get("failures", "u1") is None  # nothing stored for a count-down
        assert store.count("failures", "u1", ttl=60, by=2) == 2
        clock.advance(30)
        assert store.count("failures", "u1", ttl=60, by=-1) == 1
        assert store.count("failures", "u1", ttl=60, by=-5) == 0
        assert store.get("failures", "u1") == {"count": 0}
        clock.advance(30)  # counting down kept the window it had
        assert store.get("failures", "u1") is None

    def test_concurrent_counts_lose_nothing(self, store: Store) -> None:
        results = race(RACERS, lambda _i: [store.count("failures", "u", ttl=60)
                                           for _ in range(5)])
        counts = sorted(n for per_thread in results for n in per_thread)
        assert counts == list(range(1, RACERS * 5 + 1))

    def test_delete(self, store: Store) -> None:
        store.put("code", "k1", {"v": 1}, ttl=60)
        store.put("code", "k2", {"v": 2}, ttl=60)
        store.delete("code", "k1")
        assert store.get("code", "k1") is None
        assert store.get("code", "k2") == {"v": 2}
        store.delete("code", "k1")  # deleting what is absent is fine
        store.delete("code", "never-existed")

    @pytest.mark.parametrize("ttl", [0, -1, -0.001])
    def test_ttl_must_be_positive(self, store: Store, ttl: float) -> None:
        with pytest.raises(ValueError):
            store.put("code", "k1", {"v": 1}, ttl=ttl)
        with pytest.raises(ValueError):
            store.add("code", "k1", {"v": 1}, ttl=ttl)
        assert store.get("code", "k1") is None

    @pytest.mark.parametrize(
        "value",
        [
            {"when": datetime(2024, 1, 1)},
            {"raw": b"bytes"},
            {"set": {1, 2}},
            {"nested": {"obj": object()}},
            {"nan": float("nan")},
            ["not", "a", "mapping"],
            "not a mapping",
            None,
        ],
        ids=["datetime", "bytes", "set", "object", "nan", "list", "str", "none"],
    )
    def test_non_json_value_rejected_and_nothing_written(self, store: Store, value: Any) -> None:
        store.put("code", "keep", {"v": "old"}, ttl=60)
        with pytest.raises(TypeError):
            store.put("code", "k1", value, ttl=60)
        with pytest.raises(TypeError):
            store.add("code", "k1", value, ttl=60)
        with pytest.raises(TypeError):
            store.put("code", "keep", value, ttl=60)
        assert store.get("code", "k1") is None
        assert store.get("code", "keep") == {"v": "old"}

    def test_kinds_are_isolated_namespaces(self, store: Store) -> None:
        store.put("a", "k", {"from": "a"}, ttl=60)
        store.put("b", "k", {"from": "b"}, ttl=60)
        assert store.get("a", "k") == {"from": "a"}
        assert store.take("b", "k") == {"from": "b"}
        assert store.get("a", "k") == {"from": "a"}
        assert store.add("b", "k", {"from": "b2"}, ttl=60) is True
        store.delete("a", "k")
        assert store.get("b", "k") == {"from": "b2"}
        assert store.get("ab", "") is None and store.get("", "ak") is None

    @pytest.mark.parametrize("key", AWKWARD_KEYS, ids=range(len(AWKWARD_KEYS)))
    def test_awkward_keys_round_trip(self, store: Store, key: str) -> None:
        value = {"key": key, key: "as a field name too"}
        store.put(key, key, value, ttl=60)
        assert store.get(key, key) == value
        assert store.take(key, key) == value
        assert store.add(key, key, value, ttl=60) is True
        saved = store.save_document(key, key, value, expected_version=0)
        assert saved.key == key
        got = store.get_document(key, key)
        assert got is not None and got.key == key and got.body == value
        assert [d.key for d in store.list_documents(key)] == [key]

    def test_wildcard_characters_are_literal(self, store: Store) -> None:
        store.put("code", "a%", {"v": 1}, ttl=60)
        store.put("code", "a_c", {"v": 2}, ttl=60)
        assert store.get("code", "abc") is None
        assert store.get("code", "a") is None
        assert store.take("code", "abc") is None
        store.delete("code", "a")
        assert store.get("code", "a%") == {"v": 1}
        assert store.get("code", "a_c") == {"v": 2}

    def test_large_and_unicode_values_round_trip(self, store: Store) -> None:
        value = {"text": "ünïcödé 🔑 \u2028 \"'\\", "big": "x" * 10240}
        store.put("code", "k1", value, ttl=60)
        assert store.get("code", "k1") == value

    # -- documents ----------------------------------------------------------------------------

    def test_document_create_and_get(self, store: Store, clock: FakeClock) -> None:
        assert store.get_document("rp", "app1") is None
        saved = store.save_document("rp", "app1", {"name": "App 1"}, expected_version=0)
        assert (saved.kind, saved.key, saved.version, saved.body) == (
            "rp",
            "app1",
            1,
            {"name": "App 1"},
        )
        assert saved.updated_at.tzinfo is not None
        assert abs(saved.updated_at.timestamp() - clock.now) < 1e-3
        assert store.get_document("rp", "app1") == saved

    def test_document_update_with_right_version(self, store: Store, clock: FakeClock) -> None:
        store.save_document("rp", "app1", {"n": 1}, expected_version=0)
        clock.advance(10)
        saved = store.save_document("rp", "app1", {"n": 2}, expected_version=1)
        assert saved.version == 2 and saved.body == {"n": 2}
        assert abs(saved.updated_at.timestamp() - clock.now) < 1e-3
        assert store.get_document("rp", "app1") == saved
        assert store.save_document("rp", "app1", {"n": 3}, expected_version=2).version == 3

    def test_document_stale_version_conflicts_and_changes_nothing(self, store: Store) -> None:
        store.save_document("rp", "app1", {"n": 1}, expected_version=0)
        current = store.save_document("rp", "app1", {"n": 2}, expected_version=1)
        for stale in (1, 3, 7):
            with pytest.raises(VersionConflict):
                store.save_document("rp", "app1", {"n": "lost"}, expected_version=stale)
        assert store.get_document("rp", "app1") == current

    def test_document_create_conflicts_when_it_exists(self, store: Store) -> None:
        current = store.save_document("rp", "app1", {"n": 1}, expected_version=0)
        with pytest.raises(VersionConflict):
            store.save_document("rp", "app1", {"n": "lost"}, expected_version=0)
        assert store.get_document("rp", "app1") == current

    def test_document_update_of_missing_conflicts(self, store: Store) -> None:
        with pytest.raises(VersionConflict):
            store.save_document("rp", "ghost", {"n": 1}, expected_version=1)
        assert store.get_document("rp", "ghost") is None

    def test_document_non_json_body_rejected(self, store: Store) -> None:
        with pytest.raises(TypeError):
            store.save_document("rp", "app1", {"bad": object()}, expected_version=0)
        assert store.get_document("rp", "app1") is None

    def test_document_delete_with_version(self, store: Store) -> None:
        store.save_document("rp", "app1", {"n": 1}, expected_version=0)
        store.save_document("rp", "app1", {"n": 2}, expected_version=1)
        with pytest.raises(VersionConflict):
            store.delete_document("rp", "app1", expected_version=1)
        assert store.get_document("rp", "app1") is not None
        store.delete_document("rp", "app1", expected_version=2)
        assert store.get_document("rp", "app1") is None
        with pytest.raises(VersionConflict):
            store.delete_document("rp", "app1", expected_version=2)
        # After a delete the key can be created afresh.
        assert store.save_document("rp", "app1", {"n": 3}, expected_version=0).version == 1

    def test_list_documents_ordered_by_key_and_per_kind(self, store: Store) -> None:
        keys = ["b", "a", "C", "aa", "ä", "Z", "a b"]
        for key in keys:
            store.save_document("rp", key, {"k": key}, expected_version=0)
        store.save_document("rules", "a", {"other": True}, expected_version=0)
        listed = store.list_documents("rp")
        assert [d.key for d in listed] == sorted(keys)  # code point order, as Python sorts
        assert all(d.kind == "rp" and d.body == {"k": d.key} for d in listed)
        assert [d.key for d in store.list_documents("rules")] == ["a"]
        assert store.list_documents("empty") == []

    def test_documents_and_records_do_not_mix(self, store: Store) -> None:
        store.put("rp", "app1", {"record": True}, ttl=60)
        assert store.get_document("rp", "app1") is None
        store.save_document("rp", "app1", {"document": True}, expected_version=0)
        assert store.get("rp", "app1") == {"record": True}

    @pytest.mark.parametrize("expected", [0, 1])
    def test_concurrent_save_only_one_wins(self, store: Store, expected: int) -> None:
        if expected:
            store.save_document("rp", "app1", {"writer": "setup"}, expected_version=0)

        def save(i: int) -> bool:
            try:
                store.save_document("rp", "app1", {"writer": i}, expected_version=expected)
            except VersionConflict:
                return False
            return True

        results = race(RACERS, save)
        assert results.count(True) == 1
        current = store.get_document("rp", "app1")
        assert current is not None
        assert current.version == expected + 1
        assert current.body == {"writer": results.index(True)}

    # -- audit trail --------------------------------------------------------------------------

    def test_audit_round_trip(self, store: Store) -> None:
        event = AuditEvent(
            event="login",
            outcome="failure",
            time=datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC),
            username="alice",
            subject="S-1-5-21-1",
            source="ad",
            client_ip="192.0.2.1",
            user_agent="Mozilla/5.0 ü",
            request_id="req-1",
            detail={"reason": "bad_password", "attempt": 3},
        )
        store.append_audit(event)
        minimal = audit_event(1)
        store.append_audit(minimal)
        assert store.query_audit() == [minimal, event]
        got = store.query_audit()[1]
        assert got.time.utcoffset() == timedelta(0)
        assert got.time == event.time  # microseconds survive

    def test_audit_time_in_other_timezone_is_normalised(self, store: Store) -> None:
        plus_two = timezone(timedelta(hours=2))
        event = AuditEvent(event="login", outcome="success", time=T0.astimezone(plus_two))
        store.append_audit(event)
        store.append_audit(audit_event(-1, outcome="earlier"))
        got = store.query_audit()
        assert got[0].time == T0 and got[0].time.utcoffset() == timedelta(0)
        assert got[1].outcome == "earlier"

    def test_audit_newest_first_and_limit(self, store: Store) -> None:
        # Appended out of time order: the result is by event time, not insertion order.
        for minute in (3, 1, 4, 0, 2):
            store.append_audit(audit_event(minute, request_id=f"r{minute}"))
        assert [e.request_id for e in store.query_audit()] == ["r4", "r3", "r2", "r1", "r0"]
        assert [e.request_id for e in store.query_audit(limit=2)] == ["r4", "r3"]
        assert store.query_audit(limit=0) == []

    def test_audit_default_limit_is_100(self, store: Store) -> None:
        for i in range(105):
            store.append_audit(audit_event(i))
        got = store.query_audit()
        assert len(got) == 100
        assert got[0].time == T0 + timedelta(minutes=104)

    def test_audit_filters(self, store: Store) -> None:
        store.append_audit(audit_event(0, username="alice", outcome="success", event="login"))
        store.append_audit(audit_event(1, username="alice", outcome="failure", event="login"))
        store.append_audit(audit_event(2, username="bob", outcome="failure", event="login"))
        store.append_audit(audit_event(3, username="bob", outcome="success", event="logout"))
        store.append_audit(audit_event(4, outcome="success", event="token"))

        def minutes(**filters: Any) -> list[int]:
            got = store.query_audit(**filters)
            return [int((e.time - T0).total_seconds() // 60) for e in got]

        assert minutes(username="alice") == [1, 0]
        assert minutes(outcome="failure") == [2, 1]
        assert minutes(event="logout") == [3]
        assert minutes(username="bob", outcome="failure") == [2]
        assert minutes(username="bob", event="login", outcome="success") == []
        assert minutes(username="al%") == [] and minutes(username="_lice") == []
        assert minutes(username="carol") == []

    def test_audit_time_range(self, store: Store) -> None:
        for minute in range(6):
            store.append_audit(audit_event(minute, username="alice" if minute % 2 else "bob"))

        def minutes(**filters: Any) -> list[int]:
            got = store.query_audit(**filters)
            return [int((e.time - T0).total_seconds() // 60) for e in got]

        at = lambda m: T0 + timedelta(minutes=m)  # noqa: E731
        assert minutes(since=at(2)) == [5, 4, 3, 2]  # since is inclusive
        assert minutes(until=at(2)) == [1, 0]  # until is exclusive
        assert minutes(since=at(1), until=at(4)) == [3, 2, 1]
        assert minutes(since=at(1.5), until=at(4.5), username="alice") == [3]
        assert minutes(since=at(4), until=at(4)) == []
        assert minutes(since=at(1), limit=2) == [5, 4]

    # -- maintenance --------------------------------------------------------------------------

    def test_purge_expired_removes_expired_records_and_old_audit(
        self, store: Store, clock: FakeClock
    ) -> None:
        for i in range(3):
            store.put("code", f"old{i}", {"i": i}, ttl=5)
        store.put("code", "live", {"v": 1}, ttl=1000)
        store.add("replay", "live", {"v": 2}, ttl=1000)
        store.save_document("rp", "app1", {"n": 1}, expected_version=0)
        for minute in (0, 1, 2, 10):
            store.append_audit(audit_event(minute))
        clock.advance(10)

        assert store.purge_expired(audit_before=T0 + timedelta(minutes=2)) == 3 + 2
        assert store.purge_expired(audit_before=T0 + timedelta(minutes=2)) == 0
        assert store.get("code", "live") == {"v": 1}
        assert store.get("replay", "live") == {"v": 2}
        assert store.get_document("rp", "app1") is not None
        assert [e.time for e in store.query_audit()] == [
            T0 + timedelta(minutes=10),
            T0 + timedelta(minutes=2),
        ]

    def test_purge_without_audit_cutoff_keeps_audit(self, store: Store, clock: FakeClock) -> None:
        store.put("code", "old", {"v": 1}, ttl=1)
        store.append_audit(audit_event(0))
        clock.advance(2)
        assert store.purge_expired() == 1
        assert len(store.query_audit()) == 1

    def test_ping(self, store: Store) -> None:
        store.ping()
        store.ping()  # repeatable: its write check leaves nothing behind
