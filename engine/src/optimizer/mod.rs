//! FlowEngine's own optimizer rules, and the one place they are installed ([`register`],
//! [`share_subplans`]). Each rule is a general mechanism DataFusion 55 lacks (see
//! docs/performance.md); each has a session switch, `SET flowengine.optimizer.<rule> = false`
//! ([`options`]), whose default `extra_optimizer_rules = false` turns off. `spillable_joins` is
//! governed by its own setting.
//!
//! Logical rules: [`join_keys`], [`semi_join`], [`dimension_joins`], [`filter_order`] (last).
//! Physical rules: [`spillable_joins`] (always), [`build_side`] and [`collect_builds`] after
//! join selection, then [`exact_decimal`], [`progressive_filter`] and [`small_join_filters`]
//! (with [`key_bitmap`]) last. Planner: [`shared_subplans`].

pub mod build_side;
pub mod collect_builds;
pub mod dimension_joins;
pub mod exact_decimal;
pub mod filter_order;
pub mod join_keys;
pub mod key_bitmap;
pub mod options;
pub mod progressive_filter;
pub mod semi_join;
pub mod shared_subplans;
pub mod small_join_filters;
pub mod spillable_joins;

use std::sync::Arc;

use datafusion::execution::SessionState;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::optimizer::OptimizerRule;

use crate::EngineConfig;

/// Install FlowEngine's logical and physical rules into `builder`, each behind its session
/// switch ([`options`]; their defaults follow `extra_optimizer_rules`).
pub fn register(mut builder: SessionStateBuilder, config: &EngineConfig) -> SessionStateBuilder {
    for rule in [
        Arc::new(join_keys::FilterAggregateByJoinKeys) as Arc<dyn OptimizerRule + Send + Sync>,
        Arc::new(semi_join::PushSemiJoinBelowInnerJoins),
        Arc::new(dimension_joins::JoinFilteredDimensionsEarly),
        // Last, once filters sit where they will be evaluated.
        Arc::new(filter_order::OrderFilterConjuncts),
    ] {
        builder = builder.with_optimizer_rule(options::switchable_logical(rule));
    }
    let mut physical_rules = spillable_joins::SpillableJoins::new(
        config.spillable_joins.unwrap_or_default(),
        config.memory_limit_bytes(),
    )
    .insert_into(datafusion::physical_optimizer::optimizer::PhysicalOptimizer::new().rules);
    // Right after join selection, before the spillable-joins rule sees the build sides.
    physical_rules = build_side::BuildSmallerSide.insert_into(physical_rules);
    physical_rules =
        collect_builds::CollectSmallBuildSides::new(config.effective_collect_build_rows())
            .insert_into(physical_rules);
    // Last: it only swaps expressions for equivalent ones that skip per-value checks.
    physical_rules.push(Arc::new(exact_decimal::ExactDecimalArithmetic));
    // Last too: filters keep their place, only their predicates are evaluated in steps.
    physical_rules.push(Arc::new(progressive_filter::ProgressiveFilters));
    // After the filters it may add above scans were planned by DataFusion's pushdown.
    physical_rules.push(Arc::new(small_join_filters::SmallJoinFilters));
    let physical_rules = physical_rules
        .into_iter()
        .map(options::switchable_physical)
        .collect();
    builder.with_physical_optimizer_rules(physical_rules)
}

/// The switches a new session starts with: every rule on unless `extra_optimizer_rules = false`.
pub fn default_options(config: &EngineConfig) -> options::OptimizerOptions {
    options::OptimizerOptions::all(config.extra_optimizer_rules.unwrap_or(true))
}

/// `state` able to execute an aggregate a query uses twice (a repeated CTE, TPC-H Q15) once,
/// in sessions that keep `flowengine.optimizer.shared_subplans` on. It wraps the planner the
/// connectors installed (federation); a cluster's planner later replaces both, as Ballista plans
/// the way DataFusion does.
pub fn share_subplans(state: SessionState) -> SessionState {
    let inner = Arc::clone(state.query_planner());
    SessionStateBuilder::new_from_existing(state)
        .with_query_planner(Arc::new(shared_subplans::SharingQueryPlanner::wrapping(
            inner,
        )))
        .build()
}
