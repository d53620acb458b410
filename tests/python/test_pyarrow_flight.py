"""pyarrow.flight (plain Flight client speaking Flight SQL commands by hand)."""
import pyarrow as pa
import pyarrow.flight as flight
import pytest

# Flight SQL CommandStatementQuery wrapped in google.protobuf.Any, encoded by hand:
# Any { type_url = 1, value = 2 }, CommandStatementQuery { query = 1 }.
TYPE_URL = b"type.googleapis.com/arrow.flight.protocol.sql.CommandStatementQuery"


def _varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(num, payload):
    return _varint((num << 3) | 2) + _varint(len(payload)) + payload


def statement_query(sql):
    return _field(1, TYPE_URL) + _field(2, _field(1, sql.encode()))


def test_get_flight_info_then_do_get(uri):
    client = flight.connect(uri)
    descriptor = flight.FlightDescriptor.for_command(statement_query("SELECT * FROM orders"))
    info = client.get_flight_info(descriptor)
    reader = client.do_get(info.endpoints[0].ticket)
    table = reader.read_all()
    assert table.num_rows == 1000
    assert table.schema == info.schema


def test_large_result_streams(uri):
    client = flight.connect(uri)
    descriptor = flight.FlightDescriptor.for_command(
        statement_query("SELECT value, value * 2 AS twice FROM range(3000000)")
    )
    info = client.get_flight_info(descriptor)
    reader = client.do_get(info.endpoints[0].ticket)
    rows = 0
    batches = 0
    for chunk in reader:
        rows += chunk.data.num_rows
        batches += 1
    assert rows == 3_000_000
    assert batches > 1


def test_bad_ticket(uri):
    client = flight.connect(uri)
    with pytest.raises((flight.FlightError, pa.ArrowInvalid)) as e:
        client.do_get(flight.Ticket(b"garbage")).read_all()
    assert "malformed ticket" in str(e.value)
    # Server unaffected.
    info = client.get_flight_info(flight.FlightDescriptor.for_command(statement_query("SELECT 1 AS x")))
    assert client.do_get(info.endpoints[0].ticket).read_all().column("x").to_pylist() == [1]
