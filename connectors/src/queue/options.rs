//! Options every queue table shares: the declared message columns, the payload format,
//! bounded-read limits, credentials (secret references) and the bad-message policy.

use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::CreateExternalTable;
use engine::bad_records::BadRecordPolicy;

use super::decode::Format;
use crate::options::TableOptions;

/// How a scan reads.
#[derive(Debug, Clone)]
pub(crate) struct ReadOptions {
    pub(crate) format: Format,
    /// At most this many messages per scan.
    pub(crate) max_messages: Option<u64>,
    /// A scan ends when no message arrived for this long.
    pub(crate) idle_timeout: Duration,
    /// Rows per batch.
    pub(crate) batch_size: usize,
    pub(crate) policy: Option<Arc<BadRecordPolicy>>,
}

/// The declared columns, checked: at least one, none named like a message column.
pub(crate) fn declared_columns(
    cmd: &CreateExternalTable,
    reserved: &[&str],
    plan: &dyn Fn(String) -> DataFusionError,
) -> Result<SchemaRef> {
    let declared: SchemaRef = Arc::new(cmd.schema.as_arrow().clone());
    if declared.fields().is_empty() {
        return Err(plan(
            "declare the message columns: CREATE EXTERNAL TABLE name (col TYPE, ...)".into(),
        ));
    }
    if let Some(f) = declared
        .fields()
        .iter()
        .find(|f| reserved.contains(&f.name().as_str()))
    {
        return Err(plan(format!(
            "column `{}` is reserved for message metadata",
            f.name()
        )));
    }
    Ok(declared)
}

/// The declared columns followed by the message columns.
pub(crate) fn with_message_columns(declared: &SchemaRef, meta: Vec<Field>) -> SchemaRef {
    let mut fields: Vec<Field> = declared
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.extend(meta);
    Arc::new(Schema::new(fields))
}

/// Take the read options (`format`, `max_messages`, `idle_timeout_ms`, `batch_size` and the
/// error policy) and check the format suits the declared columns.
pub(crate) fn take_read_options(
    options: &mut TableOptions<'_>,
    declared: &SchemaRef,
    default_max_messages: Option<u64>,
) -> Result<ReadOptions> {
    let mut policy_opts: std::collections::HashMap<String, String> = options
        .all_of(&[
            "on_error",
            "dead_letter_path",
            "dead_letter_table",
            "max_bad_records",
        ])?
        .into_iter()
        .collect();
    let policy = crate::files::tolerant::extract_policy(options.state(), &mut policy_opts)?;
    let format: Format = options.parsed("format")?.unwrap_or(Format::Json);
    format.check(declared).map_err(|m| options.error(m))?;
    let max_messages = options.parsed("max_messages")?.or(default_max_messages);
    Ok(ReadOptions {
        format,
        max_messages,
        idle_timeout: Duration::from_millis(options.parsed("idle_timeout_ms")?.unwrap_or(5000)),
        batch_size: options
            .parsed::<usize>("batch_size")?
            .unwrap_or(8192)
            .max(1),
        policy,
    })
}

/// `scheme://host:port/rest` split into `host:port` and `rest`; credentials in the URL are
/// refused (they belong in OPTIONS, as secret references).
pub(crate) fn split_location<'a>(
    cmd: &'a CreateExternalTable,
    scheme: &str,
    what: &str,
    plan: &dyn Fn(String) -> DataFusionError,
) -> Result<(&'a str, &'a str)> {
    let [location] = cmd.locations.as_slice() else {
        return Err(plan(format!(
            "LOCATION names one {scheme}://host:port/{what}"
        )));
    };
    let rest = location
        .strip_prefix(scheme)
        .and_then(|r| r.strip_prefix("://"))
        .ok_or_else(|| {
            plan(format!(
                "`{location}` is not a {scheme}://host:port/{what} URL"
            ))
        })?;
    let (host, path) = rest
        .split_once('/')
        .filter(|(h, p)| !h.is_empty() && !p.is_empty())
        .ok_or_else(|| plan(format!("`{location}` names no {what} after the server")))?;
    if host.contains('@') {
        return Err(plan(
            "put credentials in OPTIONS ('user' ..., 'password' '${secret:NAME}'), not in LOCATION"
                .into(),
        ));
    }
    Ok((host, path))
}
