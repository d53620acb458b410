//! FlowEngine's own optimizer rules, and the one place they are installed ([`register`],
//! [`share_subplans`]). Each rule is a general mechanism DataFusion 55 lacks (see the README's
//! "Performance" section); `extra_optimizer_rules = false` turns them all off, and
//! `spillable_joins` is governed by its own setting.
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
pub mod progressive_filter;
pub mod semi_join;
pub mod shared_subplans;
pub mod small_join_filters;
pub mod spillable_joins;

use std::sync::Arc;

use datafusion::execution::SessionState;
use datafusion::execution::session_state::SessionStateBuilder;

use crate::EngineConfig;

/// Install the logical and physical rules `config` asks for into `builder`.
pub fn register(mut builder: SessionStateBuilder, config: &EngineConfig) -> SessionStateBuilder {
    let extra = config.extra_optimizer_rules.unwrap_or(true);
    if extra {
        builder = builder
            .with_optimizer_rule(Arc::new(join_keys::FilterAggregateByJoinKeys))
            .with_optimizer_rule(Arc::new(semi_join::PushSemiJoinBelowInnerJoins))
            .with_optimizer_rule(Arc::new(dimension_joins::JoinFilteredDimensionsEarly))
            // Last, once filters sit where they will be evaluated.
            .with_optimizer_rule(Arc::new(filter_order::OrderFilterConjuncts));
    }
    let mut physical_rules = spillable_joins::SpillableJoins::new(
        config.spillable_joins.unwrap_or_default(),
        config.memory_limit_bytes(),
    )
    .insert_into(datafusion::physical_optimizer::optimizer::PhysicalOptimizer::new().rules);
    if extra {
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
    }
    builder.with_physical_optimizer_rules(physical_rules)
}

/// `state` with a CTE used twice (TPC-H Q15) executed once, when `config` keeps FlowEngine's
/// rules on. It wraps the planner the connectors installed (federation); a cluster's planner
/// later replaces both, as Ballista plans the way DataFusion does.
pub fn share_subplans(state: SessionState, config: &EngineConfig) -> SessionState {
    if !config.extra_optimizer_rules.unwrap_or(true) {
        return state;
    }
    let inner = Arc::clone(state.query_planner());
    SessionStateBuilder::new_from_existing(state)
        .with_query_planner(Arc::new(shared_subplans::SharingQueryPlanner::wrapping(
            inner,
        )))
        .build()
}
