//! Messages to rows for every queue table: decode the payloads (bad ones to the table's error
//! policy) and append the message columns, whose names each broker gives (see
//! [`MessageColumns`]).

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BooleanBuilder, RecordBatch, StringBuilder, TimestampMillisecondBuilder,
    UInt64Builder,
};
use datafusion::arrow::datatypes::{DataType, Field, SchemaRef, TimeUnit};
use datafusion::error::{DataFusionError, Result};
use engine::bad_records::BadRecord;

use super::decode::decode;
use super::options::ReadOptions;

/// Names of the message columns: where the message was sent (routing key, subject, stream,
/// topic), its id, its timestamp, its headers or other fields (a JSON object) and, for brokers
/// that deliver again what was read but not acknowledged, whether it was delivered before.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MessageColumns {
    pub(crate) key: &'static str,
    pub(crate) id: &'static str,
    /// The id column holds the message's position in the read ([`Message::offset`], UInt64)
    /// instead of a text id.
    pub(crate) id_is_offset: bool,
    pub(crate) timestamp: &'static str,
    pub(crate) headers: &'static str,
    pub(crate) redelivered: Option<&'static str>,
}

impl MessageColumns {
    /// Columns named `key`, `id` (text), `timestamp` and `headers`.
    pub(crate) const fn new(
        key: &'static str,
        id: &'static str,
        timestamp: &'static str,
        headers: &'static str,
    ) -> Self {
        Self {
            key,
            id,
            id_is_offset: false,
            timestamp,
            headers,
            redelivered: None,
        }
    }

    /// The id column holds the message's position ([`Message::offset`]).
    pub(crate) const fn offset_id(mut self) -> Self {
        self.id_is_offset = true;
        self
    }

    /// A column saying whether the broker delivered the message before.
    pub(crate) const fn redelivered(mut self, name: &'static str) -> Self {
        self.redelivered = Some(name);
        self
    }

    pub(crate) fn names(&self) -> Vec<&'static str> {
        let mut names = vec![self.key, self.id, self.timestamp, self.headers];
        names.extend(self.redelivered);
        names
    }

    pub(crate) fn fields(&self) -> Vec<Field> {
        let mut fields = vec![
            Field::new(self.key, DataType::Utf8, true),
            Field::new(
                self.id,
                if self.id_is_offset {
                    DataType::UInt64
                } else {
                    DataType::Utf8
                },
                true,
            ),
            Field::new(
                self.timestamp,
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                true,
            ),
            Field::new(self.headers, DataType::Utf8, true),
        ];
        fields.extend(
            self.redelivered
                .map(|r| Field::new(r, DataType::Boolean, true)),
        );
        fields
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
    /// Where it was in the read (delivery tag, stream sequence), for dead letters.
    pub(crate) offset: u64,
}

/// Where a table's rows come from, for bad-message reports.
pub(crate) struct Origin<'a> {
    pub(crate) source: &'a str,
    pub(crate) schema: &'a SchemaRef,
    pub(crate) declared: &'a SchemaRef,
    pub(crate) read: &'a ReadOptions,
    pub(crate) columns: &'a MessageColumns,
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
                        None => format!("message {} on `{}`: {reason}", m.offset, m.key),
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
    columns.extend(message_columns(origin.columns, &kept));
    RecordBatch::try_new(Arc::clone(origin.schema), columns)
        .map_err(|e| DataFusionError::ArrowError(Box::new(e), None))
}

fn message_columns(names: &MessageColumns, messages: &[&Message]) -> Vec<ArrayRef> {
    let mut key = StringBuilder::new();
    let mut id = StringBuilder::new();
    let mut offset = UInt64Builder::with_capacity(messages.len());
    let mut time = TimestampMillisecondBuilder::with_capacity(messages.len()).with_timezone("UTC");
    let mut headers = StringBuilder::new();
    let mut redelivered = BooleanBuilder::with_capacity(messages.len());
    for m in messages {
        key.append_value(&m.key);
        id.append_option(m.id.as_deref());
        offset.append_value(m.offset);
        time.append_option(m.timestamp_ms);
        headers.append_option(m.headers.as_deref());
        redelivered.append_value(m.redelivered);
    }
    let id: ArrayRef = if names.id_is_offset {
        Arc::new(offset.finish())
    } else {
        Arc::new(id.finish())
    };
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(key.finish()),
        id,
        Arc::new(time.finish()),
        Arc::new(headers.finish()),
    ];
    if names.redelivered.is_some() {
        columns.push(Arc::new(redelivered.finish()));
    }
    columns
}
