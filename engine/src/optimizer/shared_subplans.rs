//! Shared subplans: an aggregate that occurs more than once in an optimized plan is executed
//! once and its output replayed to every place that uses it.
//!
//! DataFusion 55 inlines common table expressions, so a CTE referenced twice is planned and
//! executed twice. TPC-H Q15 is the classic case: `revenue0` (a 3-month aggregate over
//! `lineitem`) feeds both the join with `supplier` and the `max(total_revenue)` subquery, and
//! DataFusion scanned and aggregated `lineitem` twice for it.
//!
//! [`SharingQueryPlanner`] looks, just before physical planning (after the logical optimizer,
//! so both copies went through the same rewrites), for identical subtrees rooted at an
//! aggregate, inside subquery expressions too. Only aggregates: their output is usually far
//! smaller than what they read, so buffering it is cheap and saves the most. A shared join
//! (TPC-H Q11's `supplier ⋈ nation`) saved nothing measurable and kept the hash join above it
//! from pushing its dynamic filter into the shared input. Each such subtree is wrapped in a
//! [`SharedSubplan`] node carrying a number per distinct subtree; the physical planner turns
//! every node with the same number into a [`SharedSubplanExec`] over one [`SharedResult`]. The
//! first of them to be executed runs its input, all partitions at once, into memory accounted
//! in the session's memory pool; the others replay those batches partition by partition. Each
//! use reports its input's statistics, so join selection plans around it as before.
//!
//! What is never shared, so results never change:
//! - subtrees with a volatile function (`random()`: each use must draw its own values), outer
//!   references (correlated subqueries), extension nodes, DML or DDL;
//! - plans with a recursive query (its recursive term is re-executed with new input).
//!
//! When the memory pool refuses the buffered output, or the two copies were physically planned
//! with different partitioning, each use runs its own input instead, as without sharing.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::Session;
use datafusion::common::runtime::SpawnedTask;
use datafusion::common::tree_node::{Transformed, TreeNodeRecursion};
use datafusion::common::{DFSchemaRef, DataFusionError, Statistics};
use datafusion::error::Result;
use datafusion::execution::context::QueryPlanner;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{
    Expr, Extension, LogicalPlan, UserDefinedLogicalNode, UserDefinedLogicalNodeCore,
};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    ChildStats, DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties,
    PlanProperties, StatisticsArgs,
};
use datafusion::physical_planner::{DefaultPhysicalPlanner, ExtensionPlanner, PhysicalPlanner};
use futures::{StreamExt, TryStreamExt};

/// The session's query planner: marks shared subplans, then plans with DataFusion's planner.
///
/// Plans with nothing to share, and plans holding another crate's extension nodes (the
/// database connectors' federated scans), go to the planner this one wraps, unchanged.
#[derive(Default)]
pub struct SharingQueryPlanner {
    inner: Option<Arc<dyn QueryPlanner + Send + Sync>>,
}

impl SharingQueryPlanner {
    /// Shares subplans in front of `inner`, the session's planner until now.
    pub fn wrapping(inner: Arc<dyn QueryPlanner + Send + Sync>) -> Self {
        Self { inner: Some(inner) }
    }
}

impl fmt::Debug for SharingQueryPlanner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharingQueryPlanner").finish()
    }
}

#[async_trait]
impl QueryPlanner for SharingQueryPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session: &dyn Session,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let enabled = super::options::OptimizerOptions::rule_enabled(
            session.config_options(),
            "shared_subplans",
        );
        let marked = if enabled {
            mark_shared_subplans(logical_plan)?
        } else {
            Transformed::no(logical_plan.clone())
        };
        if !marked.transformed || has_foreign_extensions(logical_plan)? {
            return match &self.inner {
                Some(inner) => inner.create_physical_plan(logical_plan, session).await,
                None => {
                    DefaultPhysicalPlanner::default()
                        .create_physical_plan(logical_plan, session)
                        .await
                }
            };
        }
        DefaultPhysicalPlanner::with_extension_planners(vec![Arc::new(
            SharedSubplanPlanner::default(),
        )])
        .create_physical_plan(&marked.data, session)
        .await
    }
}

/// Whether `plan` holds extension nodes that only the wrapped planner knows how to plan.
fn has_foreign_extensions(plan: &LogicalPlan) -> Result<bool> {
    let mut found = false;
    plan.apply_with_subqueries(|node| {
        if matches!(node, LogicalPlan::Extension(_)) {
            found = true;
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    Ok(found)
}

/// Wraps every repeated, shareable subtree of `plan` in a [`SharedSubplan`] node.
pub fn mark_shared_subplans(plan: &LogicalPlan) -> Result<Transformed<LogicalPlan>> {
    let mut counts: HashMap<LogicalPlan, usize> = HashMap::new();
    let mut recursive = false;
    plan.apply_with_subqueries(|node| {
        match node {
            LogicalPlan::RecursiveQuery(_) => recursive = true,
            LogicalPlan::Aggregate(_) => {
                *counts.entry(node.clone()).or_default() += 1;
            }
            _ => {}
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    if recursive || !counts.values().any(|&n| n > 1) {
        return Ok(Transformed::no(plan.clone()));
    }
    let mut ids: HashMap<LogicalPlan, usize> = HashMap::new();
    plan.clone().transform_down_with_subqueries(|node| {
        let repeated = counts.get(&node).is_some_and(|&n| n > 1);
        if !repeated || !shareable(&node)? {
            return Ok(Transformed::no(node));
        }
        let next = ids.len();
        let id = *ids.entry(node.clone()).or_insert(next);
        let shared = LogicalPlan::Extension(Extension {
            node: Arc::new(SharedSubplan {
                id,
                input: Arc::new(node),
            }),
        });
        // The wrapped subtree is shared as a whole: nothing inside it is marked again.
        Ok(Transformed::new(shared, true, TreeNodeRecursion::Jump))
    })
}

/// Whether executing `plan` once for all its uses gives the results executing it per use would.
fn shareable(plan: &LogicalPlan) -> Result<bool> {
    let mut ok = true;
    plan.apply_with_subqueries(|node| {
        let node_ok = match node {
            LogicalPlan::Extension(_)
            | LogicalPlan::Dml(_)
            | LogicalPlan::Ddl(_)
            | LogicalPlan::Copy(_)
            | LogicalPlan::Statement(_)
            | LogicalPlan::RecursiveQuery(_)
            | LogicalPlan::Subquery(_) => false,
            _ => {
                let mut exprs_ok = true;
                node.apply_expressions(|e| {
                    if e.is_volatile() || e.contains_outer() {
                        exprs_ok = false;
                        return Ok(TreeNodeRecursion::Stop);
                    }
                    Ok(TreeNodeRecursion::Continue)
                })?;
                exprs_ok
            }
        };
        if !node_ok {
            ok = false;
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    Ok(ok)
}

/// A subtree whose output is computed once per query for every node with the same `id`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd)]
pub struct SharedSubplan {
    /// Which distinct subtree of the query this is.
    pub id: usize,
    /// The subtree.
    pub input: Arc<LogicalPlan>,
}

impl UserDefinedLogicalNodeCore for SharedSubplan {
    fn name(&self) -> &str {
        "SharedSubplan"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }

    fn schema(&self) -> &DFSchemaRef {
        self.input.schema()
    }

    fn expressions(&self) -> Vec<Expr> {
        vec![]
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SharedSubplan: id={}", self.id)
    }

    fn with_exprs_and_inputs(
        &self,
        _exprs: Vec<Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> Result<Self> {
        match (inputs.pop(), inputs.is_empty()) {
            (Some(input), true) => Ok(Self {
                id: self.id,
                input: Arc::new(input),
            }),
            _ => Err(DataFusionError::Internal(
                "SharedSubplan has one input".into(),
            )),
        }
    }
}

/// Plans [`SharedSubplan`] nodes of one query: the same id gets the same [`SharedResult`].
#[derive(Default)]
struct SharedSubplanPlanner {
    results: Mutex<HashMap<usize, Arc<SharedResult>>>,
}

#[async_trait]
impl ExtensionPlanner for SharedSubplanPlanner {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        _session: &dyn Session,
        _planning_ctx: &PhysicalPlanningContext,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let Some(shared) = node.as_any().downcast_ref::<SharedSubplan>() else {
            return Ok(None);
        };
        let [input] = physical_inputs else {
            return Err(DataFusionError::Internal(
                "SharedSubplan has one input".into(),
            ));
        };
        let result = {
            let mut results = self
                .results
                .lock()
                .map_err(|_| DataFusionError::Internal("shared subplan map poisoned".into()))?;
            Arc::clone(results.entry(shared.id).or_default())
        };
        Ok(Some(Arc::new(SharedSubplanExec::new(
            shared.id,
            Arc::clone(input),
            result,
        ))))
    }
}

/// What the first execution of a shared subplan produced.
enum Outcome {
    /// Every partition's batches, with the partitioning they were produced under.
    Buffered {
        partitioning: datafusion::physical_plan::Partitioning,
        partitions: Vec<Vec<RecordBatch>>,
        _reservation: MemoryReservation,
    },
    /// The memory pool refused the output: every use runs its own input.
    TooLarge,
}

/// The output of one shared subplan, computed by whichever use runs first.
#[derive(Default)]
pub struct SharedResult {
    outcome: tokio::sync::OnceCell<std::result::Result<Arc<Outcome>, Arc<DataFusionError>>>,
}

impl fmt::Debug for SharedResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedResult")
            .field("computed", &self.outcome.initialized())
            .finish()
    }
}

/// One use of a shared subplan.
#[derive(Debug)]
pub struct SharedSubplanExec {
    id: usize,
    input: Arc<dyn ExecutionPlan>,
    result: Arc<SharedResult>,
}

impl SharedSubplanExec {
    /// A use of subplan `id`, computed by `input` unless another use computed `result` first.
    pub fn new(id: usize, input: Arc<dyn ExecutionPlan>, result: Arc<SharedResult>) -> Self {
        Self { id, input, result }
    }
}

impl DisplayAs for SharedSubplanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SharedSubplanExec: id={}", self.id)
    }
}

/// Runs every partition of `input` into memory, reserving it in the session's pool.
async fn buffer_all(input: Arc<dyn ExecutionPlan>, ctx: Arc<TaskContext>) -> Result<Outcome> {
    let reservation =
        Arc::new(MemoryConsumer::new("SharedSubplan").register(&ctx.runtime_env().memory_pool));
    let partitioning = input.output_partitioning().clone();
    let mut tasks = Vec::with_capacity(partitioning.partition_count());
    for partition in 0..partitioning.partition_count() {
        let mut stream = input.execute(partition, Arc::clone(&ctx))?;
        let reservation = Arc::clone(&reservation);
        tasks.push(SpawnedTask::spawn(async move {
            let mut batches = Vec::new();
            while let Some(batch) = stream.next().await {
                let batch = batch?;
                if reservation.try_grow(batch.get_array_memory_size()).is_err() {
                    return Ok(None);
                }
                batches.push(batch);
            }
            Ok::<_, DataFusionError>(Some(batches))
        }));
    }
    let mut partitions = Vec::with_capacity(tasks.len());
    for task in tasks {
        let joined = task
            .join_unwind()
            .await
            .map_err(|e| DataFusionError::ExecutionJoin(Box::new(e)))??;
        match joined {
            Some(batches) => partitions.push(batches),
            // The remaining tasks stop when dropped; their batches are freed with them.
            None => return Ok(Outcome::TooLarge),
        }
    }
    let reservation = Arc::try_unwrap(reservation)
        .map_err(|_| DataFusionError::Internal("shared subplan reservation still in use".into()))?;
    Ok(Outcome::Buffered {
        partitioning,
        partitions,
        _reservation: reservation,
    })
}

impl ExecutionPlan for SharedSubplanExec {
    fn name(&self) -> &str {
        "SharedSubplanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn child_stats_requests(&self, partition: Option<usize>) -> Vec<ChildStats> {
        vec![ChildStats::At(partition)]
    }

    fn statistics_from_inputs(
        &self,
        input_stats: &[Arc<Statistics>],
        _args: &StatisticsArgs,
    ) -> Result<Arc<Statistics>> {
        Ok(input_stats
            .first()
            .cloned()
            .unwrap_or_else(|| Arc::new(Statistics::new_unknown(&self.schema()))))
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        match (children.pop(), children.is_empty()) {
            (Some(input), true) => Ok(Arc::new(Self::new(
                self.id,
                input,
                Arc::clone(&self.result),
            ))),
            _ => Err(DataFusionError::Internal(
                "SharedSubplanExec has one child".into(),
            )),
        }
    }

    fn reset_state(self: Arc<Self>) -> Result<Arc<dyn ExecutionPlan>> {
        // A plan executed again (a recursive query's term) must compute afresh.
        Ok(Arc::new(Self::new(
            self.id,
            Arc::clone(&self.input),
            Arc::default(),
        )))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let input = Arc::clone(&self.input);
        let result = Arc::clone(&self.result);
        let schema = self.schema();
        let run = async move {
            let outcome = result
                .outcome
                .get_or_init(|| {
                    let (input, context) = (Arc::clone(&input), Arc::clone(&context));
                    async move {
                        buffer_all(input, context)
                            .await
                            .map(Arc::new)
                            .map_err(Arc::new)
                    }
                })
                .await
                .clone()
                .map_err(DataFusionError::Shared)?;
            match outcome.as_ref() {
                Outcome::Buffered {
                    partitioning,
                    partitions,
                    ..
                } if partitioning == input.output_partitioning()
                    && partition < partitions.len() =>
                {
                    let batches = partitions[partition].clone();
                    let replay: SendableRecordBatchStream =
                        Box::pin(RecordBatchStreamAdapter::new(
                            input.schema(),
                            futures::stream::iter(batches.into_iter().map(Ok)),
                        ));
                    Ok(replay)
                }
                // The first use ran its input already, and plans such as a repartition run
                // each partition once: execute a copy with fresh state.
                _ => datafusion::physical_plan::execution_plan::reset_plan_states(input)?
                    .execute(partition, context),
            }
        };
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            schema,
            futures::stream::once(run).try_flatten(),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::util::pretty::pretty_format_batches;
    use datafusion::common::tree_node::TreeNode;
    use datafusion::execution::SessionStateBuilder;
    use datafusion::physical_plan::collect;
    use datafusion::prelude::{SessionConfig, SessionContext};

    /// A CTE used twice, as `revenue0` in TPC-H Q15.
    const CTE_TWICE: &str = "WITH agg AS (SELECT k, sum(v) AS total FROM t GROUP BY k) \
        SELECT k, total FROM agg WHERE total = (SELECT max(total) FROM agg) ORDER BY k";

    async fn context(dir: &std::path::Path, sharing: bool) -> SessionContext {
        let mut builder = SessionStateBuilder::new()
            .with_config(SessionConfig::new().with_target_partitions(4))
            .with_default_features();
        if sharing {
            builder = builder.with_query_planner(Arc::new(SharingQueryPlanner::default()));
        }
        let ctx = SessionContext::new_with_state(builder.build());
        // Parquet, so that scans and aggregates carry row estimates.
        let path = dir.join("t.parquet");
        if !path.exists() {
            let rows: Vec<String> = (0..1000).map(|i| format!("({}, {})", i % 7, i)).collect();
            ctx.sql(&format!(
                "COPY (SELECT CAST(column1 AS INT) AS k, CAST(column2 AS INT) AS v \
                 FROM (VALUES {})) TO '{}' STORED AS PARQUET",
                rows.join(", "),
                path.display()
            ))
            .await
            .expect("plan copy")
            .collect()
            .await
            .expect("write t.parquet");
        }
        ctx.sql(&format!(
            "CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION '{}'",
            path.display()
        ))
        .await
        .expect("create t");
        ctx
    }

    /// Runs `sql`; returns the rows, the plan's shared nodes and the rows its file scans read.
    async fn run(ctx: &SessionContext, sql: &str) -> (String, usize, usize) {
        let plan = ctx
            .sql(sql)
            .await
            .expect("plan")
            .create_physical_plan()
            .await
            .expect("physical plan");
        let batches = collect(Arc::clone(&plan), ctx.task_ctx())
            .await
            .expect("execute");
        let (mut shared, mut scanned) = (0, 0);
        plan.apply(|node| {
            if node.name() == "SharedSubplanExec" {
                shared += 1;
                // Join selection sees through a shared subplan.
                let stats = |plan: &dyn ExecutionPlan| {
                    datafusion::physical_plan::StatisticsContext::new()
                        .compute(plan, &StatisticsArgs::new())
                        .expect("statistics")
                        .num_rows
                };
                let rows = stats(node.as_ref());
                assert!(rows.get_value().is_some(), "{rows:?}");
                assert_eq!(rows, stats(node.children()[0].as_ref()));
            }
            if node.name() == "DataSourceExec" {
                scanned += node
                    .metrics()
                    .and_then(|m| m.output_rows())
                    .unwrap_or_default();
            }
            Ok(TreeNodeRecursion::Continue)
        })
        .expect("walk");
        let rows = pretty_format_batches(&batches).expect("format").to_string();
        (rows, shared, scanned)
    }

    #[tokio::test]
    async fn a_cte_used_twice_is_computed_once_with_the_same_rows() {
        let dir = tempfile::tempdir().expect("tempdir");
        let plain = context(dir.path(), false).await;
        let sharing = context(dir.path(), true).await;
        let (expected, none, scanned_twice) = run(&plain, CTE_TWICE).await;
        let (rows, shared, scanned_once) = run(&sharing, CTE_TWICE).await;
        assert_eq!(rows, expected);
        assert!(rows.contains("| 5 | 71786 |"), "{rows}");
        assert_eq!((none, shared), (0, 2));
        assert_eq!((scanned_twice, scanned_once), (2000, 1000));
    }

    #[tokio::test]
    async fn volatile_and_single_use_subplans_are_not_shared() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sharing = context(dir.path(), true).await;
        // random() must be drawn for each use.
        let volatile = "WITH agg AS (SELECT k, sum(v * random()) AS total FROM t GROUP BY k) \
            SELECT count(*) FROM agg WHERE total >= (SELECT min(total) FROM agg)";
        let (_, shared, scanned) = run(&sharing, volatile).await;
        assert_eq!((shared, scanned), (0, 2000));
        let once = "SELECT k, sum(v) FROM t GROUP BY k";
        assert_eq!(run(&sharing, once).await.1, 0);
    }

    /// A pool without limit that refuses only the shared subplans' buffers.
    #[derive(Debug, Default)]
    struct RefuseSharing(datafusion::execution::memory_pool::UnboundedMemoryPool);

    impl fmt::Display for RefuseSharing {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("refuse-sharing")
        }
    }

    impl datafusion::execution::memory_pool::MemoryPool for RefuseSharing {
        fn name(&self) -> &str {
            "refuse-sharing"
        }
        fn grow(&self, reservation: &MemoryReservation, additional: usize) {
            self.0.grow(reservation, additional)
        }
        fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
            self.0.shrink(reservation, shrink)
        }
        fn try_grow(&self, reservation: &MemoryReservation, additional: usize) -> Result<()> {
            if reservation.consumer().name() == "SharedSubplan" {
                return Err(DataFusionError::ResourcesExhausted("no room".into()));
            }
            self.0.try_grow(reservation, additional)
        }
        fn reserved(&self) -> usize {
            self.0.reserved()
        }
    }

    #[tokio::test]
    async fn a_refused_reservation_falls_back_to_running_each_use() {
        use datafusion::execution::runtime_env::RuntimeEnvBuilder;
        let dir = tempfile::tempdir().expect("tempdir");
        let expected = run(&context(dir.path(), false).await, CTE_TWICE).await.0;
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(RefuseSharing::default()))
            .build_arc()
            .expect("runtime");
        let ctx = context(dir.path(), true).await;
        let state = SessionStateBuilder::new_from_existing(ctx.state())
            .with_runtime_env(runtime)
            .build();
        let ctx = SessionContext::new_with_state(state);
        let (rows, shared, scanned) = run(&ctx, CTE_TWICE).await;
        assert_eq!(rows, expected);
        // The first use's scan stopped at its first batch; both uses then read all 1000 rows.
        assert_eq!(shared, 2);
        assert!(scanned >= 2000, "{scanned}");
    }
}
