//! FlowEngine's own statements, `CREATE CHECK` ([`super::quality`]) and `CREATE INCREMENTAL
//! VIEW` ([`super::incremental`]), planned by [`Engine::prepare`] and run by [`Engine::start`]
//! like every other statement, so that `flowengine run`, `flowengine sql`, Flight SQL clients and
//! the `.slt` runner accept the same SQL.
//!
//! Each is planned as the DataFusion plan of what it reads, so access control checks and
//! rewrites it like any query (row filters and masks included): a check as its failing-rows
//! query, an incremental view as a `CREATE VIEW` over its source table.
//!
//! Outside a recorded run (`flowengine run` keeps watermarks and check results per run, see
//! `src/exec.rs`), an incremental view shows every row of its source up to its current high mark,
//! and a check's outcome is returned as one row and recorded in the session's [`CheckLog`] (the
//! server's state store, so it appears in `system.quality_results`). A failing `ERROR` check fails
//! its statement.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::TableReference;
use datafusion::dataframe::DataFrame;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{CreateView, DdlStatement, LogicalPlan};
use datafusion::physical_plan::{ExecutionPlan, execute_stream};

use super::incremental::{self, IncrementalRange, IncrementalView};
use super::quality::{self, Check, CheckOutcome, Severity};
use super::runner::{Execution, Prepared, Started, StatementClass};
use super::split::PipelineStatement;
use crate::error::{EngineError, Result};
use crate::session::Engine;
use crate::state::{CheckRecord, StateStore};

/// What running a [`Prepared`] statement does beyond executing its plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// A DataFusion statement: its plan is what runs.
    Sql,
    /// `CREATE CHECK`: the plan is the check's failing-rows query.
    Check(Check),
    /// `CREATE INCREMENTAL VIEW`: the plan is a `CREATE VIEW` over the source table.
    IncrementalView(IncrementalView),
}

/// Where a session records the outcomes of checks it runs outside a recorded run, with the name
/// it records them under (`flowengine serve` gives every client session one, see
/// [`crate::SessionScope::origin`]).
#[derive(Debug, Clone)]
pub struct CheckLog {
    pub store: Arc<dyn StateStore>,
    /// The `pipeline` column of the records: who ran the checks.
    pub origin: String,
}

/// The columns a `CREATE CHECK` statement returns.
pub fn check_result_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("check_name", DataType::Utf8, false),
        Field::new("table_name", DataType::Utf8, true),
        Field::new("severity", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("failing_rows", DataType::UInt64, false),
        Field::new("sample", DataType::Utf8, true),
    ]))
}

impl Engine {
    /// Plan `statement` when it is one of FlowEngine's own statements (`None` otherwise).
    pub(super) async fn prepare_own(
        &self,
        statement: &PipelineStatement,
    ) -> Option<Result<Prepared>> {
        if let Some(parsed) = quality::parse(&statement.sql) {
            return Some(self.prepare_check(statement, parsed).await);
        }
        if let Some(parsed) = incremental::parse(&statement.sql) {
            return Some(self.prepare_incremental(statement, parsed).await);
        }
        None
    }

    async fn prepare_check(
        &self,
        statement: &PipelineStatement,
        parsed: std::result::Result<Check, String>,
    ) -> Result<Prepared> {
        let kind = "CHECK";
        let check = parsed.map_err(|m| own_error(statement, kind, DataFusionError::Plan(m)))?;
        let logical = self
            .context()
            .state()
            .create_logical_plan(&check.failing_rows_sql)
            .await
            .map_err(|e| {
                own_error(
                    statement,
                    kind,
                    DataFusionError::Plan(format!("check {}: {e}", check.name)),
                )
            })?;
        // A check only reads: `AS INSERT ...` or `AS EXPLAIN ANALYZE ...` would write or run
        // something else when its rows are counted.
        let reads_only = super::runner::classify(&logical).1 == StatementClass::Query
            && !matches!(
                logical,
                LogicalPlan::Explain(_) | LogicalPlan::Analyze(_) | LogicalPlan::DescribeTable(_)
            );
        if !reads_only {
            return Err(own_error(
                statement,
                kind,
                DataFusionError::Plan(format!(
                    "check {}: the rows a check fails must come from a query (SELECT, VALUES, WITH ...)",
                    check.name
                )),
            ));
        }
        Ok(Prepared {
            statement: statement.clone(),
            kind: kind.into(),
            class: StatementClass::Check,
            logical,
            action: Action::Check(check),
        })
    }

    async fn prepare_incremental(
        &self,
        statement: &PipelineStatement,
        parsed: std::result::Result<IncrementalView, String>,
    ) -> Result<Prepared> {
        let kind = "CREATE INCREMENTAL VIEW";
        let fail = |e: DataFusionError| own_error(statement, kind, e);
        let view = parsed.map_err(|m| fail(DataFusionError::Plan(m)))?;
        let source = self
            .context()
            .table(view.source.as_str())
            .await
            .map_err(fail)?;
        incremental::column_type(&view, source.schema()).map_err(fail)?;
        let logical = LogicalPlan::Ddl(DdlStatement::CreateView(CreateView {
            name: TableReference::parse_str(&view.name),
            input: Arc::new(source.into_unoptimized_plan()),
            or_replace: true,
            definition: None,
            temporary: false,
        }));
        Ok(Prepared {
            statement: statement.clone(),
            kind: kind.into(),
            class: StatementClass::Ddl,
            logical,
            action: Action::IncrementalView(view),
        })
    }

    /// Run a check over its (possibly access-controlled) failing-rows plan.
    pub async fn check_outcome(&self, prepared: &Prepared, check: &Check) -> Result<CheckOutcome> {
        let failing = DataFrame::new(self.context().state(), prepared.logical.clone());
        self.run_check_over(check, failing)
            .await
            .map_err(|e| prepared.error(e))
    }

    /// Create an incremental view over its (possibly access-controlled) source plan, showing
    /// the rows past `after` up to `upto` (the source's current high mark when `None`).
    pub async fn incremental_range(
        &self,
        prepared: &Prepared,
        view: &IncrementalView,
        after: Option<String>,
        upto: Option<Option<String>>,
    ) -> Result<IncrementalRange> {
        let LogicalPlan::Ddl(DdlStatement::CreateView(create)) = &prepared.logical else {
            return Err(prepared.error(DataFusionError::Internal(
                "an incremental view is planned as CREATE VIEW".into(),
            )));
        };
        let source = DataFrame::new(self.context().state(), create.input.as_ref().clone());
        self.create_incremental_view_over(view, source, after, upto)
            .await
            .map_err(|e| prepared.error(e))
    }

    /// [`Engine::start`] for FlowEngine's own statements (`None` for DataFusion's).
    /// Start a FlowEngine statement; in a dry run a check is only planned (its query already
    /// was, by [`Engine::prepare`]), while an incremental view is created so later statements
    /// resolve.
    pub(super) async fn start_own(
        &self,
        prepared: &Prepared,
        dry_run: bool,
    ) -> Option<Result<Started>> {
        match &prepared.action {
            Action::Sql => None,
            Action::Check(_) if dry_run => Some(Ok(Started::Planned { physical: None })),
            Action::IncrementalView(view) => Some(
                self.incremental_range(prepared, view, None, None)
                    .await
                    .map(|_| Started::Done),
            ),
            Action::Check(check) => Some(self.start_check(prepared, check).await),
        }
    }

    async fn start_check(&self, prepared: &Prepared, check: &Check) -> Result<Started> {
        let outcome = self.check_outcome(prepared, check).await?;
        let log = self.context().state().config().get_extension::<CheckLog>();
        if let Some(log) = log {
            let session: String = self.context().session_id().chars().take(8).collect();
            let run_id = format!("session-{session}");
            let record = outcome.record(check, &run_id, &log.origin);
            if let Err(e) = log.store.record_check(&record).await {
                tracing::warn!(check = %check.name, error = %e, "could not record a check result");
            }
        }
        if !outcome.passed() && check.severity == Severity::Error {
            return Err(EngineError::CheckFailed {
                location: prepared.statement.location.clone(),
                index: prepared.statement.index,
                message: outcome.failure(check),
            });
        }
        let batch = outcome_batch(check, &outcome).map_err(|e| prepared.error(e))?;
        let fail = |e: DataFusionError| prepared.error(e);
        let physical: Arc<dyn ExecutionPlan> =
            MemorySourceConfig::try_new_exec(&[vec![batch]], check_result_schema(), None)
                .map_err(fail)?;
        let stream =
            execute_stream(Arc::clone(&physical), self.context().task_ctx()).map_err(fail)?;
        Ok(Started::Running(Execution::without_writes(
            physical,
            stream,
            StatementClass::Check,
        )))
    }
}

fn outcome_batch(check: &Check, outcome: &CheckOutcome) -> datafusion::error::Result<RecordBatch> {
    let record = outcome.record(check, "", "");
    let text = |v: Option<String>| -> ArrayRef { Arc::new(StringArray::from(vec![v])) };
    Ok(RecordBatch::try_new(
        check_result_schema(),
        vec![
            text(Some(record.name)),
            text(record.table),
            text(Some(record.severity)),
            text(Some(record.status)),
            Arc::new(UInt64Array::from(vec![record.failing_rows])),
            text(record.sample),
        ],
    )?)
}

fn own_error(statement: &PipelineStatement, kind: &str, e: DataFusionError) -> EngineError {
    EngineError::Statement {
        location: statement.location.clone(),
        index: statement.index,
        kind: kind.to_string(),
        source: Box::new(e),
    }
}

impl CheckOutcome {
    /// This outcome as the state store records it.
    pub fn record(&self, check: &Check, run_id: &str, pipeline: &str) -> CheckRecord {
        CheckRecord {
            run_id: run_id.to_string(),
            pipeline: pipeline.to_string(),
            name: check.name.clone(),
            table: check.table.clone(),
            severity: match check.severity {
                Severity::Warn => "warn",
                Severity::Error => "error",
            }
            .into(),
            status: match (self.passed(), check.severity) {
                (true, _) => "passed",
                (false, Severity::Warn) => "warned",
                (false, Severity::Error) => "failed",
            }
            .into(),
            failing_rows: self.failing_rows,
            sample: self.sample.clone(),
            duration_ms: self.duration_ms,
            recorded_at: crate::state::now(),
        }
    }

    /// Why a failing `ERROR` check stops its run, with its first failing rows.
    pub fn failure(&self, check: &Check) -> String {
        let on = check
            .table
            .as_deref()
            .map(|t| format!(" on {t}"))
            .unwrap_or_default();
        format!(
            "check {}{on}: {} failing row(s); the run stops before later writes. First rows:\n{}",
            check.name,
            crate::progress::group_digits(self.failing_rows),
            self.sample.as_deref().unwrap_or("")
        )
    }
}
