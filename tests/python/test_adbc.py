"""Python ADBC (adbc_driver_flightsql DB-API) against `flowengine serve`."""
import threading
import time
import uuid

import pyarrow as pa
import pytest
from adbc_driver_flightsql import dbapi
import adbc_driver_manager


def test_execute_and_fetch_arrow_table(conn):
    # The DB-API prepares every statement first: this exercises the prepared path.
    with conn.cursor() as cur:
        cur.execute("SELECT country, orders, revenue FROM revenue_by_country ORDER BY country")
        table = cur.fetch_arrow_table()
    assert table.num_rows > 3
    assert table.column_names == ["country", "orders", "revenue"]
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM orders WHERE status = 'paid'")
        (paid,) = cur.fetchone()
    assert sum(table.column("orders").to_pylist()) == paid


def test_parameters(conn):
    with conn.cursor() as cur:
        results = []
        for q in (1, 3, 5):
            cur.execute("SELECT count(*) FROM orders WHERE quantity >= ? AND status = ?", (q, "paid"))
            results.append(cur.fetchone()[0])
        assert results[0] > results[1] > results[2]
        cur.execute("SELECT count(*) FROM orders WHERE quantity >= $1 AND status = $2", (3, "paid"))
        assert cur.fetchone()[0] == results[1]


def test_ddl_dml_and_executemany(conn):
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE py_t (id BIGINT, name VARCHAR)")
        cur.executemany("INSERT INTO py_t VALUES (?, ?)", [(1, "a"), (2, "b"), (3, "c")])
        cur.execute("SELECT id, name FROM py_t ORDER BY id")
        assert cur.fetchall() == [(1, "a"), (2, "b"), (3, "c")]


def test_get_objects_and_table_schema(conn):
    objects = conn.adbc_get_objects(depth="all").read_all().to_pylist()
    catalog = next(c for c in objects if c["catalog_name"] == "datafusion")
    schema = next(s for s in catalog["catalog_db_schemas"] if s["db_schema_name"] == "public")
    tables = {t["table_name"]: t for t in schema["db_schema_tables"]}
    assert "orders" in tables and "revenue_by_country" in tables
    columns = [c["column_name"] for c in tables["orders"]["table_columns"]]
    assert "unit_price" in columns
    s = conn.adbc_get_table_schema("orders")
    assert s.field("order_id").type == pa.int64()
    assert conn.adbc_get_table_types() == ["TABLE", "VIEW", "LOCAL TEMPORARY"]
    info = conn.adbc_get_info()
    assert info["vendor_name"] == "FlowEngine"


def test_ingest_create_append_replace(conn):
    data = pa.table({"id": pa.array(range(100_000), pa.int64()), "v": pa.array([1.5] * 100_000)})
    with conn.cursor() as cur:
        assert cur.adbc_ingest("py_ingest", data, mode="create") == 100_000
        cur.adbc_ingest("py_ingest", data.slice(0, 10), mode="append")
        cur.execute("SELECT count(*), sum(v) FROM py_ingest")
        assert cur.fetchone() == (100_010, 150_015.0)
        cur.adbc_ingest("py_ingest", data.slice(0, 5), mode="replace")
        cur.execute("SELECT count(*) FROM py_ingest")
        assert cur.fetchone()[0] == 5
        with pytest.raises(adbc_driver_manager.Error):
            cur.adbc_ingest("py_ingest", data.slice(0, 5), mode="create")


def test_errors_are_clear(conn):
    with conn.cursor() as cur:
        with pytest.raises(adbc_driver_manager.Error) as e:
            cur.execute("SELECT * FROM no_such_table")
        assert "no_such_table" in str(e.value)
        with pytest.raises(adbc_driver_manager.Error) as e:
            cur.execute("SELECT * FROM orders WHERE quantity = ?", ("not a number",))
        assert "$1" in str(e.value) or "parameter" in str(e.value).lower()
        # Still usable afterwards.
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)


def test_cancel(uri):
    with dbapi.connect(uri) as conn:
        cur = conn.cursor()
        error = []

        def run():
            try:
                cur.execute("SELECT count(*) FROM range(2000000000) WHERE value % 7 = 3")
                cur.fetchall()
            except Exception as e:  # noqa: BLE001 - we assert on it below
                error.append(e)

        t = threading.Thread(target=run)
        started = time.time()
        t.start()
        time.sleep(1.0)
        cur.adbc_cancel()
        t.join(30)
        assert not t.is_alive()
        assert error, "the query should have been cancelled"
        assert time.time() - started < 30


def test_checks_and_incremental_views_over_flight(conn):
    """FlowEngine's own statements work over Flight SQL as in `flowengine run`: a check returns
    its outcome as a row and is recorded in system.quality_results (a failing ERROR check fails
    the statement); an incremental view is a view over its source."""
    suffix = uuid.uuid4().hex[:8]
    with conn.cursor() as cur:
        cur.execute(f"CREATE CHECK py_qty_{suffix} ON orders EXPECT quantity > 3 WARN")
        name, table, severity, status, failing, sample = cur.fetchone()
        cur.execute("SELECT count(*) FROM orders WHERE (quantity > 3) IS NOT TRUE")
        expected = cur.fetchone()[0]
        assert (name, table, severity, status, failing) == (
            f"py_qty_{suffix}", "orders", "warn", "warned", expected
        )
        assert expected > 0 and "quantity" in sample

        cur.execute(f"CREATE CHECK py_ids_{suffix} ON orders UNIQUE (order_id)")
        assert cur.fetchone()[3] == "passed"

        with pytest.raises(Exception, match=f"check py_paid_{suffix} on orders: .* failing row"):
            cur.execute(f"CREATE CHECK py_paid_{suffix} ON orders EXPECT status = 'paid'")
            cur.fetchall()

        cur.execute(
            "SELECT check_name, status, failing_rows, pipeline FROM system.quality_results "
            f"WHERE check_name IN ('py_qty_{suffix}', 'py_ids_{suffix}', 'py_paid_{suffix}') "
            "ORDER BY check_name"
        )
        rows = cur.fetchall()
        assert [(r[0], r[1]) for r in rows] == [
            (f"py_ids_{suffix}", "passed"),
            (f"py_paid_{suffix}", "failed"),
            (f"py_qty_{suffix}", "warned"),
        ]
        assert rows[2][2] == expected
        assert all(r[3].startswith("flight-sql:") for r in rows), rows

        cur.execute(f"CREATE INCREMENTAL VIEW py_new_{suffix} ON orders BY order_id")
        cur.execute(f"SELECT count(*), max(order_id) FROM py_new_{suffix}")
        via_view = cur.fetchone()
        cur.execute("SELECT count(*), max(order_id) FROM orders")
        assert via_view == cur.fetchone()
