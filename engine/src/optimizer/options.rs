//! One switch per optimizer rule, in the session's DataFusion configuration: `SET
//! flowengine.optimizer.<rule> = false` turns a rule off for the session, and
//! `information_schema.df_settings` lists every switch. `extra_optimizer_rules = false` in
//! flowengine.toml sets every switch's default to off.
//!
//! Rules stay installed either way; [`switchable_logical`] and [`switchable_physical`] wrap them
//! so that a switched-off rule leaves the plan as it is.

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::common::config::{ConfigEntry, ConfigExtension, ConfigOptions, ExtensionOptions};
use datafusion::common::tree_node::Transformed;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::LogicalPlan;
use datafusion::optimizer::{ApplyOrder, OptimizerConfig, OptimizerRule};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;

/// A rule's switch: its option name, the rule's own name (as plans and `EXPLAIN VERBOSE` show
/// it) and what it does.
pub struct RuleSwitch {
    pub option: &'static str,
    pub rule: &'static str,
    pub description: &'static str,
}

/// Every switchable rule.
pub const RULES: &[RuleSwitch] = &[
    RuleSwitch {
        option: "join_keys",
        rule: "filter_aggregate_by_join_keys",
        description: "Filter an aggregate's input by the keys of the join above it",
    },
    RuleSwitch {
        option: "semi_join",
        rule: "push_semi_join_below_inner_joins",
        description: "Evaluate a semi join (IN / EXISTS) below the inner joins it does not need",
    },
    RuleSwitch {
        option: "dimension_joins",
        rule: "join_filtered_dimensions_early",
        description: "Join filtered dimension tables before unfiltered ones",
    },
    RuleSwitch {
        option: "filter_order",
        rule: "order_filter_conjuncts",
        description: "Evaluate the cheapest and most selective filter conjuncts first",
    },
    RuleSwitch {
        option: "build_side",
        rule: "build_smaller_side",
        description: "Build hash joins on the smaller input",
    },
    RuleSwitch {
        option: "collect_builds",
        rule: "collect_small_build_sides",
        description: "Collect a small build side once instead of repartitioning both inputs",
    },
    RuleSwitch {
        option: "exact_decimal",
        rule: "exact_decimal_arithmetic",
        description: "Skip overflow checks on decimal arithmetic that cannot overflow",
    },
    RuleSwitch {
        option: "progressive_filter",
        rule: "progressive_filters",
        description: "Evaluate a filter's conjuncts on the rows the previous ones kept",
    },
    RuleSwitch {
        option: "small_join_filters",
        rule: "small_join_filters",
        description: "Filter a join's probe side by the key set of a small build side",
    },
    RuleSwitch {
        option: "shared_subplans",
        rule: "shared_subplans",
        description: "Execute an aggregate a query uses more than once (a repeated CTE) once",
    },
];

/// The switches of one session (`flowengine.optimizer.*`).
#[derive(Debug, Clone)]
pub struct OptimizerOptions {
    enabled: BTreeMap<&'static str, bool>,
}

impl Default for OptimizerOptions {
    fn default() -> Self {
        Self::all(true)
    }
}

impl OptimizerOptions {
    /// Every rule on (or off).
    pub fn all(on: bool) -> Self {
        Self {
            enabled: RULES.iter().map(|r| (r.option, on)).collect(),
        }
    }

    /// Whether the rule with this option name is on.
    pub fn enabled(&self, option: &str) -> bool {
        self.enabled.get(option).copied().unwrap_or(true)
    }

    /// Whether the rule named `rule` (its own name) is on in `config`.
    pub fn rule_enabled(config: &ConfigOptions, rule: &str) -> bool {
        switch_of(rule).is_none_or(|option| Self::option_enabled(config, option))
    }

    /// Whether the switch `option` is on in `config` (on when the session has no switches).
    fn option_enabled(config: &ConfigOptions, option: &str) -> bool {
        config
            .extensions
            .get::<OptimizerOptions>()
            .is_none_or(|o| o.enabled(option))
    }
}

impl ConfigExtension for OptimizerOptions {
    const PREFIX: &'static str = "flowengine";
}

impl ExtensionOptions for OptimizerOptions {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }

    fn cloned(&self) -> Box<dyn ExtensionOptions> {
        Box::new(self.clone())
    }

    fn set(&mut self, key: &str, value: &str) -> Result<()> {
        let known = || {
            RULES
                .iter()
                .map(|r| format!("flowengine.optimizer.{}", r.option))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let Some(switch) = key
            .strip_prefix("optimizer.")
            .and_then(|name| RULES.iter().find(|r| r.option.eq_ignore_ascii_case(name)))
        else {
            return Err(DataFusionError::Configuration(format!(
                "unknown setting flowengine.{key}; FlowEngine's settings are {}",
                known()
            )));
        };
        let on = value.trim().parse::<bool>().map_err(|_| {
            DataFusionError::Configuration(format!(
                "flowengine.optimizer.{} must be true or false, not `{value}`",
                switch.option
            ))
        })?;
        self.enabled.insert(switch.option, on);
        Ok(())
    }

    fn entries(&self) -> Vec<ConfigEntry> {
        RULES
            .iter()
            .map(|r| ConfigEntry {
                key: format!("flowengine.optimizer.{}", r.option),
                value: Some(self.enabled(r.option).to_string()),
                description: r.description,
            })
            .collect()
    }
}

/// The switch of the rule named `rule`, if it has one.
fn switch_of(rule: &str) -> Option<&'static str> {
    RULES.iter().find(|r| r.rule == rule).map(|r| r.option)
}

/// `rule`, skipped in sessions that switch it off (rules without a switch are returned as they
/// are).
pub fn switchable_logical(
    rule: Arc<dyn OptimizerRule + Send + Sync>,
) -> Arc<dyn OptimizerRule + Send + Sync> {
    match switch_of(rule.name()) {
        Some(option) => Arc::new(SwitchedLogical { rule, option }),
        None => rule,
    }
}

/// `rule`, skipped in sessions that switch it off (rules without a switch are returned as they
/// are).
pub fn switchable_physical(
    rule: Arc<dyn PhysicalOptimizerRule + Send + Sync>,
) -> Arc<dyn PhysicalOptimizerRule + Send + Sync> {
    match switch_of(rule.name()) {
        Some(option) => Arc::new(SwitchedPhysical { rule, option }),
        None => rule,
    }
}

/// A rule behind its switch, found once when the rule is installed.
#[derive(Debug)]
struct SwitchedLogical {
    rule: Arc<dyn OptimizerRule + Send + Sync>,
    option: &'static str,
}

impl OptimizerRule for SwitchedLogical {
    fn name(&self) -> &str {
        self.rule.name()
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        self.rule.apply_order()
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        if OptimizerOptions::option_enabled(&config.options(), self.option) {
            self.rule.rewrite(plan, config)
        } else {
            Ok(Transformed::no(plan))
        }
    }
}

#[derive(Debug)]
struct SwitchedPhysical {
    rule: Arc<dyn PhysicalOptimizerRule + Send + Sync>,
    option: &'static str,
}

impl PhysicalOptimizerRule for SwitchedPhysical {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if OptimizerOptions::option_enabled(config, self.option) {
            self.rule.optimize(plan, config)
        } else {
            Ok(plan)
        }
    }

    fn name(&self) -> &str {
        self.rule.name()
    }

    fn schema_check(&self) -> bool {
        self.rule.schema_check()
    }
}
