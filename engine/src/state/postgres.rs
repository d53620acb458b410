//! The shared state store: tables in PostgreSQL (`flowengine_runs`, `flowengine_steps`,
//! `flowengine_watermarks`, `flowengine_quality_results`, `flowengine_commits`),
//! created on first use, so several machines running the same pipelines see one history.
//! The connection URL may hold a password: it is never printed ([`PostgresStateStore::location`]
//! shows host and database only).

use tokio::sync::OnceCell;
use tokio_postgres::{Client, NoTls};

use super::{
    CheckRecord, CommitRecord, RunRecord, RunStatus, StateError, StateStore, StepRecord,
    StepStatus, WatermarkRecord,
};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS flowengine_runs (
    run_id TEXT PRIMARY KEY,
    pipeline TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    variables TEXT NOT NULL,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    status TEXT NOT NULL,
    error TEXT,
    resumed_from TEXT
);
CREATE TABLE IF NOT EXISTS flowengine_steps (
    run_id TEXT NOT NULL,
    step BIGINT NOT NULL,
    line BIGINT NOT NULL,
    col BIGINT NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    rows BIGINT,
    duration_ms BIGINT NOT NULL,
    error TEXT,
    finished_at TEXT NOT NULL,
    committed_by TEXT,
    seq BIGSERIAL PRIMARY KEY
);
CREATE INDEX IF NOT EXISTS flowengine_steps_run ON flowengine_steps (run_id);
CREATE TABLE IF NOT EXISTS flowengine_watermarks (
    pipeline TEXT NOT NULL,
    name TEXT NOT NULL,
    col TEXT NOT NULL,
    value TEXT,
    run_id TEXT NOT NULL,
    committed BOOLEAN NOT NULL,
    recorded_at TEXT NOT NULL,
    seq BIGSERIAL PRIMARY KEY
);
CREATE INDEX IF NOT EXISTS flowengine_watermarks_pipeline ON flowengine_watermarks (pipeline);
CREATE TABLE IF NOT EXISTS flowengine_quality_results (
    run_id TEXT NOT NULL,
    pipeline TEXT NOT NULL,
    check_name TEXT NOT NULL,
    table_name TEXT,
    severity TEXT NOT NULL,
    status TEXT NOT NULL,
    failing_rows BIGINT NOT NULL,
    sample TEXT,
    duration_ms BIGINT NOT NULL,
    recorded_at TEXT NOT NULL,
    seq BIGSERIAL PRIMARY KEY
);
CREATE TABLE IF NOT EXISTS flowengine_commits (
    run_id TEXT NOT NULL,
    step BIGINT NOT NULL,
    files TEXT NOT NULL,
    recorded_at TEXT NOT NULL,
    seq BIGSERIAL PRIMARY KEY
);
CREATE INDEX IF NOT EXISTS flowengine_commits_run ON flowengine_commits (run_id);
";

#[derive(Debug)]
pub struct PostgresStateStore {
    /// As configured: a password in it is a `${secret:NAME}` reference.
    url: String,
    secrets: crate::SecretStore,
    client: OnceCell<Client>,
}

impl PostgresStateStore {
    pub fn new(url: &str, secrets: crate::SecretStore) -> Self {
        Self {
            url: url.to_string(),
            secrets,
            client: OnceCell::new(),
        }
    }

    fn err(&self, e: impl std::fmt::Display) -> StateError {
        StateError::Corrupt {
            location: self.location(),
            message: e.to_string(),
        }
    }

    async fn client(&self) -> Result<&Client, StateError> {
        self.client
            .get_or_try_init(|| async {
                let url = self.secrets.expand(&self.url).map_err(|e| self.err(e))?;
                let (client, connection) = tokio_postgres::connect(&url, NoTls)
                    .await
                    .map_err(|e| self.err(format!("cannot connect: {e}")))?;
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::warn!("state store connection closed: {e}");
                    }
                });
                client
                    .batch_execute(SCHEMA)
                    .await
                    .map_err(|e| self.err(format!("creating tables: {e}")))?;
                Ok(client)
            })
            .await
    }
}

fn run_status(s: &str) -> RunStatus {
    match s {
        "succeeded" => RunStatus::Succeeded,
        "failed" => RunStatus::Failed,
        "interrupted" => RunStatus::Interrupted,
        _ => RunStatus::Running,
    }
}

fn step_status(s: &str) -> StepStatus {
    match s {
        "succeeded" => StepStatus::Succeeded,
        "skipped" => StepStatus::Skipped,
        _ => StepStatus::Failed,
    }
}

#[async_trait::async_trait]
impl StateStore for PostgresStateStore {
    async fn begin_run(&self, run: &RunRecord) -> Result<(), StateError> {
        let vars = serde_json::to_string(&run.variables).map_err(|e| self.err(e))?;
        self.client()
            .await?
            .execute(
                "INSERT INTO flowengine_runs (run_id, pipeline, content_hash, variables, started_at, \
                 finished_at, status, error, resumed_from) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9)",
                &[
                    &run.run_id,
                    &run.pipeline,
                    &run.content_hash,
                    &vars,
                    &run.started_at,
                    &run.finished_at,
                    &run.status.as_str(),
                    &run.error,
                    &run.resumed_from,
                ],
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    async fn record_step(&self, step: &StepRecord) -> Result<(), StateError> {
        self.client()
            .await?
            .execute(
                "INSERT INTO flowengine_steps (run_id, step, line, col, kind, status, rows, \
                 duration_ms, error, finished_at, committed_by) \
                 VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11)",
                &[
                    &step.run_id,
                    &(step.index as i64),
                    &(step.line as i64),
                    &(step.column as i64),
                    &step.kind,
                    &step.status.as_str(),
                    &step.rows.map(|r| r as i64),
                    &(step.duration_ms as i64),
                    &step.error,
                    &step.finished_at,
                    &step.committed_by,
                ],
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    async fn finish_run(
        &self,
        run_id: &str,
        status: RunStatus,
        error: Option<String>,
    ) -> Result<(), StateError> {
        self.client()
            .await?
            .execute(
                "UPDATE flowengine_runs SET status = $2, error = $3, finished_at = $4 WHERE run_id = $1",
                &[&run_id, &status.as_str(), &error, &super::now()],
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    async fn runs(&self, pipeline: Option<&str>) -> Result<Vec<RunRecord>, StateError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT run_id, pipeline, content_hash, variables, started_at, finished_at, status, \
                 error, resumed_from FROM flowengine_runs \
                 WHERE $1::TEXT IS NULL OR pipeline = $1 ORDER BY started_at, run_id",
                &[&pipeline],
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(rows
            .iter()
            .map(|r| RunRecord {
                run_id: r.get(0),
                pipeline: r.get(1),
                content_hash: r.get(2),
                variables: serde_json::from_str(r.get::<_, &str>(3)).unwrap_or_default(),
                started_at: r.get(4),
                finished_at: r.get(5),
                status: run_status(r.get(6)),
                error: r.get(7),
                resumed_from: r.get(8),
            })
            .collect())
    }

    async fn steps(&self, run_id: &str) -> Result<Vec<StepRecord>, StateError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT run_id, step, line, col, kind, status, rows, duration_ms, error, \
                 finished_at, committed_by FROM flowengine_steps WHERE run_id = $1 ORDER BY seq",
                &[&run_id],
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(rows
            .iter()
            .map(|r| StepRecord {
                run_id: r.get(0),
                index: r.get::<_, i64>(1) as usize,
                line: r.get::<_, i64>(2) as u64,
                column: r.get::<_, i64>(3) as u64,
                kind: r.get(4),
                status: step_status(r.get(5)),
                rows: r.get::<_, Option<i64>>(6).map(|v| v as u64),
                duration_ms: r.get::<_, i64>(7) as u64,
                error: r.get(8),
                finished_at: r.get(9),
                committed_by: r.get(10),
            })
            .collect())
    }

    async fn record_watermark(&self, w: &WatermarkRecord) -> Result<(), StateError> {
        self.client()
            .await?
            .execute(
                "INSERT INTO flowengine_watermarks (pipeline, name, col, value, run_id, committed, \
                 recorded_at) VALUES ($1,$2,$3,$4,$5,$6,$7)",
                &[
                    &w.pipeline,
                    &w.name,
                    &w.column,
                    &w.value,
                    &w.run_id,
                    &w.committed,
                    &w.recorded_at,
                ],
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    async fn record_check(&self, c: &CheckRecord) -> Result<(), StateError> {
        self.client()
            .await?
            .execute(
                "INSERT INTO flowengine_quality_results (run_id, pipeline, check_name, table_name, \
                 severity, status, failing_rows, sample, duration_ms, recorded_at) \
                 VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10)",
                &[
                    &c.run_id,
                    &c.pipeline,
                    &c.name,
                    &c.table,
                    &c.severity,
                    &c.status,
                    &(c.failing_rows as i64),
                    &c.sample,
                    &(c.duration_ms as i64),
                    &c.recorded_at,
                ],
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    async fn record_commit(&self, c: &CommitRecord) -> Result<(), StateError> {
        let files = serde_json::to_string(&c.files).map_err(|e| self.err(e))?;
        self.client()
            .await?
            .execute(
                "INSERT INTO flowengine_commits (run_id, step, files, recorded_at) \
                 VALUES ($1,$2,$3,$4)",
                &[&c.run_id, &(c.index as i64), &files, &c.recorded_at],
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    async fn commits(&self, run_id: &str) -> Result<Vec<CommitRecord>, StateError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT run_id, step, files, recorded_at FROM flowengine_commits \
                 WHERE run_id = $1 ORDER BY seq",
                &[&run_id],
            )
            .await
            .map_err(|e| self.err(e))?;
        rows.iter()
            .map(|r| {
                Ok(CommitRecord {
                    run_id: r.get(0),
                    index: r.get::<_, i64>(1) as usize,
                    files: serde_json::from_str(r.get::<_, &str>(2)).map_err(|e| self.err(e))?,
                    recorded_at: r.get(3),
                })
            })
            .collect()
    }

    async fn checks(&self) -> Result<Vec<CheckRecord>, StateError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT run_id, pipeline, check_name, table_name, severity, status, failing_rows, \
                 sample, duration_ms, recorded_at FROM flowengine_quality_results ORDER BY seq",
                &[],
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(rows
            .iter()
            .map(|r| CheckRecord {
                run_id: r.get(0),
                pipeline: r.get(1),
                name: r.get(2),
                table: r.get(3),
                severity: r.get(4),
                status: r.get(5),
                failing_rows: r.get::<_, i64>(6) as u64,
                sample: r.get(7),
                duration_ms: r.get::<_, i64>(8) as u64,
                recorded_at: r.get(9),
            })
            .collect())
    }

    async fn watermarks(&self, pipeline: Option<&str>) -> Result<Vec<WatermarkRecord>, StateError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT pipeline, name, col, value, run_id, committed, recorded_at \
                 FROM flowengine_watermarks WHERE $1::TEXT IS NULL OR pipeline = $1 ORDER BY seq",
                &[&pipeline],
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(rows
            .iter()
            .map(|r| WatermarkRecord {
                pipeline: r.get(0),
                name: r.get(1),
                column: r.get(2),
                value: r.get(3),
                run_id: r.get(4),
                committed: r.get(5),
                recorded_at: r.get(6),
            })
            .collect())
    }

    fn location(&self) -> String {
        // Host and database only: the URL may carry a password.
        match url::Url::parse(&self.url) {
            Ok(u) => format!(
                "postgresql://{}{}",
                u.host_str().unwrap_or("localhost"),
                u.path()
            ),
            Err(_) => "postgresql state store".to_string(),
        }
    }
}
