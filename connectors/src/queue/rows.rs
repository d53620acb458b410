//! Messages to rows for the consuming brokers (RabbitMQ, Redis streams): decode the payloads
//! (bad ones to the table's error policy) and append the message columns.
//!
//! Every such table has five message columns after its declared ones; only their names differ
//! by broker (see [`MessageColumns`]).

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BooleanBuilder, RecordBatch, StringBuilder, TimestampMillisecondBuilder,
};
use datafusion::arrow::datatypes::{DataType, Field, SchemaRef, TimeUnit};
use datafusion::error::{DataFusionError, Result};
use engine::bad_records::BadRecord;

use super::decode::decode;
use super::options::ReadOptions;

/// Names of the five message columns: where the message was sent (routing key, stream), its
/// id, its timestamp, its headers or other fields (a JSON object) and whether the broker
/// delivered it before (it was read but not acknowledged by an earlier scan).
#[derive(Debug, Clone, Copy)]
pub(crate) struct MessageColumns {
    pub(crate) key: &'static str,
    pub(crate) id: &'static str,
    pub(crate) timestamp: &'static str,
    pub(crate) headers: &'static str,
    pub(crate) redelivered: &'static str,
}

impl MessageColumns {
    pub(crate) fn names(&self) -> [&'static str; 5] {
        [
            self.key,
            self.id,
            self.timestamp,
            self.headers,
            self.redelivered,
        ]
    }

    pub(crate) fn fields(&self) -> Vec<Field> {
        vec![
            Field::new(self.key, DataType::Utf8, true),
            Field::new(self.id, DataType::Utf8, true),
            Field::new(
                self.timestamp,
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                true,
            ),
            Field::new(self.headers, DataType::Utf8, true),
            Field::new(self.redelivered, DataType::Boolean, true),
        ]
    }
}

/// One message as read.
#[derive(Debug, Clone, Default)]
pub(crate) struct Message {
    pub(crate) payload: Vec<u8>,
    pub(crate) key: String,
    pub(crate) id: Option<String>,
    pub(crate) timestamp_ms: Option<i64>,
    /// A JSON object.
    pub(crate) headers: Option<String>,
    pub(crate) redelivered: bool,
    /// Where it was in the read (delivery tag, stream position), for dead letters.
    pub(crate) offset: u64,
}

/// Where a table's rows come from, for bad-message reports.
pub(crate) struct Origin<'a> {
    pub(crate) source: &'a str,
    pub(crate) schema: &'a SchemaRef,
    pub(crate) declared: &'a SchemaRef,
    pub(crate) read: &'a ReadOptions,
}

/// Decode `messages` into the table's rows; undecodable ones go to the error policy (or fail
/// the scan, naming the first, when the table has none).
pub(crate) async fn to_rows(origin: &Origin<'_>, messages: &[Message]) -> Result<RecordBatch> {
    let payloads: Vec<&[u8]> = messages.iter().map(|m| m.payload.as_slice()).collect();
    let decoded = decode(origin.read.format, origin.declared, &payloads)?;
    if !decoded.bad.is_empty() {
        let file: Arc<str> = origin.source.into();
        let bad: Vec<BadRecord> = decoded
            .bad
            .iter()
            .map(|(i, reason)| {
                let m = &messages[*i];
                BadRecord {
                    file: Arc::clone(&file),
                    line: None,
                    offset: m.offset,
                    raw: String::from_utf8_lossy(&m.payload).into_owned(),
                    reason: match &m.id {
                        Some(id) => format!("message {id} on `{}`: {reason}", m.key),
                        None => format!("message on `{}`: {reason}", m.key),
                    },
                }
            })
            .collect();
        match &origin.read.policy {
            Some(policy) => policy.handle(bad).await?,
            None => {
                let first = &bad[0];
                return Err(DataFusionError::Execution(format!(
                    "{}: bad {}; set OPTIONS ('on_error' 'skip') or ('on_error' 'dead_letter') to continue past bad messages",
                    origin.source, first.reason
                )));
            }
        }
    }
    let kept: Vec<&Message> = decoded.kept.iter().map(|i| &messages[*i]).collect();
    let mut columns: Vec<ArrayRef> = decoded.batch.columns().to_vec();
    columns.extend(message_columns(&kept));
    RecordBatch::try_new(Arc::clone(origin.schema), columns)
        .map_err(|e| DataFusionError::ArrowError(Box::new(e), None))
}

fn message_columns(messages: &[&Message]) -> Vec<ArrayRef> {
    let mut key = StringBuilder::new();
    let mut id = StringBuilder::new();
    let mut time = TimestampMillisecondBuilder::with_capacity(messages.len()).with_timezone("UTC");
    let mut headers = StringBuilder::new();
    let mut redelivered = BooleanBuilder::with_capacity(messages.len());
    for m in messages {
        key.append_value(&m.key);
        id.append_option(m.id.as_deref());
        time.append_option(m.timestamp_ms);
        headers.append_option(m.headers.as_deref());
        redelivered.append_value(m.redelivered);
    }
    vec![
        Arc::new(key.finish()),
        Arc::new(id.finish()),
        Arc::new(time.finish()),
        Arc::new(headers.finish()),
        Arc::new(redelivered.finish()),
    ]
}
