//! Planning and executing one pipeline statement: parse with positions, plan, classify, then run
//! DDL directly and queries/writes as a physical plan whose stream the caller drives.
//!
//! Writes (`COPY`, `INSERT`) execute in a staged session view (see [`crate::staging`]) and only
//! become visible when the caller [`Execution::finish`]es them after the stream is drained.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, UInt64Array};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::DFSchema;
use datafusion::datasource::file_format::format_as_file_type;
use datafusion::datasource::listing::ListingTableUrl;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{
    DdlStatement, EmptyRelation, LogicalPlan, LogicalPlanBuilder, Statement as PlanStatement,
};
use datafusion::physical_plan::{
    ExecutionPlan, SendableRecordBatchStream, displayable, execute_stream,
};
use datafusion::prelude::SessionContext;

use crate::error::{EngineError, Result};
use crate::pipeline::dialect::Action;
use crate::pipeline::split::PipelineStatement;
use crate::session::Engine;
use crate::staging::WriteTxn;

/// What a statement does, which decides how it runs and what `--dry-run` skips.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatementClass {
    /// Catalog or session changes (`CREATE EXTERNAL TABLE`, `CREATE VIEW`, `SET`, `DROP`).
    Ddl,
    /// `CREATE TABLE ... AS SELECT`: materialises a query into memory.
    CreateTableAs,
    /// `COPY ... TO`, `INSERT INTO`: writes to a sink.
    Write,
    /// Anything returning rows (`SELECT`, `VALUES`, `SHOW`, `EXPLAIN`, `DESCRIBE`).
    Query,
    /// `CREATE CHECK`: runs a data quality check and returns its outcome as one row.
    Check,
}

/// A planned statement.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub statement: PipelineStatement,
    /// Human-readable kind, e.g. `COPY`, `CREATE EXTERNAL TABLE`, `QUERY`.
    pub kind: String,
    pub class: StatementClass,
    pub logical: LogicalPlan,
    /// What running it does beyond executing `logical` (FlowEngine's own statements).
    pub action: Action,
}

/// What a dry run remembers about the writes it skipped, so that a later
/// `CREATE EXTERNAL TABLE` over their output (a common write-then-read-back step) can still be
/// planned: the table is declared with the schema the write would have produced.
#[derive(Debug, Default)]
pub struct DryRun {
    skipped_writes: HashMap<String, (Arc<DFSchema>, Vec<String>)>,
}

impl DryRun {
    pub fn new() -> Self {
        Self::default()
    }

    fn key(location: &str) -> String {
        ListingTableUrl::parse(location)
            .map(|u| u.as_str().trim_end_matches('/').to_string())
            .unwrap_or_else(|_| location.trim_end_matches('/').to_string())
    }

    fn remember(&mut self, plan: &LogicalPlan) {
        if let LogicalPlan::Copy(copy) = plan
            && let Ok(schema) = DFSchema::try_from(copy.input.schema().as_arrow().clone())
        {
            self.skipped_writes.insert(
                Self::key(&copy.output_url),
                (Arc::new(schema), copy.partition_by.clone()),
            );
        }
    }

    /// The plan to run instead of `plan` in a dry run.
    fn rewrite(&self, plan: &LogicalPlan) -> LogicalPlan {
        if let LogicalPlan::Ddl(DdlStatement::CreateExternalTable(cmd)) = plan
            && cmd.schema.fields().is_empty()
            && let [location] = cmd.locations.as_slice()
            && let Some((schema, partitions)) = self.skipped_writes.get(&Self::key(location))
        {
            let mut cmd = cmd.clone();
            cmd.schema = Arc::clone(schema);
            if cmd.table_partition_cols.is_empty() {
                cmd.table_partition_cols = partitions.clone();
            }
            return LogicalPlan::Ddl(DdlStatement::CreateExternalTable(cmd));
        }
        plan.clone()
    }
}

/// The result of starting a statement.
pub enum Started {
    /// Completed without producing rows (DDL).
    Done,
    /// `--dry-run`: planned, not executed.
    Planned {
        physical: Option<Arc<dyn ExecutionPlan>>,
    },
    /// Executing: drain `stream`, then call [`Execution::finish`].
    Running(Execution),
}

/// An executing statement.
pub struct Execution {
    pub physical: Arc<dyn ExecutionPlan>,
    pub stream: SendableRecordBatchStream,
    pub class: StatementClass,
    txn: Option<Arc<WriteTxn>>,
    /// Where cluster executors staged this statement's writes (empty on a single node).
    remote_targets: Vec<RemoteTarget>,
}

/// Where a statement's commit is recorded before its files are renamed into place.
#[derive(Clone, Copy)]
pub struct CommitLog<'a> {
    pub store: &'a dyn crate::state::StateStore,
    pub run_id: &'a str,
    /// The statement (1-based).
    pub index: usize,
}

/// A write target of a statement run on a cluster, whose executors stage objects there.
struct RemoteTarget {
    store: Arc<dyn object_store::ObjectStore>,
    /// The store's URL (`file:///`, `s3://bucket/`).
    root: url::Url,
    prefix: object_store::path::Path,
}

/// Take over what cluster executors staged for a statement into its transaction.
async fn adopt_remote(
    txn: &Option<Arc<WriteTxn>>,
    targets: &[RemoteTarget],
) -> std::result::Result<(), object_store::Error> {
    if let Some(txn) = txn {
        for target in targets {
            txn.adopt(Arc::clone(&target.store), &target.root, &target.prefix)
                .await?;
        }
    }
    Ok(())
}

impl Execution {
    /// An execution that writes nothing (a query's, a check's).
    pub(crate) fn without_writes(
        physical: Arc<dyn ExecutionPlan>,
        stream: SendableRecordBatchStream,
        class: StatementClass,
    ) -> Self {
        Execution {
            physical,
            stream,
            class,
            txn: None,
            remote_targets: Vec::new(),
        }
    }

    /// Commit staged writes after the stream was drained without error. With a `log`, a commit
    /// of files is recorded there before the first is renamed into place, so a crash half-way
    /// leaves a commit `--resume` finishes rather than one it would write again; a failure to
    /// record it rolls the write back.
    pub async fn finish(self, log: Option<CommitLog<'_>>) -> Result<()> {
        let Execution {
            txn,
            remote_targets,
            ..
        } = self;
        if let Err(e) = adopt_remote(&txn, &remote_targets).await {
            if let Some(txn) = &txn {
                txn.rollback().await;
            }
            return Err(EngineError::from(
                DataFusionError::ObjectStore(Box::new(e))
                    .context("finding the files cluster executors wrote"),
            ));
        }
        if let Some(txn) = txn {
            let files = txn.files();
            if let Some(log) = log
                && !files.is_empty()
            {
                crate::faults::point("commit.before_record", log.index);
                let record = crate::state::CommitRecord {
                    run_id: log.run_id.to_string(),
                    index: log.index,
                    files,
                    recorded_at: crate::state::now(),
                };
                if let Err(e) = log.store.record_commit(&record).await {
                    txn.rollback().await;
                    return Err(EngineError::Commit {
                        run_id: log.run_id.to_string(),
                        message: format!(
                            "statement {}: its files were not committed because the commit could not be recorded: {e}",
                            log.index
                        ),
                    });
                }
            }
            txn.commit().await.map_err(|e| {
                EngineError::from(
                    DataFusionError::ObjectStore(Box::new(e))
                        .context("committing written files (renaming staged files into place)"),
                )
            })?;
        }
        Ok(())
    }

    /// Discard staged writes after a failure.
    pub async fn abort(self) {
        let Execution {
            txn,
            remote_targets,
            ..
        } = self;
        // Best effort: what cannot be listed stays hidden under its staging name.
        let _ = adopt_remote(&txn, &remote_targets).await;
        if let Some(txn) = txn {
            txn.rollback().await;
        }
    }
}

/// Rows affected, from the single `count` batch DataFusion's writes return.
pub fn rows_affected(batches: &[RecordBatch]) -> Option<u64> {
    let batch = batches.first()?;
    let col = batch.column_by_name("count")?;
    let counts = col.as_any().downcast_ref::<UInt64Array>()?;
    (!counts.is_empty()).then(|| counts.value(0))
}

/// File format of `--output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Csv,
    Json,
    Parquet,
}

impl OutputFormat {
    /// From a file name's extension.
    pub fn from_path(path: &str) -> Option<Self> {
        let ext = path.rsplit('.').next()?.to_ascii_lowercase();
        match ext.as_str() {
            "csv" => Some(Self::Csv),
            "json" | "ndjson" | "jsonl" => Some(Self::Json),
            "parquet" => Some(Self::Parquet),
            _ => None,
        }
    }

    fn extension(self) -> &'static str {
        match self {
            Self::Csv => "csv",
            Self::Json => "json",
            Self::Parquet => "parquet",
        }
    }
}

impl Engine {
    /// Parse and plan one statement. Errors name the statement's file, line and column.
    pub async fn prepare(&self, statement: &PipelineStatement) -> Result<Prepared> {
        if let Some(own) = self.prepare_own(statement).await {
            return own;
        }
        let state = self.context().state();
        let dialect = state.config().options().sql_parser.dialect;
        let fail = |kind: &str, e: DataFusionError| EngineError::Statement {
            location: statement.location.clone(),
            index: statement.index,
            kind: kind.to_string(),
            source: Box::new(e),
        };
        // Before parsing: trees deep enough to exhaust a stack are refused, not built.
        crate::complexity::check(
            &statement.sql,
            crate::complexity::ComplexityLimits::default(),
        )
        .map_err(|e| fail("parse", DataFusionError::Plan(e.to_string())))?;
        let parsed = state
            .sql_to_statement(&statement.positioned_sql(), &dialect)
            .map_err(|e| fail("parse", e))?;
        let guess = leading_keywords(&statement.sql);
        let logical = state
            .statement_to_plan(parsed)
            .await
            .map_err(|e| fail(&guess, e))?;
        let (kind, class) = classify(&logical);
        Ok(Prepared {
            statement: statement.clone(),
            kind,
            class,
            logical,
            action: Action::Sql,
        })
    }

    /// Run a prepared statement. With a [`DryRun`], only DDL runs (so later statements can be
    /// planned); CTAS creates an empty table of the right schema; writes and queries are planned.
    pub async fn start(
        &self,
        prepared: &Prepared,
        dry_run: Option<&mut DryRun>,
    ) -> Result<Started> {
        self.start_in_run(prepared, dry_run, None).await
    }

    /// [`Engine::start`] for a statement of the recorded run `run_id`: the files it stages
    /// carry the run's id (see [`crate::staging::sweep`]).
    pub async fn start_in_run(
        &self,
        prepared: &Prepared,
        mut dry_run: Option<&mut DryRun>,
        run_id: Option<&str>,
    ) -> Result<Started> {
        if let Some(own) = self.start_own(prepared, dry_run.is_some()).await {
            return own;
        }
        let fail = |e: DataFusionError| prepared.error(e);
        let plan = match &dry_run {
            Some(d) => d.rewrite(&prepared.logical),
            None => prepared.logical.clone(),
        };
        if prepared.class == StatementClass::Write
            && let Some(d) = dry_run.as_deref_mut()
        {
            d.remember(&prepared.logical);
        }
        let dry_run = dry_run.is_some();
        match prepared.class {
            StatementClass::Ddl => {
                let df = self
                    .context()
                    .execute_logical_plan(plan)
                    .await
                    .map_err(fail)?;
                if let LogicalPlan::Ddl(DdlStatement::CreateExternalTable(cmd)) = &prepared.logical
                    && !dry_run
                {
                    self.check_not_empty(cmd).await.map_err(fail)?;
                }
                // EXECUTE of a prepared statement comes back as a query to run.
                if matches!(df.logical_plan(), LogicalPlan::EmptyRelation(_)) || dry_run {
                    return Ok(Started::Done);
                }
                let physical = df.create_physical_plan().await.map_err(fail)?;
                let stream = self
                    .execute_watched(&physical, Arc::new(df.task_ctx()))
                    .map_err(fail)?;
                Ok(Started::Running(Execution {
                    physical,
                    stream,
                    class: StatementClass::Query,
                    txn: None,
                    remote_targets: Vec::new(),
                }))
            }
            StatementClass::CreateTableAs => {
                let plan = if dry_run {
                    empty_ctas(&prepared.logical)
                } else {
                    prepared.logical.clone()
                };
                self.context()
                    .execute_logical_plan(plan)
                    .await
                    .map_err(fail)?;
                Ok(if dry_run {
                    Started::Planned { physical: None }
                } else {
                    Started::Done
                })
            }
            StatementClass::Write | StatementClass::Query | StatementClass::Check => {
                let txn = (prepared.class == StatementClass::Write).then(|| {
                    Arc::new(match run_id {
                        Some(run) => WriteTxn::owned_by(run),
                        None => WriteTxn::new(),
                    })
                });
                let ctx = match &txn {
                    // Never fall back to unstaged writes: a write without its staging is an error.
                    Some(txn) => self.staged_context(txn).map_err(fail)?,
                    None => self.context().clone(),
                };
                self.run_physical(&ctx, prepared, txn, dry_run).await
            }
        }
    }

    async fn run_physical(
        &self,
        ctx: &SessionContext,
        prepared: &Prepared,
        txn: Option<Arc<WriteTxn>>,
        dry_run: bool,
    ) -> Result<Started> {
        let fail = |e: DataFusionError| prepared.error(e);
        let df = ctx
            .execute_logical_plan(prepared.logical.clone())
            .await
            .map_err(fail)?;
        let physical = df.create_physical_plan().await.map_err(fail)?;
        if dry_run {
            return Ok(Started::Planned {
                physical: Some(physical),
            });
        }
        let remote_targets = match (&txn, &self.config().cluster) {
            (Some(_), Some(_)) => self.write_targets(&prepared.logical).map_err(fail)?,
            _ => Vec::new(),
        };
        let stream = self
            .execute_watched(&physical, Arc::new(df.task_ctx()))
            .map_err(fail)?;
        Ok(Started::Running(Execution {
            physical,
            stream,
            class: prepared.class,
            txn,
            remote_targets,
        }))
    }

    /// Execute `physical`; a failure of its stream goes past the connectors' failure
    /// locators first (see [`crate::failure`]).
    fn execute_watched(
        &self,
        physical: &Arc<dyn ExecutionPlan>,
        task: Arc<datafusion::execution::TaskContext>,
    ) -> datafusion::error::Result<SendableRecordBatchStream> {
        let stream = execute_stream(Arc::clone(physical), Arc::clone(&task))?;
        Ok(
            match task
                .session_config()
                .get_extension::<crate::failure::FailureLocators>()
            {
                Some(locators) => locators.watch(stream, physical, &task),
                None => stream,
            },
        )
    }

    /// Delete the staged leftovers of dead runs where `prepared` (a write) is about to write:
    /// files staged there by a run `dead` says is dead, except those in `keep`.
    pub async fn sweep_leftovers(
        &self,
        prepared: &Prepared,
        dead: &(dyn Fn(&str) -> bool + Sync),
        keep: &std::collections::HashSet<String>,
    ) -> Result<crate::staging::Swept> {
        let mut total = crate::staging::Swept::default();
        if prepared.class != StatementClass::Write {
            return Ok(total);
        }
        let targets = self
            .write_targets(&prepared.logical)
            .map_err(|e| prepared.error(e))?;
        for t in targets {
            let swept = crate::staging::sweep(t.store.as_ref(), &t.root, &t.prefix, dead, keep)
                .await
                .map_err(|e| {
                    prepared.error(
                        DataFusionError::ObjectStore(Box::new(e))
                            .context("removing staged files of dead runs"),
                    )
                })?;
            total.files += swept.files;
            total.bytes += swept.bytes;
        }
        Ok(total)
    }

    /// The locations a `COPY` or an `INSERT` into a file table writes to, with their stores.
    fn write_targets(&self, plan: &LogicalPlan) -> datafusion::error::Result<Vec<RemoteTarget>> {
        let urls: Vec<ListingTableUrl> = match plan {
            LogicalPlan::Copy(copy) => vec![ListingTableUrl::parse(&copy.output_url)?],
            LogicalPlan::Dml(dml) => {
                let target = datafusion::datasource::source_as_provider(&dml.target)?;
                match (target.as_ref() as &dyn std::any::Any)
                    .downcast_ref::<datafusion::datasource::listing::ListingTable>()
                {
                    Some(listing) => listing.table_paths().clone(),
                    None => Vec::new(),
                }
            }
            _ => Vec::new(),
        };
        let runtime = self.context().runtime_env();
        urls.into_iter()
            .map(|url| {
                Ok(RemoteTarget {
                    store: runtime.object_store(url.object_store())?,
                    root: AsRef::<url::Url>::as_ref(&url.object_store()).clone(),
                    prefix: url.prefix().clone(),
                })
            })
            .collect()
    }

    /// A table whose schema was inferred with no columns (an empty file, a header-only
    /// directory) is useless and would silently yield nothing: reject it with a clear error.
    async fn check_not_empty(
        &self,
        cmd: &datafusion::logical_expr::CreateExternalTable,
    ) -> datafusion::error::Result<()> {
        if !cmd.schema.fields().is_empty() {
            return Ok(());
        }
        let table = self.context().table_provider(cmd.name.clone()).await?;
        if table.schema().fields().is_empty() {
            let _ = self.context().deregister_table(cmd.name.clone());
            return Err(DataFusionError::Plan(format!(
                "no columns could be inferred for table `{}` from {} (empty file?); \
                 declare the columns, e.g. CREATE EXTERNAL TABLE {} (id INT, ...) ...",
                cmd.name,
                cmd.locations.join(", "),
                cmd.name
            )));
        }
        Ok(())
    }

    /// Turn a query into a write of its result to one file at `path` (format from the extension).
    pub fn output_to_file(&self, prepared: &Prepared, path: &str) -> Result<Prepared> {
        let format = OutputFormat::from_path(path).ok_or_else(|| {
            prepared.error(DataFusionError::Plan(format!(
                "cannot tell the output format of `{path}`: use a .csv, .json or .parquet file name"
            )))
        })?;
        let state = self.context().state();
        let factory = state
            .get_file_format_factory(format.extension())
            .ok_or_else(|| {
                prepared.error(DataFusionError::Plan(format!("no {format:?} writer")))
            })?;
        let mut options = HashMap::new();
        if format == OutputFormat::Csv {
            options.insert("format.has_header".to_string(), "true".to_string());
        }
        let plan = LogicalPlanBuilder::copy_to(
            prepared.logical.clone(),
            path.to_string(),
            format_as_file_type(factory),
            options,
            vec![],
        )
        .and_then(|b| b.build())
        .map_err(|e| prepared.error(e))?;
        Ok(Prepared {
            statement: prepared.statement.clone(),
            kind: format!("{} -> {path}", prepared.kind),
            class: StatementClass::Write,
            logical: plan,
            action: Action::Sql,
        })
    }

    /// The optimized logical plan and the physical plan, for `--explain`.
    pub async fn explain(&self, prepared: &Prepared) -> Result<String> {
        let state = self.context().state();
        let mut out = String::new();
        match prepared.class {
            StatementClass::Ddl => {
                out.push_str(&format!("{}\n", prepared.logical.display_indent()));
            }
            _ => {
                let optimized = state
                    .optimize(&prepared.logical)
                    .map_err(|e| prepared.error(e))?;
                out.push_str("logical plan:\n");
                out.push_str(&format!("{}\n", optimized.display_indent()));
                if prepared.class != StatementClass::CreateTableAs {
                    let physical = state
                        .create_physical_plan(&prepared.logical)
                        .await
                        .map_err(|e| prepared.error(e))?;
                    out.push_str("physical plan:\n");
                    out.push_str(&format!("{}", displayable(physical.as_ref()).indent(true)));
                }
            }
        }
        Ok(out)
    }
}

impl Prepared {
    /// The columns running it returns (a check's outcome for `CREATE CHECK`).
    pub fn output_schema(&self) -> datafusion::arrow::datatypes::SchemaRef {
        match &self.action {
            Action::Check(_) => super::dialect::check_result_schema(),
            _ => Arc::new(self.logical.schema().as_arrow().clone()),
        }
    }

    /// Wrap an error with this statement's location and kind.
    pub fn error(&self, e: DataFusionError) -> EngineError {
        EngineError::Statement {
            location: self.statement.location.clone(),
            index: self.statement.index,
            kind: self.kind.clone(),
            source: Box::new(e),
        }
    }
}

pub(super) fn classify(plan: &LogicalPlan) -> (String, StatementClass) {
    use StatementClass::*;
    match plan {
        LogicalPlan::Ddl(ddl) => {
            let kind = match ddl {
                DdlStatement::CreateExternalTable(_) => "CREATE EXTERNAL TABLE",
                DdlStatement::CreateMemoryTable(t) => {
                    if matches!(t.input.as_ref(), LogicalPlan::EmptyRelation(_)) {
                        "CREATE TABLE"
                    } else {
                        return ("CREATE TABLE AS".into(), CreateTableAs);
                    }
                }
                DdlStatement::CreateView(_) => "CREATE VIEW",
                DdlStatement::CreateCatalogSchema(_) => "CREATE SCHEMA",
                DdlStatement::CreateCatalog(_) => "CREATE DATABASE",
                DdlStatement::CreateIndex(_) => "CREATE INDEX",
                DdlStatement::DropTable(_) => "DROP TABLE",
                DdlStatement::DropView(_) => "DROP VIEW",
                DdlStatement::DropCatalogSchema(_) => "DROP SCHEMA",
                DdlStatement::CreateFunction(_) => "CREATE FUNCTION",
                DdlStatement::DropFunction(_) => "DROP FUNCTION",
            };
            (kind.into(), Ddl)
        }
        LogicalPlan::Statement(s) => {
            let kind = match s {
                PlanStatement::SetVariable(_) => "SET",
                PlanStatement::ResetVariable(_) => "RESET",
                PlanStatement::Prepare(_) => "PREPARE",
                PlanStatement::Execute(_) => "EXECUTE",
                PlanStatement::Deallocate(_) => "DEALLOCATE",
                _ => "STATEMENT",
            };
            (kind.into(), Ddl)
        }
        LogicalPlan::Dml(dml) => (dml.op.to_string().to_uppercase(), Write),
        LogicalPlan::Copy(_) => ("COPY".into(), Write),
        LogicalPlan::Explain(_) | LogicalPlan::Analyze(_) => ("EXPLAIN".into(), Query),
        LogicalPlan::DescribeTable(_) => ("DESCRIBE".into(), Query),
        _ => ("QUERY".into(), Query),
    }
}

/// A CTAS whose input is replaced by an empty relation of the same schema.
fn empty_ctas(plan: &LogicalPlan) -> LogicalPlan {
    match plan {
        LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(t)) => {
            let mut t = t.clone();
            t.input = Arc::new(LogicalPlan::EmptyRelation(EmptyRelation {
                produce_one_row: false,
                schema: Arc::clone(t.input.schema()),
            }));
            LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(t))
        }
        other => other.clone(),
    }
}

/// The first keywords of a statement, for errors raised before it could be classified.
fn leading_keywords(sql: &str) -> String {
    let words: Vec<&str> = sql
        .split_whitespace()
        .take_while(|w| w.chars().all(|c| c.is_ascii_alphabetic()))
        .take(3)
        .collect();
    match words.first().map(|w| w.to_ascii_uppercase()).as_deref() {
        None => "statement".into(),
        Some("SELECT" | "WITH" | "VALUES" | "FROM") => "QUERY".into(),
        Some(_) => words.join(" ").to_uppercase(),
    }
}
