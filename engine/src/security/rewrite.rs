//! Row filters and column masks, injected into the logical plan above each `TableScan` of a
//! governed table: `Projection(masks) <- Filter(row filters) <- TableScan(all columns)`. The
//! replacement keeps the scan's qualifier and output columns, so the plan above is unchanged and
//! every query shape (views, CTEs, subqueries, joins, unions, prepared statements) gets them.
//!
//! Policy expressions are SQL over the table's columns; `current_user_attribute('key')` reads
//! the caller's attributes (an unknown key is NULL, which a filter treats as false).

use std::sync::Arc;

use arrow::datatypes::DataType;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::common::{Column, DFSchema, Result, ScalarValue, exec_err, plan_err};
use datafusion::execution::SessionState;
use datafusion::logical_expr::{
    ColumnarValue, Expr, Filter, LogicalPlan, LogicalPlanBuilder, Projection, ScalarFunctionArgs,
    ScalarUDF, ScalarUDFImpl, Signature, TableScan, TableScanBuilder, Volatility, cast,
};

use super::pattern::resolve;
use super::policy::{AccessError, Policy, Principal};

/// Name of the policy function reading the caller's attributes.
pub const CURRENT_USER_ATTRIBUTE: &str = "current_user_attribute";

/// Inject `who`'s row filters and masks into `plan`, and resolve `current_user_attribute`.
pub(crate) fn apply(
    policy: &Policy,
    who: &Principal,
    plan: LogicalPlan,
    state: &SessionState,
    catalog: &str,
    schema: &str,
) -> Result<LogicalPlan, AccessError> {
    plan.transform_up_with_subqueries(|node| {
        let LogicalPlan::TableScan(scan) = &node else {
            return Ok(Transformed::no(node));
        };
        let table = resolve(&scan.table_name, catalog, schema);
        let mut filters: Vec<String> = policy
            .held(who)
            .flat_map(|r| r.row_filters.iter())
            .filter(|(p, _)| p.matches(&table, catalog, schema))
            .map(|(_, f)| f.clone())
            .collect();
        if let Some(home) = who.home_catalog()
            && *table.schema == *"information_schema"
        {
            // information_schema lists every catalog: a tenant sees only rows of its own.
            let fields = scan.source.schema();
            if let Some(column) = ["table_catalog", "catalog_name", "specific_catalog"]
                .into_iter()
                .find(|c| fields.field_with_name(c).is_ok())
            {
                filters.push(format!("{column} = '{}'", home.replace('\'', "''")));
            }
        }
        let filters: Vec<&str> = filters.iter().map(String::as_str).collect();
        let masks: Vec<(&str, &str)> = policy
            .held(who)
            .flat_map(|r| r.masks.iter())
            .filter(|(p, _, _)| p.matches(&table, catalog, schema))
            .map(|(_, c, m)| (c.as_str(), m.as_str()))
            .collect();
        if filters.is_empty() && masks.is_empty() {
            return Ok(Transformed::no(node));
        }
        guarded(scan, &filters, &masks, who, state)
            .map(Transformed::yes)
            .map_err(|e| datafusion::error::DataFusionError::Plan(format!("for {table}: {e}")))
    })
    .data()
    .map_err(|e| AccessError::Policy(e.to_string()))
}

/// The scan of all columns, filtered, projected back to the scan's columns with masks applied.
fn guarded(
    scan: &TableScan,
    filters: &[&str],
    masks: &[(&str, &str)],
    who: &Principal,
    state: &SessionState,
) -> Result<LogicalPlan> {
    let full = TableScanBuilder::new(scan.table_name.clone(), Arc::clone(&scan.source))
        .with_filters(scan.filters.clone())
        .build()?;
    let schema = Arc::clone(&full.projected_schema);
    for (column, _) in masks {
        if schema.fields().iter().all(|f| f.name() != column) {
            return plan_err!("masked column `{column}` does not exist");
        }
    }
    let mut plan = LogicalPlan::TableScan(full);
    let mut predicate: Option<Expr> = None;
    for f in filters {
        let e = policy_expr(f, &schema, who, state)?;
        predicate = Some(match predicate {
            Some(p) => p.and(e),
            None => e,
        });
    }
    if let Some(p) = predicate {
        plan = LogicalPlan::Filter(Filter::try_new(p, Arc::new(plan))?);
    }
    let indices = scan
        .projection
        .clone()
        .unwrap_or_else(|| (0..schema.fields().len()).collect());
    let mut exprs = Vec::with_capacity(indices.len());
    for i in indices {
        let (qualifier, field) = schema.qualified_field(i);
        let expr = match masks.iter().find(|(c, _)| *c == field.name()) {
            Some((_, mask)) => cast(
                policy_expr(mask, &schema, who, state)?,
                field.data_type().clone(),
            )
            .alias_qualified(qualifier.cloned(), field.name()),
            None => Expr::Column(Column::new(qualifier.cloned(), field.name())),
        };
        exprs.push(expr);
    }
    plan = LogicalPlan::Projection(Projection::try_new(exprs, Arc::new(plan))?);
    if let Some(fetch) = scan.fetch {
        plan = LogicalPlanBuilder::from(plan)
            .limit(0, Some(fetch))?
            .build()?;
    }
    Ok(plan)
}

/// A policy expression over `schema`, with the caller's attributes in place.
fn policy_expr(
    sql: &str,
    schema: &DFSchema,
    who: &Principal,
    state: &SessionState,
) -> Result<Expr> {
    let expr = state.create_logical_expr(sql, schema)?;
    resolve_attributes(expr, who)
}

/// Replace `current_user_attribute('key')` by the caller's value (NULL when unset).
pub(crate) fn resolve_attributes(expr: Expr, who: &Principal) -> Result<Expr> {
    expr.transform(|e| {
        let Expr::ScalarFunction(f) = &e else {
            return Ok(Transformed::no(e));
        };
        if f.name() != CURRENT_USER_ATTRIBUTE {
            return Ok(Transformed::no(e));
        }
        let key = match f.args.as_slice() {
            [Expr::Literal(ScalarValue::Utf8(Some(k)), _)]
            | [Expr::Literal(ScalarValue::Utf8View(Some(k)), _)]
            | [Expr::Literal(ScalarValue::LargeUtf8(Some(k)), _)] => k.clone(),
            _ => return plan_err!("{CURRENT_USER_ATTRIBUTE}() takes one string literal"),
        };
        let value = ScalarValue::Utf8(who.attributes.get(&key).cloned());
        Ok(Transformed::yes(Expr::Literal(value, None)))
    })
    .data()
}

/// `current_user_attribute('key')`: resolved to a literal before execution for authenticated
/// callers; executing it anywhere else is an error.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct CurrentUserAttribute {
    signature: Signature,
}

impl CurrentUserAttribute {
    pub fn udf() -> ScalarUDF {
        ScalarUDF::new_from_impl(Self {
            signature: Signature::exact(vec![DataType::Utf8], Volatility::Stable),
        })
    }
}

impl ScalarUDFImpl for CurrentUserAttribute {
    fn name(&self) -> &str {
        CURRENT_USER_ATTRIBUTE
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        exec_err!(
            "{CURRENT_USER_ATTRIBUTE}() needs an authenticated caller: it works in queries sent to \
             `flowengine serve` and in its row filters and masks"
        )
    }
}
