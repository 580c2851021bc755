"""The store on PostgreSQL with two center processes' stores (issue 14): a put that
races another store's put of the same instance answers DUPLICATE, not an error."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psycopg
from _data import ct_series
from _pg import PgCluster
from _wait import until

from fenji.gateway.dicom.validate import check_part10
from fenji.gateway.store.db import PutOutcome, PutStatus, Store
from fenji.gateway.store.index_pg import PgIndex


def test_a_put_racing_another_stores_put_of_the_instance_is_a_duplicate(
        tmp_path: Path, pg_cluster: PgCluster) -> None:
    url = pg_cluster.new_database()
    a, b = Store(tmp_path / "a", index_url=url), Store(tmp_path / "b", index_url=url)
    data = ct_series()[0].read_bytes()
    info = check_part10(data).info
    outcome: list[PutOutcome | BaseException] = []

    def put_b() -> None:
        try:
            outcome.append(b.put(data, info, calling_ae="CT2"))
        except BaseException as exc:  # noqa: BLE001 - the assertion below names it
            outcome.append(exc)

    with a.atomic() as con:  # A is indexing the instance and has not committed yet
        a.index.lock(con, info.sop_instance_uid)
        Store._index(con, info, "a" * 64, len(data), time.time(), "CT1", None)
        t = threading.Thread(target=put_b)
        t.start()
        with psycopg.connect(url, autocommit=True) as watch:  # B waits on A's lock
            until(lambda: watch.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND query LIKE '%%pg_advisory_xact_lock%%'").fetchone()[0] > 0,
                60, "the second put to wait for the first")
    t.join(60)
    assert len(outcome) == 1 and isinstance(outcome[0], PutOutcome), outcome
    assert outcome[0].status is PutStatus.DUPLICATE
    assert a.count_instances() == 1
    a.close()
    b.close()


def test_a_wake_up_listener_hears_other_connections_and_comes_back_after_a_cut(
        pg_cluster: PgCluster) -> None:
    """What wakes a center's senders on other machines: a NOTIFY through the index
    reaches a listener on another connection, and a listener whose connection the
    server ends reconnects and hears the next one."""
    url = pg_cluster.new_database()
    a, b = PgIndex(url), PgIndex(url)
    heard: list[int] = []
    listener = b.listen("fenji_test_wake", lambda: heard.append(1))
    try:
        until(lambda: listener.listening.is_set() and heard, 60, "listening")
        n = len(heard)
        a.notify("fenji_test_wake")
        until(lambda: len(heard) > n, 60, "the notification")
        with a.atomic() as con:  # the server ends the listener's session
            cut = con.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE query LIKE ? AND pid <> pg_backend_pid()",
                              ("LISTEN%",)).fetchall()
        assert len(cut) == 1
        n = len(heard)
        until(lambda: listener.listening.is_set() and len(heard) > n, 60, "listening again")
        n = len(heard)
        a.notify("fenji_test_wake")
        until(lambda: len(heard) > n, 60, "a notification after the cut")
    finally:
        listener.close()
        a.close()
        b.close()
    assert not listener.listening.is_set()
