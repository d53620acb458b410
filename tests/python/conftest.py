"""Shared fixtures: the server under test is started by tests/python_clients.rs, which passes
its address in FLOWENGINE_FLIGHT_URI (and the admin address in FLOWENGINE_ADMIN_URL)."""
import os

import pytest


@pytest.fixture(scope="session")
def uri():
    value = os.environ.get("FLOWENGINE_FLIGHT_URI")
    if not value:
        pytest.fail("FLOWENGINE_FLIGHT_URI is not set; run through `cargo test --test python_clients`")
    return value


@pytest.fixture()
def conn(uri):
    from adbc_driver_flightsql import dbapi

    with dbapi.connect(uri) as c:
        yield c
