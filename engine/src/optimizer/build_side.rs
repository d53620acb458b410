//! Hash joins build on the input estimated to be smaller by rows times row width.
//!
//! DataFusion 55's join selection puts the input with the smaller `total_byte_size` estimate on
//! the build side. For a join's output that estimate is carried over from the join's inputs
//! and can be far from its row estimate: in TPC-H Q21 the side holding 60,000 estimated rows of
//! three columns was estimated at 95 MB and built on the 5.9 million-row `lineitem` side
//! instead (140 MB estimated, so a swap looked like a loss), which cost most of the query
//! (building a hash table of 3.8 million rows to probe it with 73,000).
//!
//! This physical optimizer rule runs right after join selection and checks each hash join it
//! may swap (a join type that swaps, not null-aware) against a second estimate: rows times the
//! width of the output schema's columns (fixed-width types at their width, others at 32
//! bytes). When the build side is estimated at more than twice the probe side by that measure,
//! the inputs are swapped (a collected build side only if the new one is as small as
//! DataFusion's collect thresholds allow). Without row estimates on both sides nothing changes.

use std::sync::Arc;

use datafusion::common::config::ConfigOptions;
use datafusion::common::stats::Precision;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::error::Result;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
use datafusion::physical_plan::{ExecutionPlan, StatisticsArgs, StatisticsContext};

use crate::optimizer::spillable_joins::{PhysicalRules, insert_after_join_selection, row_width};

/// How much larger the build side must be estimated before the inputs are swapped.
const MARGIN: usize = 2;

/// Swaps hash joins whose build side is estimated to be clearly the larger input.
#[derive(Debug, Default)]
pub struct BuildSmallerSide;

impl BuildSmallerSide {
    /// DataFusion's physical optimizer rules with this one inserted after join selection.
    pub fn insert_into(self, rules: PhysicalRules) -> PhysicalRules {
        insert_after_join_selection(rules, Arc::new(self))
    }
}

/// Estimated rows and rows times row width of a plan's output.
pub(crate) fn estimate(plan: &Arc<dyn ExecutionPlan>) -> Option<(usize, usize)> {
    let stats = StatisticsContext::new()
        .compute(plan.as_ref(), &StatisticsArgs::new())
        .ok()?;
    let (Precision::Exact(rows) | Precision::Inexact(rows)) = stats.num_rows else {
        return None;
    };
    Some((rows, rows.saturating_mul(row_width(&plan.schema()))))
}

/// The join with its inputs swapped, when its build side is clearly the larger one.
fn swapped(join: &HashJoinExec, config: &ConfigOptions) -> Result<Option<Arc<dyn ExecutionPlan>>> {
    if !config.optimizer.join_reordering || join.null_aware || !join.join_type().supports_swap() {
        return Ok(None);
    }
    let (Some((_, build)), Some((probe_rows, probe))) =
        (estimate(join.left()), estimate(join.right()))
    else {
        return Ok(None);
    };
    if build <= probe.saturating_mul(MARGIN) {
        return Ok(None);
    }
    match join.partition_mode() {
        PartitionMode::Partitioned => join.swap_inputs(PartitionMode::Partitioned).map(Some),
        PartitionMode::CollectLeft => {
            let collectable = probe <= config.optimizer.hash_join_single_partition_threshold
                && probe_rows <= config.optimizer.hash_join_single_partition_threshold_rows;
            if collectable {
                join.swap_inputs(PartitionMode::CollectLeft).map(Some)
            } else {
                Ok(None)
            }
        }
        PartitionMode::Auto => Ok(None),
    }
}

impl PhysicalOptimizerRule for BuildSmallerSide {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let Some(join) = node.downcast_ref::<HashJoinExec>() else {
                return Ok(Transformed::no(node));
            };
            Ok(match swapped(join, config)? {
                Some(plan) => Transformed::yes(plan),
                None => Transformed::no(node),
            })
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "build_smaller_side"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::common::{ColumnStatistics, JoinType, NullEquality, Statistics};
    use datafusion::physical_expr::expressions::Column;
    use datafusion::physical_plan::test::exec::StatisticsExec;

    /// A leaf of `columns` BIGINT columns estimated at `rows` rows and `bytes` bytes.
    fn leaf(prefix: &str, columns: usize, rows: usize, bytes: usize) -> Arc<dyn ExecutionPlan> {
        let schema = Schema::new(
            (0..columns)
                .map(|i| Field::new(format!("{prefix}{i}"), DataType::Int64, false))
                .collect::<Vec<_>>(),
        );
        let stats = Statistics {
            num_rows: Precision::Inexact(rows),
            total_byte_size: Precision::Inexact(bytes),
            column_statistics: vec![ColumnStatistics::new_unknown(); columns],
        };
        Arc::new(StatisticsExec::new(stats, schema))
    }

    /// As in TPC-H Q21: DataFusion built the anti join on the 5.9 million-row side (estimated
    /// at 142 MB) because the 60,000-row side's carried-over estimate was 95 MB.
    fn q21_like(join_type: JoinType, mode: PartitionMode) -> HashJoinExec {
        let big = leaf("l", 2, 5_937_773, 142_506_534);
        let small = leaf("s", 3, 60_000, 95_241_920);
        let on = vec![(
            Arc::new(Column::new("l0", 0)) as _,
            Arc::new(Column::new("s0", 0)) as _,
        )];
        HashJoinExec::try_new(
            big,
            small,
            on,
            None,
            &join_type,
            None,
            mode,
            NullEquality::NullEqualsNothing,
            false,
        )
        .unwrap()
    }

    fn optimized(join: HashJoinExec, config: &ConfigOptions) -> Arc<dyn ExecutionPlan> {
        BuildSmallerSide.optimize(Arc::new(join), config).unwrap()
    }

    #[test]
    fn a_build_side_estimated_larger_by_rows_times_width_is_swapped() {
        let plan = optimized(
            q21_like(JoinType::RightAnti, PartitionMode::Partitioned),
            &ConfigOptions::new(),
        );
        let join = plan.downcast_ref::<HashJoinExec>().unwrap();
        assert_eq!(*join.join_type(), JoinType::LeftAnti);
        assert_eq!(join.left().schema().field(0).name(), "s0");
        // An anti join's output is its preserved side: the schema is unchanged.
        assert_eq!(plan.schema().field(0).name(), "s0");
    }

    #[test]
    fn a_build_side_that_is_already_smaller_stays() {
        // The small side builds already when it is the left input: nothing to swap.
        let small = leaf("s", 3, 60_000, 95_241_920);
        let big = leaf("l", 2, 5_937_773, 142_506_534);
        let on = vec![(
            Arc::new(Column::new("s0", 0)) as _,
            Arc::new(Column::new("l0", 0)) as _,
        )];
        let join = HashJoinExec::try_new(
            small,
            big,
            on,
            None,
            &JoinType::Inner,
            None,
            PartitionMode::Partitioned,
            NullEquality::NullEqualsNothing,
            false,
        )
        .unwrap();
        let plan = optimized(join, &ConfigOptions::new());
        let join = plan.downcast_ref::<HashJoinExec>().unwrap();
        assert_eq!(join.left().schema().field(0).name(), "s0");
    }

    #[test]
    fn collected_build_sides_swap_only_into_collectable_ones_and_the_switch_holds() {
        // 60,000 rows of 24 bytes exceed DataFusion's 1 MB collect threshold: no swap.
        let plan = optimized(
            q21_like(JoinType::RightAnti, PartitionMode::CollectLeft),
            &ConfigOptions::new(),
        );
        let join = plan.downcast_ref::<HashJoinExec>().unwrap();
        assert_eq!(*join.join_type(), JoinType::RightAnti);
        // With join reordering off, nothing is swapped.
        let mut off = ConfigOptions::new();
        off.optimizer.join_reordering = false;
        let plan = optimized(
            q21_like(JoinType::RightAnti, PartitionMode::Partitioned),
            &off,
        );
        let join = plan.downcast_ref::<HashJoinExec>().unwrap();
        assert_eq!(*join.join_type(), JoinType::RightAnti);
    }
}
