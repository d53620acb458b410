//! Live progress of an executing physical plan, read from DataFusion's own operator metrics
//! (which are updated while the plan runs), for progress displays.

use std::sync::Arc;

use datafusion::datasource::physical_plan::FileScanConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::physical_plan::ExecutionPlan;

/// Static facts about a plan's inputs, gathered once before execution.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InputSize {
    pub files: u64,
    pub bytes: u64,
}

/// What a plan has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProgressSnapshot {
    /// Rows produced by the plan's scans (rows read from sources).
    pub rows_read: u64,
    /// Bytes the scans report as read (Parquet); 0 where a format does not report it.
    pub bytes_scanned: u64,
    /// Files the scans have finished.
    pub files_done: u64,
}

/// Total files and bytes the plan's file scans will read.
pub fn input_size(plan: &Arc<dyn ExecutionPlan>) -> InputSize {
    let mut size = InputSize::default();
    visit(plan, &mut |node| {
        if let Some(config) = node
            .as_ref()
            .downcast_ref::<DataSourceExec>()
            .and_then(|e| e.data_source().as_ref().downcast_ref::<FileScanConfig>())
        {
            for group in &config.file_groups {
                for file in group.files() {
                    size.files += 1;
                    size.bytes += match &file.range {
                        Some(r) => (r.end - r.start).max(0) as u64,
                        None => file.object_meta.size,
                    };
                }
            }
        }
    });
    size
}

/// Read the plan's live metrics.
pub fn snapshot(plan: &Arc<dyn ExecutionPlan>) -> ProgressSnapshot {
    let mut snap = ProgressSnapshot::default();
    visit(plan, &mut |node| {
        let Some(metrics) = node.metrics() else {
            return;
        };
        if node.children().is_empty() {
            snap.rows_read += metrics.output_rows().unwrap_or(0) as u64;
        }
        if let Some(v) = metrics.sum_by_name("bytes_scanned") {
            snap.bytes_scanned += v.as_usize() as u64;
        }
        if let Some(v) = metrics.sum_by_name("files_processed") {
            snap.files_done += v.as_usize() as u64;
        }
    });
    snap
}

fn visit(plan: &Arc<dyn ExecutionPlan>, f: &mut dyn FnMut(&Arc<dyn ExecutionPlan>)) {
    f(plan);
    for child in plan.children() {
        visit(child, f);
    }
}

/// `1234567` as `1,234,567`, for counts people read.
pub fn group_digits(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
