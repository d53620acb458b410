//! Opaque handles the server gives to clients.
//!
//! * Prepared-statement handles are **stateless**: the SQL text and the bound parameters (an
//!   Arrow IPC stream) travel inside the handle, so concurrent binds on one statement never
//!   overwrite each other and any server instance can execute any handle.
//! * Tickets name a planned query held by *this* server instance for a limited time: they carry
//!   the instance id and a random query id, and are refused by other instances or after expiry.

use std::io::Cursor;

use arrow::array::RecordBatch;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use prost::Message;
use tonic::Status;

const HANDLE_MAGIC: &[u8] = b"FEPS1";
const TICKET_MAGIC: &str = "FETK1";

/// The content of a prepared-statement handle.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct PreparedHandle {
    #[prost(string, tag = "1")]
    pub(crate) sql: String,
    /// Bound parameters as an Arrow IPC stream; empty when nothing is bound.
    #[prost(bytes = "vec", tag = "2")]
    pub(crate) params: Vec<u8>,
}

impl PreparedHandle {
    pub(crate) fn new(sql: String) -> Self {
        Self {
            sql,
            params: Vec::new(),
        }
    }

    pub(crate) fn encode_handle(&self) -> Vec<u8> {
        let mut out = HANDLE_MAGIC.to_vec();
        self.encode(&mut out).expect("Vec has unlimited capacity");
        out
    }

    pub(crate) fn decode_handle(bytes: &[u8]) -> Result<Self, Status> {
        let body = bytes
            .strip_prefix(HANDLE_MAGIC)
            .ok_or_else(|| Status::invalid_argument("malformed prepared statement handle"))?;
        Self::decode(body)
            .map_err(|_| Status::invalid_argument("malformed prepared statement handle"))
    }

    /// Attach parameter rows (replacing earlier ones).
    pub(crate) fn with_params(mut self, batches: &[RecordBatch]) -> Result<Self, Status> {
        self.params.clear();
        let Some(first) = batches.first() else {
            return Ok(self);
        };
        let mut writer = StreamWriter::try_new(&mut self.params, &first.schema())
            .map_err(|e| Status::invalid_argument(format!("cannot encode parameters: {e}")))?;
        for batch in batches {
            writer
                .write(batch)
                .map_err(|e| Status::invalid_argument(format!("cannot encode parameters: {e}")))?;
        }
        writer
            .finish()
            .map_err(|e| Status::invalid_argument(format!("cannot encode parameters: {e}")))?;
        drop(writer);
        Ok(self)
    }

    /// The bound parameter rows, if any.
    pub(crate) fn param_batches(&self) -> Result<Vec<RecordBatch>, Status> {
        if self.params.is_empty() {
            return Ok(Vec::new());
        }
        let reader = StreamReader::try_new(Cursor::new(&self.params), None)
            .map_err(|_| Status::invalid_argument("malformed parameters in handle"))?;
        reader
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| Status::invalid_argument("malformed parameters in handle"))
    }
}

/// Ticket bytes for query `query_id` held by server `instance`.
pub(crate) fn encode_ticket(instance: &str, query_id: &str) -> Vec<u8> {
    format!("{TICKET_MAGIC}:{instance}:{query_id}").into_bytes()
}

/// The query id of a ticket issued by `instance`.
pub(crate) fn decode_ticket(instance: &str, bytes: &[u8]) -> Result<String, Status> {
    let text =
        std::str::from_utf8(bytes).map_err(|_| Status::invalid_argument("malformed ticket"))?;
    let mut parts = text.splitn(3, ':');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(TICKET_MAGIC), Some(owner), Some(id)) if !id.is_empty() => {
            if owner != instance {
                return Err(Status::not_found(
                    "ticket was issued by another server instance (or before a restart); \
                     request a new one with GetFlightInfo",
                ));
            }
            Ok(id.to_string())
        }
        _ => Err(Status::invalid_argument("malformed ticket")),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    #[test]
    fn handle_round_trips_sql_and_params() {
        let schema = Arc::new(Schema::new(vec![Field::new("$1", DataType::Int64, true)]));
        let batch =
            RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![1, 2]))]).unwrap();
        let h = PreparedHandle::new("SELECT $1".into())
            .with_params(std::slice::from_ref(&batch))
            .unwrap();
        let back = PreparedHandle::decode_handle(&h.encode_handle()).unwrap();
        assert_eq!(back.sql, "SELECT $1");
        assert_eq!(back.param_batches().unwrap(), vec![batch]);
    }

    #[test]
    fn garbage_handles_and_tickets_are_invalid_argument() {
        assert_eq!(
            PreparedHandle::decode_handle(b"xyz").unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            decode_ticket("a", b"\xff\xfe").unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            decode_ticket("a", b"FETK1:b:q").unwrap_err().code(),
            tonic::Code::NotFound
        );
        assert_eq!(decode_ticket("a", b"FETK1:a:q").unwrap(), "q");
    }
}
