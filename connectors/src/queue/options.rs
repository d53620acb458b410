//! Options every queue table shares: the declared message columns, the payload format,
//! bounded-read limits, credentials (secret references) and the bad-message policy.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::catalog::Session;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::CreateExternalTable;
use engine::bad_records::BadRecordPolicy;

use super::decode::Format;
use crate::http::secrets_of;

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

/// `Plan` errors naming the table.
pub(crate) fn planner(kind: &'static str, table: String) -> impl Fn(String) -> DataFusionError {
    move |m| DataFusionError::Plan(format!("{kind} table `{table}`: {m}"))
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

/// Remove and parse `key`.
pub(crate) fn take_parsed<T: std::str::FromStr>(
    opts: &mut BTreeMap<String, String>,
    key: &str,
    plan: &dyn Fn(String) -> DataFusionError,
) -> Result<Option<T>>
where
    T::Err: std::fmt::Display,
{
    opts.remove(key)
        .map(|v| {
            v.trim()
                .parse::<T>()
                .map_err(|e| plan(format!("option `{key}` = `{v}`: {e}")))
        })
        .transpose()
}

/// Remove `key` and expand its `${secret:NAME}` references.
pub(crate) fn take_secret(
    state: &dyn Session,
    opts: &mut BTreeMap<String, String>,
    key: &str,
    plan: &dyn Fn(String) -> DataFusionError,
) -> Result<Option<String>> {
    opts.remove(key)
        .map(|v| {
            secrets_of(state)
                .expand(&v)
                .map_err(|e| plan(format!("option `{key}`: {e}")))
        })
        .transpose()
}

/// Remove the read options (`format`, `max_messages`, `idle_timeout_ms`, `batch_size` and the
/// error policy) and check the format suits the declared columns.
pub(crate) fn take_read_options(
    state: &dyn Session,
    opts: &mut BTreeMap<String, String>,
    declared: &SchemaRef,
    default_max_messages: Option<u64>,
    plan: &dyn Fn(String) -> DataFusionError,
) -> Result<ReadOptions> {
    let mut policy_opts: std::collections::HashMap<String, String> = [
        "on_error",
        "dead_letter_path",
        "dead_letter_table",
        "max_bad_records",
    ]
    .iter()
    .filter_map(|k| Some((k.to_string(), opts.remove(*k)?)))
    .collect();
    let policy = crate::files::tolerant::extract_policy(state, &mut policy_opts)?;
    let format: Format = take_parsed(opts, "format", plan)?.unwrap_or(Format::Json);
    format.check(declared).map_err(plan)?;
    let max_messages = take_parsed(opts, "max_messages", plan)?.or(default_max_messages);
    Ok(ReadOptions {
        format,
        max_messages,
        idle_timeout: Duration::from_millis(
            take_parsed(opts, "idle_timeout_ms", plan)?.unwrap_or(5000),
        ),
        batch_size: take_parsed::<usize>(opts, "batch_size", plan)?
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
