//! Where a strict CSV read failed. Without `on_error`, CSV tables read with DataFusion's own
//! reader (the fastest path), whose errors name neither the file nor, for a byte range that
//! starts mid-file, the file's line (`Csv error: incorrect number of fields for line 3`). When
//! a statement fails with such an error, [`CsvFailureLocator`] reads the failed scan's files
//! again, one after the other, with FlowEngine's decoder in strict mode; the first bad record it
//! meets names the file and line. Only a failed statement pays for this.

use std::collections::HashSet;
use std::sync::Arc;

use datafusion::arrow::error::ArrowError;
use datafusion::common::config::CsvOptions;
use datafusion::datasource::physical_plan::{CsvSource, FileScanConfig, FileSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::DataFusionError;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::metrics::Count;
use engine::bad_records::{BadRecordLedger, BadRecordPolicy};
use engine::failure::FailureLocator;
use futures::StreamExt;
use futures::future::BoxFuture;

use super::input::{ByteInput, LineIndex, ScanTarget, decode_stream};
use super::source::TolerantSource;

/// Finds the file and line of a bad record that failed a strict CSV scan.
#[derive(Debug, Default)]
pub struct CsvFailureLocator;

impl FailureLocator for CsvFailureLocator {
    fn locate<'a>(
        &'a self,
        plan: &'a Arc<dyn ExecutionPlan>,
        error: &'a DataFusionError,
        task: &'a Arc<TaskContext>,
    ) -> BoxFuture<'a, Option<DataFusionError>> {
        Box::pin(async move {
            if !is_csv_decode_error(error) {
                return None;
            }
            let mut scans = Vec::new();
            csv_scans(plan, &mut scans);
            for (config, source) in scans {
                if let Some(located) = first_bad_record(&config, &source, task).await {
                    let located = match located {
                        DataFusionError::Execution(message) => message,
                        other => other.to_string(),
                    };
                    return Some(DataFusionError::Execution(format!(
                        "{located} (the CSV reader said: {error})"
                    )));
                }
            }
            None
        })
    }
}

/// Whether `error` is arrow-csv's: a malformed record or a value of the wrong type.
fn is_csv_decode_error(error: &DataFusionError) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(c) = cause {
        let arrow =
            c.downcast_ref::<ArrowError>()
                .or_else(|| match c.downcast_ref::<DataFusionError>() {
                    Some(DataFusionError::ArrowError(e, _)) => Some(e.as_ref()),
                    _ => None,
                });
        if let Some(e) = arrow {
            return matches!(e, ArrowError::CsvError(_) | ArrowError::ParseError(_));
        }
        cause = c.source();
    }
    false
}

/// The CSV scans of `plan`.
fn csv_scans(plan: &Arc<dyn ExecutionPlan>, out: &mut Vec<(FileScanConfig, CsvSource)>) {
    if let Some(exec) = plan.downcast_ref::<DataSourceExec>()
        && let Some(config) = exec.data_source().downcast_ref::<FileScanConfig>()
        && let Some(csv) = config.file_source.downcast_ref::<CsvSource>()
    {
        out.push((config.clone(), csv.clone()));
    }
    for child in plan.children() {
        csv_scans(child, out);
    }
}

/// The first bad record of the scan's files, read whole and in order, as the strict decoder's
/// error.
async fn first_bad_record(
    config: &FileScanConfig,
    csv: &CsvSource,
    task: &Arc<TaskContext>,
) -> Option<DataFusionError> {
    let options = CsvOptions {
        has_header: Some(csv.has_header()),
        delimiter: csv.delimiter(),
        quote: csv.quote(),
        terminator: csv.terminator(),
        escape: csv.escape(),
        comment: csv.comment(),
        newlines_in_values: Some(csv.newlines_in_values()),
        truncated_rows: Some(csv.truncate_rows()),
        ..Default::default()
    };
    let source = TolerantSource::strict_csv(options, csv.table_schema().clone()).ok()?;
    let target = ScanTarget {
        store: task
            .runtime_env()
            .object_store(&config.object_store_url)
            .ok()?,
        url: config.object_store_url.as_str().to_string(),
        compression: config.file_compression_type,
        terminator: csv.terminator().unwrap_or(b'\n'),
    };
    let policy = Arc::new(BadRecordPolicy::strict(
        Arc::new(BadRecordLedger::default()),
    ));
    let mut seen = HashSet::new();
    for file in config.file_groups.iter().flat_map(|g| g.iter()) {
        if !seen.insert(file.object_meta.location.clone()) {
            continue; // another byte range of a file already read
        }
        let input = ByteInput::open(&target, &file.object_meta, None)
            .await
            .ok()?;
        let decoder = source.decoder(true).ok()?;
        let name: Arc<str> = target.display_name(&file.object_meta).into();
        let mut rows = decode_stream(
            input,
            decoder,
            Arc::clone(&policy),
            name,
            Arc::new(LineIndex::default()),
            Count::new(),
        );
        while let Some(batch) = rows.next().await {
            if let Err(e) = batch {
                return Some(e);
            }
        }
    }
    None
}
