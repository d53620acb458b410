//! Joins that finish under a memory limit smaller than their input.
//!
//! A DataFusion 55 hash join keeps its whole build side in memory and cannot spill, so a join
//! whose smaller side does not fit the memory pool fails. A sort-merge join can: both inputs
//! are sorted (sorts spill to disk) and merged holding only the current key's rows (which
//! spill too). It is slower, so DataFusion plans it only on request, and only with more than
//! one partition, which a small memory limit rules out (see
//! [`crate::config::EngineConfig::effective_target_partitions`]).
//!
//! This physical optimizer rule runs right after DataFusion's join selection has put the
//! smaller input on the build side. A hash join whose build side is estimated to need more
//! than a quarter of the memory pool becomes a sort-merge join; the sorts and repartitions it
//! needs are added by DataFusion's own requirement enforcement, which runs after it. The
//! estimate comes from the build side's statistics (Parquet, in-memory tables), else from its
//! row count, else from the size of the files it reads (CSV, JSON). A join with no estimate,
//! and a null-aware anti join (`NOT IN`, which a sort-merge join does not implement), stay
//! hash joins. `spillable_joins = "always"` converts every hash join, `"never"` none.

use std::sync::Arc;

use datafusion::common::config::ConfigOptions;
use datafusion::common::stats::Precision;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::datasource::physical_plan::FileScanConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::Result;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::joins::{HashJoinExec, SortMergeJoinExec};
use datafusion::physical_plan::projection::{ProjectionExec, ProjectionExpr};
use datafusion::physical_plan::{ExecutionPlan, StatisticsArgs, StatisticsContext};

use crate::config::SpillableJoinsMode;

/// Name of DataFusion's rule this one must follow: it picks the build side.
const AFTER_RULE: &str = "join_selection";
/// Estimated bytes assumed per row for a column of variable width (strings, lists).
const VARIABLE_WIDTH: usize = 32;

/// Turns hash joins whose build side would outgrow the memory pool into sort-merge joins.
#[derive(Debug)]
pub struct SpillableJoins {
    mode: SpillableJoinsMode,
    /// Build sides estimated above this many bytes are joined by sort-merge (`auto`).
    build_budget: usize,
}

impl SpillableJoins {
    /// The rule for a memory pool of `pool_bytes`: a build side may take a quarter of it (a
    /// hash table needs about twice its input, and other operators share the pool).
    pub fn new(mode: SpillableJoinsMode, pool_bytes: u64) -> Self {
        Self {
            mode,
            build_budget: usize::try_from(pool_bytes / 4).unwrap_or(usize::MAX),
        }
    }

    /// DataFusion's physical optimizer rules with this one inserted after join selection.
    pub fn insert_into(self, rules: PhysicalRules) -> PhysicalRules {
        insert_after_join_selection(rules, Arc::new(self))
    }

    fn wants_sort_merge(&self, join: &HashJoinExec) -> bool {
        if join.null_aware {
            return false;
        }
        match self.mode {
            SpillableJoinsMode::Never => false,
            SpillableJoinsMode::Always => true,
            SpillableJoinsMode::Auto => {
                estimated_bytes(join.left()).is_some_and(|bytes| bytes > self.build_budget)
            }
        }
    }
}

impl PhysicalOptimizerRule for SpillableJoins {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if self.mode == SpillableJoinsMode::Never {
            return Ok(plan);
        }
        plan.transform_up(|node| {
            let Some(join) = node.downcast_ref::<HashJoinExec>() else {
                return Ok(Transformed::no(node));
            };
            if !self.wants_sort_merge(join) {
                return Ok(Transformed::no(node));
            }
            Ok(Transformed::yes(sort_merge(join)?))
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "spillable_joins"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// The same join as a sort-merge join, with the hash join's embedded projection as its own node.
fn sort_merge(join: &HashJoinExec) -> Result<Arc<dyn ExecutionPlan>> {
    let smj: Arc<dyn ExecutionPlan> = Arc::new(SortMergeJoinExec::try_new(
        Arc::clone(join.left()),
        Arc::clone(join.right()),
        join.on().to_vec(),
        join.filter().cloned(),
        *join.join_type(),
        vec![Default::default(); join.on().len()],
        join.null_equality(),
    )?);
    let Some(projection) = &join.projection else {
        return Ok(smj);
    };
    let schema = smj.schema();
    let exprs = projection.iter().map(|&i| {
        let name = schema.field(i).name();
        ProjectionExpr::new(Arc::new(Column::new(name, i)), name.clone())
    });
    Ok(Arc::new(ProjectionExec::try_new(exprs, smj)?))
}

/// A session's physical optimizer rules, in order.
pub type PhysicalRules = Vec<Arc<dyn PhysicalOptimizerRule + Send + Sync>>;

/// `rules` with `rule` inserted right after DataFusion's join selection (first if absent).
pub(crate) fn insert_after_join_selection(
    mut rules: PhysicalRules,
    rule: Arc<dyn PhysicalOptimizerRule + Send + Sync>,
) -> PhysicalRules {
    let at = rules
        .iter()
        .position(|r| r.name() == AFTER_RULE)
        .map_or(0, |i| i + 1);
    rules.insert(at, rule);
    rules
}

/// Estimated bytes of one row of `schema`: fixed-width types at their width, others at
/// [`VARIABLE_WIDTH`].
pub(crate) fn row_width(schema: &datafusion::arrow::datatypes::Schema) -> usize {
    schema
        .fields()
        .iter()
        .map(|f| f.data_type().primitive_width().unwrap_or(VARIABLE_WIDTH))
        .sum::<usize>()
        .max(1)
}

/// Bytes a plan's output is expected to take in memory, if anything tells.
fn estimated_bytes(plan: &Arc<dyn ExecutionPlan>) -> Option<usize> {
    let stats = StatisticsContext::new()
        .compute(plan.as_ref(), &StatisticsArgs::new())
        .ok()?;
    if let Precision::Exact(bytes) | Precision::Inexact(bytes) = stats.total_byte_size {
        return Some(bytes);
    }
    if let Precision::Exact(rows) | Precision::Inexact(rows) = stats.num_rows {
        return Some(rows.saturating_mul(row_width(&plan.schema())));
    }
    scanned_file_bytes(plan)
}

/// The size of the files the plan reads, for sources without statistics (CSV, JSON): decoded
/// columns take about as much memory as their text, and filters can only shrink it.
fn scanned_file_bytes(plan: &Arc<dyn ExecutionPlan>) -> Option<usize> {
    let mut total: Option<usize> = None;
    let _ = plan.apply(|node| {
        if let Some(scan) = node.downcast_ref::<DataSourceExec>()
            && let Some(files) = scan.data_source().downcast_ref::<FileScanConfig>()
        {
            let bytes = files
                .file_groups
                .iter()
                .flat_map(|group| group.iter())
                .map(|file| usize::try_from(file.object_meta.size).unwrap_or(usize::MAX))
                .fold(0usize, usize::saturating_add);
            total = Some(total.unwrap_or(0).saturating_add(bytes));
        }
        Ok(TreeNodeRecursion::Continue)
    });
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::execution::SessionStateBuilder;
    use datafusion::physical_plan::displayable;
    use datafusion::prelude::{SessionConfig, SessionContext};

    async fn plan_of(mode: SpillableJoinsMode, pool: u64, sql: &str) -> (SessionContext, String) {
        let rules = SpillableJoins::new(mode, pool)
            .insert_into(datafusion::physical_optimizer::optimizer::PhysicalOptimizer::new().rules);
        let state = SessionStateBuilder::new()
            .with_config(SessionConfig::new().with_target_partitions(1))
            .with_default_features()
            .with_physical_optimizer_rules(rules)
            .build();
        let ctx = SessionContext::new_with_state(state);
        ctx.sql("CREATE TABLE a AS SELECT value AS k, value % 7 AS g FROM range(1000)")
            .await
            .unwrap();
        ctx.sql("CREATE TABLE b AS SELECT value AS k, 'x' || value AS s FROM range(2000)")
            .await
            .unwrap();
        let plan = ctx
            .sql(sql)
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        let text = displayable(plan.as_ref()).indent(true).to_string();
        (ctx, text)
    }

    const JOIN: &str = "SELECT b.s, a.g FROM a JOIN b ON a.k = b.k WHERE a.g < 3 ORDER BY b.s";

    #[tokio::test]
    async fn a_build_side_over_budget_is_joined_by_sort_merge_with_the_same_rows() {
        let (ctx, merged) = plan_of(SpillableJoinsMode::Auto, 1024, JOIN).await;
        assert!(merged.contains("SortMergeJoinExec"), "{merged}");
        assert!(!merged.contains("HashJoinExec"), "{merged}");
        let (_, hashed) = plan_of(SpillableJoinsMode::Auto, 1 << 40, JOIN).await;
        assert!(hashed.contains("HashJoinExec"), "{hashed}");
        let rows = |ctx: SessionContext| async move {
            let batches = ctx.sql(JOIN).await.unwrap().collect().await.unwrap();
            datafusion::arrow::util::pretty::pretty_format_batches(&batches)
                .unwrap()
                .to_string()
        };
        let (hash_ctx, _) = plan_of(SpillableJoinsMode::Never, 1024, JOIN).await;
        let merged_rows = rows(ctx).await;
        assert_eq!(merged_rows, rows(hash_ctx).await);
        assert!(merged_rows.contains("| x996 | 2 |"), "{merged_rows}");
    }

    #[tokio::test]
    async fn outer_semi_and_anti_joins_keep_their_meaning() {
        for sql in [
            "SELECT a.k, b.s FROM a LEFT JOIN b ON a.k = b.k + 500 ORDER BY a.k",
            "SELECT b.k, a.g FROM a RIGHT JOIN b ON a.k = b.k ORDER BY b.k",
            "SELECT k FROM b WHERE EXISTS (SELECT 1 FROM a WHERE a.k = b.k AND a.g = 1) ORDER BY k",
            "SELECT k FROM b WHERE NOT EXISTS (SELECT 1 FROM a WHERE a.k = b.k) ORDER BY k",
            "SELECT count(*) FROM a FULL JOIN b ON a.k = b.k AND b.s <> 'x3'",
        ] {
            let (merge_ctx, plan) = plan_of(SpillableJoinsMode::Always, 1 << 40, sql).await;
            assert!(plan.contains("SortMergeJoinExec"), "{sql}\n{plan}");
            let (hash_ctx, _) = plan_of(SpillableJoinsMode::Never, 1 << 40, sql).await;
            let merged = merge_ctx.sql(sql).await.unwrap().collect().await.unwrap();
            let hashed = hash_ctx.sql(sql).await.unwrap().collect().await.unwrap();
            assert_eq!(
                datafusion::arrow::util::pretty::pretty_format_batches(&merged)
                    .unwrap()
                    .to_string(),
                datafusion::arrow::util::pretty::pretty_format_batches(&hashed)
                    .unwrap()
                    .to_string(),
                "{sql}"
            );
        }
    }

    #[tokio::test]
    async fn null_aware_anti_joins_stay_hash_joins() {
        let sql = "SELECT k FROM b WHERE k NOT IN (SELECT nullif(k, 3) FROM a)";
        let (_, plan) = plan_of(SpillableJoinsMode::Always, 1024, sql).await;
        assert!(plan.contains("HashJoinExec"), "{plan}");
    }
}
