"""Python ADBC and pyarrow.flight against a `flowengine serve` with `[security]` configured.
Started by tests/python_clients.rs, which passes the address and credentials in FLOWENGINE_*
variables."""
import os

import adbc_driver_manager
import pyarrow.flight as flight
import pytest
from adbc_driver_flightsql import DatabaseOptions, dbapi

URI = os.environ.get("FLOWENGINE_FLIGHT_URI", "")
PASSWORD = os.environ.get("FLOWENGINE_TEST_PASSWORD", "")
API_KEY = os.environ.get("FLOWENGINE_TEST_API_KEY", "")
CA_FILE = os.environ.get("FLOWENGINE_TEST_CA", "")
TLS_ROOTS = "adbc.flight.sql.client_option.tls_root_certs"


@pytest.fixture(autouse=True)
def _configured():
    if not (URI and PASSWORD and API_KEY and CA_FILE):
        pytest.fail("run through `cargo test --test python_clients`")


def ca_pem():
    with open(CA_FILE) as f:
        return f.read()


def connect(**kwargs):
    # The server speaks TLS with a certificate from the test's own CA.
    return dbapi.connect(URI, db_kwargs={TLS_ROOTS: ca_pem(), **kwargs})


def test_server_is_tls_only_and_checks_the_certificate():
    assert URI.startswith("grpc+tls://")
    # Without the test CA the server's certificate is not trusted.
    with pytest.raises(adbc_driver_manager.Error):
        with dbapi.connect(URI, db_kwargs={"username": "ana", "password": PASSWORD}) as conn, conn.cursor() as cur:
            cur.execute("SELECT 1")


def test_login_with_user_and_password_then_query():
    with connect(username="ana", password=PASSWORD) as conn, conn.cursor() as cur:
        cur.execute("SELECT sum(amount) FROM orders")
        # The row filter limits ana to region 'eu' (10 + 30).
        assert cur.fetchone()[0] == 40


def test_wrong_password_and_no_credentials_are_refused():
    with pytest.raises(adbc_driver_manager.Error) as e:
        with connect(username="ana", password="wrong") as conn, conn.cursor() as cur:
            cur.execute("SELECT 1")
    assert "invalid user name or password" in str(e.value)
    with pytest.raises(adbc_driver_manager.Error) as e:
        with connect() as conn, conn.cursor() as cur:
            cur.execute("SELECT 1")
    assert "authentication required" in str(e.value).lower() or "unauthenticated" in str(e.value).lower()


def test_api_key_as_bearer_header():
    kwargs = {DatabaseOptions.AUTHORIZATION_HEADER.value: f"Bearer {API_KEY}"}
    with connect(**kwargs) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM orders")
        assert cur.fetchone()[0] == 3


def test_grants_and_masks_through_adbc():
    with connect(username="ana", password=PASSWORD) as conn:
        with conn.cursor() as cur:
            with pytest.raises(adbc_driver_manager.Error) as e:
                cur.execute("SELECT * FROM salaries")
            assert "lacks SELECT" in str(e.value)
        with conn.cursor() as cur:
            # A parameterised statement over a forbidden table is refused too.
            with pytest.raises(adbc_driver_manager.Error) as e:
                cur.execute("SELECT * FROM pay_view WHERE id = ?", (1,))
            assert "lacks SELECT" in str(e.value)
        with conn.cursor() as cur:
            cur.execute("SELECT email FROM customers ORDER BY id")
            assert [r[0] for r in cur.fetchall()] == ["***", "***"]
        objects = conn.adbc_get_objects(depth="tables").read_all().to_pylist()
        tables = {
            t["table_name"]
            for c in objects
            for s in (c["catalog_db_schemas"] or [])
            for t in (s["db_schema_tables"] or [])
        }
        assert "orders" in tables and "salaries" not in tables and "pay_view" not in tables


def test_pyarrow_basic_token_login():
    client = flight.FlightClient(URI, tls_root_certs=ca_pem().encode())
    header = client.authenticate_basic_token("ana", PASSWORD)
    assert header[0] == b"authorization" and header[1].startswith(b"Bearer fet_")
    with pytest.raises(flight.FlightUnauthenticatedError):
        client.authenticate_basic_token("ana", "wrong")
