//! The federation optimizer rule as FlowEngine installs it: datafusion-federation's rule, kept
//! away from the root of `INSERT` and `COPY` plans.
//!
//! When both the target and the source of `INSERT INTO pg_table SELECT ... FROM pg_other` live
//! in one database, the upstream rule federates the whole DML node, which its SQL unparser
//! cannot express ("Unsupported plan: Dml"). Here the rule runs on the inputs of DML and `COPY`
//! nodes only: the query part still goes to the database, the write stays with the sink.
//!
//! The upstream rule also sends any function to the database; a query using one of
//! DataFusion's own (`arrow_typeof`, `date_bin`, ...) would fail there. A federated plan is
//! kept only when its federated parts use [`PORTABLE_FUNCTIONS`]; otherwise the query runs in
//! DataFusion with projections, filters and limits still pushed into each table scan. The
//! engine's bounded `string_concat` (how it plans `||`) goes to the database as `||` again.

use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::error::Result;
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::optimizer::optimizer::Optimizer;
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};
use datafusion_federation::{FederatedPlanNode, FederationOptimizerRule, get_table_source};

/// Where a [`FederateBelowWrites`] instance acts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Early, as datafusion-federation places its rule (after subqueries became joins, before
    /// limits and projections are pushed down): queries keep the shape of their SQL, which the
    /// unparser turns back into SQL reliably. Plans that write are left to [`Stage::Writes`].
    Queries,
    /// Last, on the inputs of `INSERT` and `COPY`: their input is a projection over a
    /// projection until DataFusion merges them, which the unparser renders with a derived table
    /// it then names wrongly ("missing FROM-clause entry").
    Writes,
}

/// The federation rule at one [`Stage`].
#[derive(Debug)]
pub(crate) struct FederateBelowWrites {
    rule: FederationOptimizerRule,
    stage: Stage,
}

impl OptimizerRule for FederateBelowWrites {
    fn name(&self) -> &str {
        match self.stage {
            Stage::Queries => "federation_optimizer_rule",
            Stage::Writes => "federation_optimizer_rule_for_writes",
        }
    }

    fn supports_rewrite(&self) -> bool {
        true
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        let writes = matches!(plan, LogicalPlan::Dml(_) | LogicalPlan::Copy(_));
        match (self.stage, writes) {
            (Stage::Queries, true) | (Stage::Writes, false) => Ok(Transformed::no(plan)),
            (Stage::Writes, true) => plan.map_children(|child| self.federate(child, config)),
            (Stage::Queries, false) => self.federate(plan, config),
        }
    }
}

impl FederateBelowWrites {
    fn federate(
        &self,
        plan: LogicalPlan,
        config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        // Most plans read no database table: leave them without cloning or walking them again.
        if !reads_database(&plan)? {
            return Ok(Transformed::no(plan));
        }
        let original = plan.clone();
        let plan = if self.stage == Stage::Writes {
            without_scan_fetch(plan)?
        } else {
            plan
        };
        let rewritten = self.rule.rewrite(plan, config)?;
        let rewritten = if rewritten.transformed {
            Transformed::yes(with_operators(rewritten.data)?)
        } else {
            rewritten
        };
        if rewritten.transformed && !portable(&rewritten.data)? {
            // Some federated subquery uses a function the database may not have (or has with
            // other semantics): keep DataFusion's plan, whose scans still push projections,
            // filters and limits down.
            return Ok(Transformed::no(original));
        }
        Ok(rewritten)
    }
}

/// DataFusion's default optimizer rules with the federation rule early for queries (where
/// datafusion-federation's own `default_optimizer_rules` puts it) and last for writes.
pub(crate) fn optimizer_rules() -> Vec<Arc<dyn OptimizerRule + Send + Sync>> {
    let mut rules = Optimizer::new().rules;
    let at = rules
        .iter()
        .position(|r| r.name() == "scalar_subquery_to_join")
        .map_or(0, |i| i + 1);
    rules.insert(
        at,
        Arc::new(FederateBelowWrites {
            rule: FederationOptimizerRule::new(),
            stage: Stage::Queries,
        }),
    );
    rules.push(Arc::new(FederateBelowWrites {
        rule: FederationOptimizerRule::new(),
        stage: Stage::Writes,
    }));
    rules
}

/// `plan` with the engine's `string_concat` turned back into `||` inside federated nodes:
/// databases know the operator, not the function.
fn with_operators(plan: LogicalPlan) -> Result<LogicalPlan> {
    plan.transform_up(|node| {
        let LogicalPlan::Extension(ext) = &node else {
            return Ok(Transformed::no(node));
        };
        let Some(fed) = ext.node.as_any().downcast_ref::<FederatedPlanNode>() else {
            return Ok(Transformed::no(node));
        };
        let inner = fed.plan().clone().transform_up_with_subqueries(|n| {
            n.map_expressions(engine::bounded_values::as_operator)
        })?;
        if !inner.transformed {
            return Ok(Transformed::no(node));
        }
        let fed = FederatedPlanNode::new(inner.data, Arc::clone(&fed.planner));
        Ok(Transformed::yes(LogicalPlan::Extension(
            datafusion::logical_expr::Extension {
                node: Arc::new(fed),
            },
        )))
    })
    .map(|t| t.data)
}

/// Whether `plan` scans a table the federation rule can send to a database.
fn reads_database(plan: &LogicalPlan) -> Result<bool> {
    let mut found = false;
    plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node
            && get_table_source(&scan.source)?.is_some()
        {
            found = true;
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    Ok(found)
}

/// `plan` with the row limit DataFusion pushed into database table scans removed (the `Limit`
/// node above each such scan stays). With a limit inside the scan, the SQL unparser wraps the
/// scan in a derived table that the outer query then names wrongly ("no such column").
fn without_scan_fetch(plan: LogicalPlan) -> Result<LogicalPlan> {
    plan.transform_up(|node| match node {
        LogicalPlan::TableScan(mut scan)
            if scan.fetch.is_some() && get_table_source(&scan.source)?.is_some() =>
        {
            scan.fetch = None;
            Ok(Transformed::yes(LogicalPlan::TableScan(scan)))
        }
        other => Ok(Transformed::no(other)),
    })
    .map(|t| t.data)
}

/// Functions with the same name and meaning in PostgreSQL, MySQL/MariaDB and SQLite.
const PORTABLE_FUNCTIONS: &[&str] = &[
    "count", "sum", "min", "max", "avg", "abs", "lower", "upper", "coalesce", "nullif", "trim",
    "btrim", "ltrim", "rtrim", "replace", "substr",
];

/// Whether every expression inside the plan's federated nodes can be sent to a database.
fn portable(plan: &LogicalPlan) -> Result<bool> {
    let mut ok = true;
    plan.apply(|node| {
        if let LogicalPlan::Extension(ext) = node
            && let Some(fed) = ext.node.as_any().downcast_ref::<FederatedPlanNode>()
        {
            let mysql = reads_mysql(fed.plan())?;
            fed.plan().apply(|inner| {
                // MySQL has no NULLS FIRST/LAST: its unparser drops them, and MySQL sorts NULLs
                // first ascending, last descending. Other orders are sorted here.
                if mysql
                    && let LogicalPlan::Sort(sort) = inner
                    && sort.expr.iter().any(|s| s.nulls_first != s.asc)
                {
                    ok = false;
                    return Ok(TreeNodeRecursion::Stop);
                }
                for expr in inner.expressions() {
                    expr.apply(|e| {
                        let name = match e {
                            Expr::ScalarFunction(f) => Some(f.name()),
                            Expr::AggregateFunction(f) => Some(f.func.name()),
                            Expr::WindowFunction(_) => Some("window"),
                            _ => None,
                        };
                        if name.is_some_and(|n| !PORTABLE_FUNCTIONS.contains(&n)) {
                            ok = false;
                            return Ok(TreeNodeRecursion::Stop);
                        }
                        Ok(TreeNodeRecursion::Continue)
                    })?;
                }
                Ok(if ok {
                    TreeNodeRecursion::Continue
                } else {
                    TreeNodeRecursion::Stop
                })
            })?;
        }
        Ok(if ok {
            TreeNodeRecursion::Continue
        } else {
            TreeNodeRecursion::Stop
        })
    })?;
    Ok(ok)
}

/// Whether `plan` scans a MySQL table.
#[cfg(feature = "mysql")]
fn reads_mysql(plan: &LogicalPlan) -> Result<bool> {
    use datafusion::datasource::source_as_provider;
    use datafusion_federation::FederatedTableProviderAdaptor;
    use datafusion_table_providers::mysql::write::MySQLTableWriter;
    let mut found = false;
    plan.apply(|node| {
        if let LogicalPlan::TableScan(scan) = node
            && let Ok(provider) = source_as_provider(&scan.source)
            && let Some(adaptor) = (provider.as_ref() as &dyn std::any::Any)
                .downcast_ref::<FederatedTableProviderAdaptor>()
            && let Some(inner) = &adaptor.table_provider
        {
            found |= (inner.as_ref() as &dyn std::any::Any)
                .downcast_ref::<MySQLTableWriter>()
                .is_some();
        }
        Ok(if found {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    })?;
    Ok(found)
}

#[cfg(not(feature = "mysql"))]
fn reads_mysql(_plan: &LogicalPlan) -> Result<bool> {
    Ok(false)
}
