//! Bad input records: the error policy a tolerant reader applies (`fail`, `skip`, `dead_letter`),
//! the dead-letter destinations (a JSON-lines file and/or a queryable table), and the
//! session-wide ledger that de-duplicates bad records and counts them per statement.
//!
//! Readers live in `connectors`; they hand every bad record to a [`BadRecordPolicy`], which
//! either fails the scan with the record's file, line and reason, or counts it and (for
//! `dead_letter`) writes it out. Nothing is dropped without being counted.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use arrow::array::{
    ArrayRef, RecordBatch, StringBuilder, TimestampMicrosecondBuilder, UInt64Builder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use tokio::io::AsyncWriteExt;

/// What a reader does with a record it cannot decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ErrorPolicy {
    /// Stop the statement with an error naming the file, line and reason (the default).
    #[default]
    Fail,
    /// Leave the record out, counted and reported in the run summary.
    Skip,
    /// Leave the record out and write it, with where it came from and why, to the dead-letter
    /// destination.
    DeadLetter,
}

impl std::str::FromStr for ErrorPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "fail" => Ok(Self::Fail),
            "skip" => Ok(Self::Skip),
            "dead_letter" | "dead-letter" | "deadletter" => Ok(Self::DeadLetter),
            other => Err(format!(
                "unknown on_error policy '{other}': expected fail, skip or dead_letter"
            )),
        }
    }
}

impl std::fmt::Display for ErrorPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Fail => "fail",
            Self::Skip => "skip",
            Self::DeadLetter => "dead_letter",
        })
    }
}

/// One record a reader could not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRecord {
    /// The file (URL or path) it came from.
    pub file: Arc<str>,
    /// 1-based physical line where the record starts, when known.
    pub line: Option<u64>,
    /// Byte offset of the record's first byte (in the decompressed stream for compressed files).
    pub offset: u64,
    /// The record's text as read (invalid UTF-8 replaced by U+FFFD).
    pub raw: String,
    /// Why it was rejected.
    pub reason: String,
}

impl std::fmt::Display for BadRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: {}", self.file, self.reason)?,
            None => write!(
                f,
                "{} (byte offset {}): {}",
                self.file, self.offset, self.reason
            )?,
        }
        let mut raw: String = self.raw.chars().take(200).collect();
        if raw.len() < self.raw.len() {
            raw.push('…');
        }
        write!(f, " (record: {raw:?})")
    }
}

/// Bad records counted since the last [`BadRecordLedger::take_counts`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BadRecordCounts {
    pub skipped: u64,
    pub dead_lettered: u64,
    /// Where dead letters went (file paths, `table NAME`).
    pub destinations: BTreeSet<String>,
}

impl BadRecordCounts {
    pub fn is_empty(&self) -> bool {
        self.skipped == 0 && self.dead_lettered == 0
    }
}

impl std::fmt::Display for BadRecordCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if self.skipped > 0 {
            parts.push(format!("{} bad records skipped", self.skipped));
        }
        if self.dead_lettered > 0 {
            let to: Vec<&str> = self.destinations.iter().map(String::as_str).collect();
            parts.push(format!(
                "{} bad records dead-lettered to {}",
                self.dead_lettered,
                to.join(", ")
            ));
        }
        f.write_str(&parts.join("; "))
    }
}

#[derive(Debug, Default)]
struct LedgerState {
    /// (table definition, file, offset) of every bad record already handled, so a table scanned
    /// twice in a run reports and dead-letters each record once.
    seen: HashSet<(u64, Arc<str>, u64)>,
    next_policy: u64,
    counts: BadRecordCounts,
    tables: HashMap<String, Arc<DeadLetterTable>>,
    /// Dead-letter files, opened once (append) and kept open for the session.
    files: HashMap<PathBuf, Arc<tokio::sync::Mutex<Option<tokio::fs::File>>>>,
}

/// The session's record of bad input: de-duplication, per-statement counts, dead-letter tables.
/// One per [`crate::Engine`], reachable from a DataFusion session as a config extension.
#[derive(Debug, Default)]
pub struct BadRecordLedger {
    state: Mutex<LedgerState>,
}

impl BadRecordLedger {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, LedgerState> {
        // A panic while holding this lock cannot leave the state inconsistent (plain inserts).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts since the previous call (the runner calls this after each statement).
    pub fn take_counts(&self) -> BadRecordCounts {
        std::mem::take(&mut self.lock().counts)
    }

    /// The dead-letter table called `name`, created empty on first use.
    pub fn table(&self, name: &str) -> Arc<DeadLetterTable> {
        Arc::clone(
            self.lock()
                .tables
                .entry(name.to_string())
                .or_insert_with(|| Arc::new(DeadLetterTable::default())),
        )
    }

    /// Whether a dead-letter table called `name` exists.
    pub fn has_table(&self, name: &str) -> bool {
        self.lock().tables.contains_key(name)
    }

    fn next_policy_id(&self) -> u64 {
        let mut state = self.lock();
        state.next_policy += 1;
        state.next_policy
    }

    /// Keep the records table definition `policy_id` has not handled before, and count them.
    fn admit(
        &self,
        policy_id: u64,
        records: Vec<BadRecord>,
        policy: ErrorPolicy,
        target: &DeadLetterTarget,
    ) -> Vec<BadRecord> {
        let mut state = self.lock();
        let fresh: Vec<BadRecord> = records
            .into_iter()
            .filter(|r| {
                state
                    .seen
                    .insert((policy_id, Arc::clone(&r.file), r.offset))
            })
            .collect();
        let n = fresh.len() as u64;
        match policy {
            ErrorPolicy::Skip => state.counts.skipped += n,
            ErrorPolicy::DeadLetter if n > 0 => {
                state.counts.dead_lettered += n;
                for d in target.describe() {
                    state.counts.destinations.insert(d);
                }
            }
            _ => {}
        }
        fresh
    }

    fn file_lock(&self, path: &Path) -> Arc<tokio::sync::Mutex<Option<tokio::fs::File>>> {
        Arc::clone(self.lock().files.entry(path.to_path_buf()).or_default())
    }
}

/// Where dead letters go: a JSON-lines file, a table of the session, or both.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadLetterTarget {
    pub path: Option<PathBuf>,
    pub table: Option<String>,
}

impl DeadLetterTarget {
    fn describe(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(p) = &self.path {
            out.push(p.display().to_string());
        }
        if let Some(t) = &self.table {
            out.push(format!("table {t}"));
        }
        out
    }
}

/// The error policy of one table definition, shared by all its partitions' readers.
#[derive(Debug)]
pub struct BadRecordPolicy {
    pub policy: ErrorPolicy,
    pub target: DeadLetterTarget,
    /// Fail once more than this many distinct bad records were met (`max_bad_records`).
    pub max_bad_records: Option<u64>,
    admitted: AtomicU64,
    /// Identifies this table definition in the ledger.
    id: u64,
    ledger: Arc<BadRecordLedger>,
}

impl BadRecordPolicy {
    pub fn new(
        policy: ErrorPolicy,
        target: DeadLetterTarget,
        max_bad_records: Option<u64>,
        ledger: Arc<BadRecordLedger>,
    ) -> Self {
        Self {
            policy,
            target,
            max_bad_records,
            admitted: AtomicU64::new(0),
            id: ledger.next_policy_id(),
            ledger,
        }
    }

    /// Strict reading: the first bad record is an error.
    pub fn strict(ledger: Arc<BadRecordLedger>) -> Self {
        Self::new(ErrorPolicy::Fail, DeadLetterTarget::default(), None, ledger)
    }

    /// Apply the policy to bad records found by a reader. `Err` stops the scan.
    pub async fn handle(&self, records: Vec<BadRecord>) -> DfResult<()> {
        if records.is_empty() {
            return Ok(());
        }
        if self.policy == ErrorPolicy::Fail {
            let first = &records[0];
            return Err(DataFusionError::Execution(format!(
                "bad record at {first}; set OPTIONS ('on_error' 'skip') or ('on_error' 'dead_letter') to continue past bad records"
            )));
        }
        let fresh = self
            .ledger
            .admit(self.id, records, self.policy, &self.target);
        if fresh.is_empty() {
            return Ok(());
        }
        let total = self
            .admitted
            .fetch_add(fresh.len() as u64, Ordering::Relaxed)
            + fresh.len() as u64;
        if self.policy == ErrorPolicy::DeadLetter {
            if let Some(path) = &self.target.path {
                self.append_file(path, &fresh).await?;
            }
            if let Some(name) = &self.target.table {
                self.ledger.table(name).append(&fresh);
            }
        }
        tracing::debug!(count = fresh.len(), policy = %self.policy, "bad input records");
        match self.max_bad_records {
            Some(max) if total > max => Err(DataFusionError::Execution(format!(
                "more than max_bad_records={max} bad records; the last: {}",
                fresh[fresh.len() - 1]
            ))),
            _ => Ok(()),
        }
    }

    async fn append_file(&self, path: &Path, records: &[BadRecord]) -> DfResult<()> {
        let mut text = String::new();
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        for r in records {
            let line = serde_json::json!({
                "file": &*r.file,
                "line": r.line,
                "offset": r.offset,
                "raw": r.raw,
                "reason": r.reason,
                "recorded_at": now,
            });
            text.push_str(&line.to_string());
            text.push('\n');
        }
        let io = |e: std::io::Error| {
            DataFusionError::Execution(format!(
                "cannot write dead letters to {}: {e}",
                path.display()
            ))
        };
        let lock = self.ledger.file_lock(path);
        let mut guard = lock.lock().await;
        let file = match guard.as_mut() {
            Some(f) => f,
            None => {
                if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    tokio::fs::create_dir_all(parent).await.map_err(io)?;
                }
                let f = tokio::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .await
                    .map_err(io)?;
                guard.insert(f)
            }
        };
        // One write per batch of records: whole lines, so a reader never sees half a record
        // unless the process dies mid-write (then only the last line can be cut). No fsync per
        // batch: it cost more than the read itself; the OS writes the lines out even if the
        // process dies, and the statement fails if a write fails.
        file.write_all(text.as_bytes()).await.map_err(io)?;
        file.flush().await.map_err(io)?;
        Ok(())
    }
}

/// The columns of a dead-letter table.
pub fn dead_letter_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("file", DataType::Utf8, false),
        Field::new("line", DataType::UInt64, true),
        Field::new("offset", DataType::UInt64, false),
        Field::new("raw", DataType::Utf8, false),
        Field::new("reason", DataType::Utf8, false),
        Field::new(
            "recorded_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
    ]))
}

/// A session table holding the dead letters routed to it (`dead_letter_table`), queryable
/// like any table: `SELECT reason, count(*) FROM bad_orders GROUP BY reason`.
#[derive(Debug, Default)]
pub struct DeadLetterTable {
    rows: Mutex<Vec<(BadRecord, i64)>>,
}

impl DeadLetterTable {
    fn append(&self, records: &[BadRecord]) {
        let now = chrono::Utc::now().timestamp_micros();
        let mut rows = self.rows.lock().unwrap_or_else(|p| p.into_inner());
        rows.extend(records.iter().cloned().map(|r| (r, now)));
    }

    /// The rows so far as one batch.
    pub fn snapshot(&self) -> DfResult<RecordBatch> {
        let rows = self.rows.lock().unwrap_or_else(|p| p.into_inner());
        let mut file = StringBuilder::new();
        let mut line = UInt64Builder::new();
        let mut offset = UInt64Builder::new();
        let mut raw = StringBuilder::new();
        let mut reason = StringBuilder::new();
        let mut at = TimestampMicrosecondBuilder::new().with_timezone("UTC");
        for (r, t) in rows.iter() {
            file.append_value(&*r.file);
            line.append_option(r.line);
            offset.append_value(r.offset);
            raw.append_value(&r.raw);
            reason.append_value(&r.reason);
            at.append_value(*t);
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(file.finish()),
            Arc::new(line.finish()),
            Arc::new(offset.finish()),
            Arc::new(raw.finish()),
            Arc::new(reason.finish()),
            Arc::new(at.finish()),
        ];
        Ok(RecordBatch::try_new(dead_letter_schema(), columns)?)
    }
}

#[async_trait]
impl TableProvider for DeadLetterTable {
    fn schema(&self) -> SchemaRef {
        dead_letter_schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let batch = self.snapshot()?;
        Ok(MemorySourceConfig::try_new_exec(
            &[vec![batch]],
            dead_letter_schema(),
            projection.cloned(),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(offset: u64) -> BadRecord {
        BadRecord {
            file: "f.csv".into(),
            line: Some(offset + 1),
            offset,
            raw: "a,b".into(),
            reason: "bad".into(),
        }
    }

    #[tokio::test]
    async fn fail_names_file_line_and_reason() {
        let p = BadRecordPolicy::strict(Arc::new(BadRecordLedger::new()));
        let e = p.handle(vec![rec(4)]).await.unwrap_err().to_string();
        assert!(e.contains("f.csv:5: bad"), "{e}");
    }

    #[tokio::test]
    async fn skip_counts_each_record_once() {
        let ledger = Arc::new(BadRecordLedger::new());
        let p = BadRecordPolicy::new(
            ErrorPolicy::Skip,
            DeadLetterTarget::default(),
            None,
            Arc::clone(&ledger),
        );
        p.handle(vec![rec(1), rec(2)]).await.unwrap();
        p.handle(vec![rec(2), rec(3)]).await.unwrap();
        assert_eq!(ledger.take_counts().skipped, 3);
        assert!(ledger.take_counts().is_empty());
    }

    #[tokio::test]
    async fn dead_letters_go_to_file_and_table_and_respect_the_maximum() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dl/bad.jsonl");
        let ledger = Arc::new(BadRecordLedger::new());
        let target = DeadLetterTarget {
            path: Some(path.clone()),
            table: Some("bad".into()),
        };
        let p = BadRecordPolicy::new(
            ErrorPolicy::DeadLetter,
            target,
            Some(2),
            Arc::clone(&ledger),
        );
        p.handle(vec![rec(1), rec(2)]).await.unwrap();
        let err = p.handle(vec![rec(3)]).await.unwrap_err().to_string();
        assert!(err.contains("max_bad_records=2"), "{err}");
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 3);
        let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(first["offset"], 1);
        assert_eq!(first["raw"], "a,b");
        assert_eq!(ledger.table("bad").snapshot().unwrap().num_rows(), 3);
        let counts = ledger.take_counts();
        assert_eq!(counts.dead_lettered, 3);
        assert!(counts.to_string().contains("table bad"), "{counts}");
    }
}
