//! Tolerant CSV/TSV/JSON readers: the `on_error` table option and what it sets in motion.
//!
//! ```sql
//! CREATE EXTERNAL TABLE orders (...) STORED AS CSV LOCATION 'orders/'
//! OPTIONS ('on_error' 'dead_letter', 'dead_letter_path' 'bad/orders.jsonl',
//!          'dead_letter_table' 'bad_orders', 'max_bad_records' '1000');
//! ```
//!
//! Without `on_error` the table reads with DataFusion's own reader, as before. With it, the
//! format factories here wrap DataFusion's format so its scan decodes tolerantly
//! ([`source`]) and hands bad records to the table's
//! [`BadRecordPolicy`] (`engine::bad_records`).

mod csv_columns;
pub mod csv_decoder;
pub mod input;
pub mod json_decoder;
pub mod locate;
pub mod source;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use datafusion::catalog::Session;
use datafusion::common::GetExt;
use datafusion::datasource::file_format::csv::CsvFormat;
use datafusion::datasource::file_format::json::JsonFormat;
use datafusion::datasource::file_format::{FileFormat, FileFormatFactory};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::SessionState;

use super::tsv::TsvFormat;
use engine::bad_records::{
    BadRecordLedger, BadRecordPolicy, DeadLetterTable, DeadLetterTarget, ErrorPolicy,
};
use source::{Kind, TolerantFormat};

/// Option keys this module consumes (as they reach a format factory: `format.` prefixed).
pub const ON_ERROR: &str = "format.on_error";
pub const DEAD_LETTER_PATH: &str = "format.dead_letter_path";
pub const DEAD_LETTER_TABLE: &str = "format.dead_letter_table";
pub const MAX_BAD_RECORDS: &str = "format.max_bad_records";

fn take(options: &mut HashMap<String, String>, key: &str) -> Option<String> {
    options
        .remove(key)
        .or_else(|| options.remove(key.trim_start_matches("format.")))
}

/// Remove the error-policy options from `options`; `None` when `on_error` is not given (the
/// table then reads with DataFusion's reader).
pub fn extract_policy(
    state: &dyn Session,
    options: &mut HashMap<String, String>,
) -> Result<Option<Arc<BadRecordPolicy>>> {
    let on_error = take(options, ON_ERROR);
    let path = take(options, DEAD_LETTER_PATH);
    let table = take(options, DEAD_LETTER_TABLE);
    let max = take(options, MAX_BAD_RECORDS);
    let Some(on_error) = on_error else {
        if path.is_some() || table.is_some() || max.is_some() {
            return Err(DataFusionError::Configuration(
                "dead_letter_path, dead_letter_table and max_bad_records need OPTIONS ('on_error' 'dead_letter' or 'skip')".into(),
            ));
        }
        return Ok(None);
    };
    let policy: ErrorPolicy = on_error.parse().map_err(DataFusionError::Configuration)?;
    let target = DeadLetterTarget {
        path: path.filter(|p| !p.is_empty()).map(PathBuf::from),
        table: table.filter(|t| !t.is_empty()),
    };
    match policy {
        ErrorPolicy::DeadLetter if target.path.is_none() && target.table.is_none() => {
            return Err(DataFusionError::Configuration(
                "'on_error' 'dead_letter' needs a destination: 'dead_letter_path' (a JSON-lines file) and/or 'dead_letter_table' (a table name)".into(),
            ));
        }
        ErrorPolicy::Fail | ErrorPolicy::Skip if target != DeadLetterTarget::default() => {
            return Err(DataFusionError::Configuration(format!(
                "dead_letter_path/dead_letter_table are only used with 'on_error' 'dead_letter', not '{policy}'"
            )));
        }
        _ => {}
    }
    let max_bad_records = max
        .map(|m| {
            m.trim().parse::<u64>().map_err(|_| {
                DataFusionError::Configuration(format!(
                    "max_bad_records must be a whole number, got '{m}'"
                ))
            })
        })
        .transpose()?;
    let ledger = state
        .config()
        .get_extension::<BadRecordLedger>()
        .unwrap_or_default();
    if let Some(name) = &target.table {
        register_dead_letter_table(state, &ledger, name)?;
    }
    Ok(Some(Arc::new(BadRecordPolicy::new(
        policy,
        target,
        max_bad_records,
        ledger,
    ))))
}

/// Make the dead-letter table `name` queryable in the session's default schema.
fn register_dead_letter_table(
    state: &dyn Session,
    ledger: &Arc<BadRecordLedger>,
    name: &str,
) -> Result<()> {
    let Some(session) = state.as_any().downcast_ref::<SessionState>() else {
        return Ok(());
    };
    let opts = &session.config_options().catalog;
    let schema = session
        .catalog_list()
        .catalog(&opts.default_catalog)
        .and_then(|c| c.schema(&opts.default_schema))
        .ok_or_else(|| {
            DataFusionError::Plan("no default schema for the dead-letter table".into())
        })?;
    if schema.table_exist(name) {
        if ledger.has_table(name) {
            return Ok(());
        }
        return Err(DataFusionError::Plan(format!(
            "dead_letter_table '{name}' is already a table that is not a dead-letter table"
        )));
    }
    let table: Arc<DeadLetterTable> = ledger.table(name);
    schema.register_table(name.to_string(), table)?;
    Ok(())
}

/// Wraps a CSV, TSV or JSON format factory: tables with `on_error` get a [`TolerantFormat`],
/// the others the wrapped format unchanged.
#[derive(Debug)]
pub struct TolerantFormatFactory {
    inner: Arc<dyn FileFormatFactory>,
}

impl TolerantFormatFactory {
    pub fn new(inner: Arc<dyn FileFormatFactory>) -> Self {
        Self { inner }
    }
}

impl GetExt for TolerantFormatFactory {
    fn get_ext(&self) -> String {
        self.inner.get_ext()
    }
}

impl FileFormatFactory for TolerantFormatFactory {
    fn create(
        &self,
        state: &dyn Session,
        format_options: &HashMap<String, String>,
    ) -> Result<Arc<dyn FileFormat>> {
        let mut options = format_options.clone();
        let policy = extract_policy(state, &mut options)?;
        let format = self.inner.create(state, &options)?;
        let Some(policy) = policy else {
            return Ok(format);
        };
        let kind = if let Some(csv) = format.as_ref().downcast_ref::<CsvFormat>() {
            Kind::Csv(Box::new(csv.options().clone()))
        } else if let Some(tsv) = format.as_ref().downcast_ref::<TsvFormat>() {
            Kind::Csv(Box::new(tsv.csv_options().clone()))
        } else if let Some(json) = format.as_ref().downcast_ref::<JsonFormat>() {
            if !json.options().newline_delimited {
                return Err(DataFusionError::Configuration(
                    "'on_error' needs newline-delimited JSON (one value per line)".into(),
                ));
            }
            Kind::Json
        } else {
            return Err(DataFusionError::Configuration(format!(
                "'on_error' is not supported for {} files",
                self.inner.get_ext()
            )));
        };
        Ok(Arc::new(TolerantFormat::new(format, kind, policy)))
    }

    fn default(&self) -> Arc<dyn FileFormat> {
        self.inner.default()
    }
}
