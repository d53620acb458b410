//! Hash joins whose build side is a small join output probed by a much larger input collect
//! the build side instead of repartitioning both inputs.
//!
//! DataFusion 55's join selection collects a build side (one hash table, probed by every
//! partition of the other input as it comes) only when its `total_byte_size` estimate is under
//! `datafusion.optimizer.hash_join_single_partition_threshold` (1 MiB). A join's output carries
//! the byte estimates of its inputs, so a build side that is itself a join never qualifies,
//! however few rows it has: TPC-H Q05 hashes and repartitions all 6 million `lineitem` rows to
//! join them with about 200,000 `customer ⋈ orders` rows, and Q03 does the same.
//!
//! This physical optimizer rule runs after join selection and the build-side check
//! ([`crate::optimizer::build_side`]). A partitioned hash join becomes a collected one when its build side
//! is estimated at no more than `collect_build_rows` rows (default
//! [`DEFAULT_MAX_BUILD_ROWS`]; 0 turns the rule off) and, by rows times row width, at no more
//! than [`MAX_BUILD_BYTES`], and its probe side at [`MIN_PROBE_RATIO`] times as many rows or
//! more. A collected build side is hashed by one thread, so it must be small against the probe
//! side that no longer needs repartitioning: a larger build side (Q09's 1.5 million `orders`)
//! or a probe side of similar size stays partitioned, and so does a build side without a join
//! in it, whose byte estimate join selection has already judged. Without row estimates on
//! both sides nothing changes.

use std::sync::Arc;

use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::error::Result;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::joins::{
    CrossJoinExec, HashJoinExec, NestedLoopJoinExec, PartitionMode, SortMergeJoinExec,
};

use crate::optimizer::build_side::estimate;
use crate::optimizer::spillable_joins::PhysicalRules;

/// Build sides estimated at more rows than this stay partitioned, unless configured.
pub const DEFAULT_MAX_BUILD_ROWS: usize = 500_000;
/// Build sides estimated at more bytes (rows times row width) than this stay partitioned.
pub const MAX_BUILD_BYTES: usize = 32 << 20;
/// How many times the build side's rows the probe side must be estimated at.
pub const MIN_PROBE_RATIO: usize = 4;

/// Name of the rule this one follows.
const AFTER_RULE: &str = "build_smaller_side";

/// Collects the build side of partitioned hash joins that probe a small join output with a
/// much larger input.
#[derive(Debug)]
pub struct CollectSmallBuildSides {
    /// Build sides estimated at more rows than this stay partitioned; 0: all do.
    max_build_rows: usize,
}

impl CollectSmallBuildSides {
    /// The rule collecting build sides of up to `max_build_rows` estimated rows (0: none).
    pub fn new(max_build_rows: usize) -> Self {
        Self { max_build_rows }
    }

    /// `rules` with this one inserted after the build-side check, else after join selection.
    pub fn insert_into(self, mut rules: PhysicalRules) -> PhysicalRules {
        match rules.iter().position(|r| r.name() == AFTER_RULE) {
            Some(i) => {
                rules.insert(i + 1, Arc::new(self));
                rules
            }
            None => crate::optimizer::spillable_joins::insert_after_join_selection(
                rules,
                Arc::new(self),
            ),
        }
    }
}

/// Whether `join` should collect its build side.
fn collectable(join: &HashJoinExec, max_build_rows: usize) -> bool {
    if *join.partition_mode() != PartitionMode::Partitioned || max_build_rows == 0 {
        return false;
    }
    let (Some((build, build_bytes)), Some((probe, _))) =
        (estimate(join.left()), estimate(join.right()))
    else {
        return false;
    };
    build <= max_build_rows
        && build_bytes <= MAX_BUILD_BYTES
        && probe >= build.saturating_mul(MIN_PROBE_RATIO)
        && contains_join(join.left())
}

/// Whether `plan` joins: only then is its byte estimate carried over from its inputs. A build
/// side read from one table (TPC-H Q18's 150,000 `customer` rows) has a byte estimate that
/// join selection already judged correctly, and collecting it was slower.
fn contains_join(plan: &Arc<dyn ExecutionPlan>) -> bool {
    plan.exists(|node| {
        Ok(node.downcast_ref::<HashJoinExec>().is_some()
            || node.downcast_ref::<SortMergeJoinExec>().is_some()
            || node.downcast_ref::<NestedLoopJoinExec>().is_some()
            || node.downcast_ref::<CrossJoinExec>().is_some())
    })
    .unwrap_or(false)
}

impl PhysicalOptimizerRule for CollectSmallBuildSides {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let Some(join) = node.downcast_ref::<HashJoinExec>() else {
                return Ok(Transformed::no(node));
            };
            if !collectable(join, self.max_build_rows) {
                return Ok(Transformed::no(node));
            }
            let collected = join
                .builder()
                .with_partition_mode(PartitionMode::CollectLeft)
                .build()?;
            Ok(Transformed::yes(
                Arc::new(collected) as Arc<dyn ExecutionPlan>
            ))
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "collect_small_build_sides"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::common::stats::Precision;
    use datafusion::common::{ColumnStatistics, JoinType, NullEquality, Statistics};
    use datafusion::physical_expr::expressions::Column;
    use datafusion::physical_plan::test::exec::StatisticsExec;

    /// A leaf of `columns` BIGINT columns estimated at `rows` rows and, as a join output's
    /// carried-over estimate, 100 MB.
    fn leaf(prefix: &str, columns: usize, rows: usize) -> Arc<dyn ExecutionPlan> {
        let schema = Schema::new(
            (0..columns)
                .map(|i| Field::new(format!("{prefix}{i}"), DataType::Int64, false))
                .collect::<Vec<_>>(),
        );
        let stats = Statistics {
            num_rows: Precision::Inexact(rows),
            total_byte_size: Precision::Inexact(100_000_000),
            column_statistics: vec![ColumnStatistics::new_unknown(); columns],
        };
        Arc::new(StatisticsExec::new(stats, schema))
    }

    /// The output of a join estimated at `rows` rows (a cross join with one row).
    fn joined(rows: usize) -> Arc<dyn ExecutionPlan> {
        Arc::new(CrossJoinExec::new(leaf("b", 1, rows), leaf("c", 1, 1)))
    }

    /// A partitioned join building on a join of `build` rows and probing `probe` rows.
    fn join(build: usize, probe: usize, join_type: JoinType) -> Arc<dyn ExecutionPlan> {
        join_on(joined(build), probe, join_type)
    }

    /// A partitioned join building on `build` and probing `probe` rows.
    fn join_on(
        build: Arc<dyn ExecutionPlan>,
        probe: usize,
        join_type: JoinType,
    ) -> Arc<dyn ExecutionPlan> {
        let on = vec![(
            Arc::new(Column::new("b0", 0)) as _,
            Arc::new(Column::new("p0", 0)) as _,
        )];
        Arc::new(
            HashJoinExec::try_new(
                build,
                leaf("p", 4, probe),
                on,
                None,
                &join_type,
                None,
                PartitionMode::Partitioned,
                NullEquality::NullEqualsNothing,
                false,
            )
            .expect("join"),
        )
    }

    fn mode_after(rule: &CollectSmallBuildSides, plan: Arc<dyn ExecutionPlan>) -> PartitionMode {
        let schema = plan.schema();
        let plan = rule
            .optimize(plan, &ConfigOptions::default())
            .expect("rule");
        let join = plan.downcast_ref::<HashJoinExec>().expect("a hash join");
        // Inputs and output are unchanged.
        assert_eq!(join.left().schema().field(0).name(), "b0");
        assert_eq!(plan.schema(), schema);
        *join.partition_mode()
    }

    #[test]
    fn a_small_join_output_probed_by_a_large_input_is_collected() {
        // TPC-H Q05: customer ⋈ orders (228,180 rows estimated) probed by lineitem.
        let rule = CollectSmallBuildSides::new(DEFAULT_MAX_BUILD_ROWS);
        for join_type in [JoinType::Inner, JoinType::LeftSemi, JoinType::LeftAnti] {
            assert_eq!(
                mode_after(&rule, join(228_180, 6_001_215, join_type)),
                PartitionMode::CollectLeft,
                "{join_type}"
            );
        }
    }

    #[test]
    fn large_build_sides_and_similar_probe_sides_stay_partitioned() {
        let rule = CollectSmallBuildSides::new(DEFAULT_MAX_BUILD_ROWS);
        // TPC-H Q09: 1.5 million orders.
        let q09 = join(1_500_000, 4_800_972, JoinType::Inner);
        assert_eq!(mode_after(&rule, q09), PartitionMode::Partitioned);
        // TPC-H Q18: 150,000 customer rows read from one table, probed by 1.2 million.
        let q18 = join_on(leaf("b", 2, 150_000), 1_200_243, JoinType::Inner);
        assert_eq!(mode_after(&rule, q18), PartitionMode::Partitioned);
        // TPC-H Q07: 300,002 rows probed by 347,338.
        let q07 = join(300_002, 347_338, JoinType::Inner);
        assert_eq!(mode_after(&rule, q07), PartitionMode::Partitioned);
    }

    #[test]
    fn zero_turns_the_rule_off_and_the_limit_is_configurable() {
        let off = CollectSmallBuildSides::new(0);
        let q05 = || join(228_180, 6_001_215, JoinType::Inner);
        assert_eq!(mode_after(&off, q05()), PartitionMode::Partitioned);
        let small = CollectSmallBuildSides::new(100_000);
        assert_eq!(mode_after(&small, q05()), PartitionMode::Partitioned);
    }
}
