//! Run state: every pipeline run and each of its steps, behind one [`StateStore`] trait, so the
//! runner can resume a failed run and users can see what ran (`flowengine runs`, `system.runs`).
//!
//! The embedded default is [`file::FileStateStore`] (an append-only JSON-lines journal under
//! `.flowengine/`, no server needed).

pub mod file;
pub mod postgres;
mod tables;

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema};
use serde::{Deserialize, Serialize};

/// Outcome of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Running,
    Succeeded,
    Failed,
    Interrupted,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Interrupted => "interrupted",
        }
    }
}

/// Outcome of a step (one statement).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepStatus {
    Succeeded,
    Failed,
    /// Not executed by `--resume` because an earlier run committed it.
    Skipped,
}

impl StepStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Succeeded => "succeeded",
            StepStatus::Failed => "failed",
            StepStatus::Skipped => "skipped",
        }
    }
}

/// One run of a pipeline file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub run_id: String,
    /// Canonical path of the pipeline file.
    pub pipeline: String,
    /// SHA-256 of the pipeline file's bytes.
    pub content_hash: String,
    /// `--var` values; values of names that look like secrets are redacted.
    pub variables: BTreeMap<String, String>,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub status: RunStatus,
    pub error: Option<String>,
    /// The failed run this one resumed.
    pub resumed_from: Option<String>,
}

/// One statement of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub run_id: String,
    /// 1-based statement number.
    pub index: usize,
    pub line: u64,
    pub column: u64,
    pub kind: String,
    pub status: StepStatus,
    /// Rows written or returned, when known.
    pub rows: Option<u64>,
    pub duration_ms: u64,
    pub error: Option<String>,
    pub finished_at: String,
    /// For skipped steps: the run that committed it.
    pub committed_by: Option<String>,
}

/// The high mark of an incremental view (`CREATE INCREMENTAL VIEW`): recorded as pending when a
/// run reads up to it, and again as committed when that run succeeded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WatermarkRecord {
    /// Canonical path of the pipeline file.
    pub pipeline: String,
    /// The incremental view's name.
    pub name: String,
    /// The column it advances by.
    pub column: String,
    /// The highest value read (as text; `None`: the source had no rows yet).
    pub value: Option<String>,
    pub run_id: String,
    pub committed: bool,
    pub recorded_at: String,
}

/// The result of a data quality check (`CREATE CHECK`) in a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckRecord {
    pub run_id: String,
    pub pipeline: String,
    pub name: String,
    pub table: Option<String>,
    /// `error` or `warn`.
    pub severity: String,
    /// `passed`, `warned` or `failed`.
    pub status: String,
    pub failing_rows: u64,
    /// Up to five failing rows, as a text table.
    pub sample: Option<String>,
    pub duration_ms: u64,
    pub recorded_at: String,
}

/// The files one statement commits, recorded before the first of them is renamed into place:
/// a run killed half-way through the renames is finished by `--resume` (the renames are rolled
/// forward), never written again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommitRecord {
    pub run_id: String,
    /// The statement (1-based).
    pub index: usize,
    pub files: Vec<CommitFile>,
    pub recorded_at: String,
}

/// One file of a commit: its store (`file:///`, `s3://bucket`), staged and final path in it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommitFile {
    pub store: String,
    pub staged: String,
    pub target: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state store {location}: {source}")]
    Io {
        location: String,
        #[source]
        source: std::io::Error,
    },
    #[error("state store {location}: {message}")]
    Corrupt { location: String, message: String },
}

/// Where runs, steps and (later) watermarks are kept.
#[async_trait::async_trait]
pub trait StateStore: Send + Sync + std::fmt::Debug {
    async fn begin_run(&self, run: &RunRecord) -> Result<(), StateError>;
    async fn record_step(&self, step: &StepRecord) -> Result<(), StateError>;
    async fn finish_run(
        &self,
        run_id: &str,
        status: RunStatus,
        error: Option<String>,
    ) -> Result<(), StateError>;
    /// Runs, oldest first; only those of `pipeline` (a canonical path) when given.
    async fn runs(&self, pipeline: Option<&str>) -> Result<Vec<RunRecord>, StateError>;
    /// Steps of a run in the order they were recorded.
    async fn steps(&self, run_id: &str) -> Result<Vec<StepRecord>, StateError>;
    async fn record_watermark(&self, watermark: &WatermarkRecord) -> Result<(), StateError>;
    /// Watermark records, oldest first; only those of `pipeline` when given.
    async fn watermarks(&self, pipeline: Option<&str>) -> Result<Vec<WatermarkRecord>, StateError>;
    async fn record_check(&self, check: &CheckRecord) -> Result<(), StateError>;
    /// Record a statement's commit before its files are renamed into place; the record must be
    /// durable when this returns.
    async fn record_commit(&self, commit: &CommitRecord) -> Result<(), StateError>;
    /// The commits a run recorded, in order.
    async fn commits(&self, run_id: &str) -> Result<Vec<CommitRecord>, StateError>;
    /// Quality check results, oldest first.
    async fn checks(&self) -> Result<Vec<CheckRecord>, StateError>;
    /// A human-readable location (for messages).
    fn location(&self) -> String;
}

/// Names of variables whose values are never stored.
pub fn is_secret_name(name: &str) -> bool {
    let n = name.to_ascii_uppercase();
    [
        "PASSWORD",
        "PASSWD",
        "SECRET",
        "TOKEN",
        "KEY",
        "CREDENTIAL",
        "AUTH",
    ]
    .iter()
    .any(|s| n.contains(s))
}

/// Variables as stored: secret-looking values replaced.
pub fn redact_variables(vars: &[(String, String)]) -> BTreeMap<String, String> {
    vars.iter()
        .map(|(k, v)| {
            let v = if is_secret_name(k) {
                "***".to_string()
            } else {
                v.clone()
            };
            (k.clone(), v)
        })
        .collect()
}

/// Current time as RFC 3339 (UTC).
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// `system.runs` as a record batch.
pub fn runs_batch(runs: &[RunRecord]) -> Result<RecordBatch, arrow::error::ArrowError> {
    let s = |f: &dyn Fn(&RunRecord) -> Option<String>| -> ArrayRef {
        Arc::new(StringArray::from(runs.iter().map(f).collect::<Vec<_>>()))
    };
    let schema = Arc::new(Schema::new(vec![
        Field::new("run_id", DataType::Utf8, false),
        Field::new("pipeline", DataType::Utf8, false),
        Field::new("content_hash", DataType::Utf8, false),
        Field::new("variables", DataType::Utf8, false),
        Field::new("started_at", DataType::Utf8, false),
        Field::new("finished_at", DataType::Utf8, true),
        Field::new("status", DataType::Utf8, false),
        Field::new("error", DataType::Utf8, true),
        Field::new("resumed_from", DataType::Utf8, true),
    ]));
    let columns = vec![
        s(&|r| Some(r.run_id.clone())),
        s(&|r| Some(r.pipeline.clone())),
        s(&|r| Some(r.content_hash.clone())),
        s(&|r| Some(serde_json::to_string(&r.variables).unwrap_or_default())),
        s(&|r| Some(r.started_at.clone())),
        s(&|r| r.finished_at.clone()),
        s(&|r| Some(r.status.as_str().to_string())),
        s(&|r| r.error.clone()),
        s(&|r| r.resumed_from.clone()),
    ];
    RecordBatch::try_new(schema, columns)
}

/// `system.steps` as a record batch.
pub fn steps_batch(steps: &[StepRecord]) -> Result<RecordBatch, arrow::error::ArrowError> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("run_id", DataType::Utf8, false),
        Field::new("step", DataType::UInt64, false),
        Field::new("line", DataType::UInt64, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("rows", DataType::UInt64, true),
        Field::new("duration_ms", DataType::UInt64, false),
        Field::new("error", DataType::Utf8, true),
        Field::new("finished_at", DataType::Utf8, false),
        Field::new("committed_by", DataType::Utf8, true),
    ]));
    let text = |f: &dyn Fn(&StepRecord) -> Option<String>| -> ArrayRef {
        Arc::new(StringArray::from(steps.iter().map(f).collect::<Vec<_>>()))
    };
    let num = |f: &dyn Fn(&StepRecord) -> Option<u64>| -> ArrayRef {
        Arc::new(UInt64Array::from(steps.iter().map(f).collect::<Vec<_>>()))
    };
    let columns = vec![
        text(&|s| Some(s.run_id.clone())),
        num(&|s| Some(s.index as u64)),
        num(&|s| Some(s.line)),
        text(&|s| Some(s.kind.clone())),
        text(&|s| Some(s.status.as_str().to_string())),
        num(&|s| s.rows),
        num(&|s| Some(s.duration_ms)),
        text(&|s| s.error.clone()),
        text(&|s| Some(s.finished_at.clone())),
        text(&|s| s.committed_by.clone()),
    ];
    RecordBatch::try_new(schema, columns)
}

/// `system.watermarks` as a record batch.
pub fn watermarks_batch(
    marks: &[WatermarkRecord],
) -> Result<RecordBatch, arrow::error::ArrowError> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("pipeline", DataType::Utf8, false),
        Field::new("name", DataType::Utf8, false),
        Field::new("column", DataType::Utf8, false),
        Field::new("value", DataType::Utf8, true),
        Field::new("run_id", DataType::Utf8, false),
        Field::new("committed", DataType::Boolean, false),
        Field::new("recorded_at", DataType::Utf8, false),
    ]));
    let text = |f: &dyn Fn(&WatermarkRecord) -> Option<String>| -> ArrayRef {
        Arc::new(StringArray::from(marks.iter().map(f).collect::<Vec<_>>()))
    };
    let columns = vec![
        text(&|w| Some(w.pipeline.clone())),
        text(&|w| Some(w.name.clone())),
        text(&|w| Some(w.column.clone())),
        text(&|w| w.value.clone()),
        text(&|w| Some(w.run_id.clone())),
        Arc::new(arrow::array::BooleanArray::from(
            marks.iter().map(|w| w.committed).collect::<Vec<_>>(),
        )) as ArrayRef,
        text(&|w| Some(w.recorded_at.clone())),
    ];
    RecordBatch::try_new(schema, columns)
}

/// `system.quality_results` as a record batch.
pub fn checks_batch(checks: &[CheckRecord]) -> Result<RecordBatch, arrow::error::ArrowError> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("run_id", DataType::Utf8, false),
        Field::new("pipeline", DataType::Utf8, false),
        Field::new("check_name", DataType::Utf8, false),
        Field::new("table_name", DataType::Utf8, true),
        Field::new("severity", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("failing_rows", DataType::UInt64, false),
        Field::new("sample", DataType::Utf8, true),
        Field::new("duration_ms", DataType::UInt64, false),
        Field::new("recorded_at", DataType::Utf8, false),
    ]));
    let text = |f: &dyn Fn(&CheckRecord) -> Option<String>| -> ArrayRef {
        Arc::new(StringArray::from(checks.iter().map(f).collect::<Vec<_>>()))
    };
    let num = |f: &dyn Fn(&CheckRecord) -> u64| -> ArrayRef {
        Arc::new(UInt64Array::from(checks.iter().map(f).collect::<Vec<_>>()))
    };
    let columns = vec![
        text(&|c| Some(c.run_id.clone())),
        text(&|c| Some(c.pipeline.clone())),
        text(&|c| Some(c.name.clone())),
        text(&|c| c.table.clone()),
        text(&|c| Some(c.severity.clone())),
        text(&|c| Some(c.status.clone())),
        num(&|c| c.failing_rows),
        text(&|c| c.sample.clone()),
        num(&|c| c.duration_ms),
        text(&|c| Some(c.recorded_at.clone())),
    ];
    RecordBatch::try_new(schema, columns)
}

/// Register `system.runs`, `system.steps`, `system.watermarks` and `system.quality_results` in
/// the session's default catalog: live tables, every scan reads the store.
pub async fn register_system_tables(
    ctx: &datafusion::prelude::SessionContext,
    store: &Arc<dyn StateStore>,
) -> crate::Result<()> {
    for which in tables::ALL {
        let table = tables::StateTable::new(which, Arc::clone(store))
            .map_err(datafusion::error::DataFusionError::from)?;
        crate::system::register_system_table(ctx, which.name(), Arc::new(table))?;
    }
    Ok(())
}

/// The store configured for `config`: PostgreSQL when `state_url` is set, else the file journal.
pub fn open(config: &crate::EngineConfig) -> Arc<dyn StateStore> {
    match &config.state_url {
        Some(url) => {
            // A broken secrets file was reported when the engine was built; references then
            // resolve from the environment alone.
            let secrets = crate::SecretStore::load(config.secrets_file.as_deref())
                .unwrap_or_else(|_| crate::SecretStore::from_env());
            Arc::new(postgres::PostgresStateStore::new(url, secrets))
        }
        None => Arc::new(file::FileStateStore::new(&config.effective_state_dir())),
    }
}

/// SHA-256 of `bytes`, hex.
pub fn content_hash(bytes: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}
