//! A logical optimizer rule DataFusion 55 lacks: a semi join whose keys come from one input of
//! an inner join below it is moved onto that input.
//!
//! `x IN (SELECT ...)` becomes a left semi join above the whole `FROM` clause, so the inner
//! joins run on every row before the subquery's few keys filter them (TPC-H Q18: customer,
//! orders and lineitem joined in full, 6M rows, to keep 57 orders). Below the inner join, the
//! semi join filters its input first, and the join above it (now with a small build side)
//! hands a dynamic filter to the scan of the other input.
//!
//! `(A ⋈ B) ⋉ S` equals `(A ⋉ S) ⋈ B` when the semi join's conditions use only columns of `A`
//! (and of `S`): the semi join keeps or drops each row of `A` by itself, and the inner join pairs
//! the kept rows as before. Only `LeftSemi` over `Inner` joins is rewritten, also through
//! projections of plain columns between them, and only semi joins on equality keys alone (see
//! [`push_down`] for why correlated `EXISTS` stays where it is).

use std::collections::HashSet;
use std::sync::Arc;

use datafusion::common::tree_node::Transformed;
use datafusion::common::{Column, Result};
use datafusion::logical_expr::{Expr, Join, JoinType, LogicalPlan, Projection};
use datafusion::optimizer::optimizer::ApplyOrder;
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};

/// See the module documentation.
#[derive(Debug, Default)]
pub struct PushSemiJoinBelowInnerJoins;

impl OptimizerRule for PushSemiJoinBelowInnerJoins {
    fn name(&self) -> &str {
        "push_semi_join_below_inner_joins"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::TopDown)
    }

    fn supports_rewrite(&self) -> bool {
        true
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        let LogicalPlan::Join(semi) = plan else {
            return Ok(Transformed::no(plan));
        };
        match push_down(&semi)? {
            Some(rewritten) => Ok(Transformed::yes(rewritten)),
            None => Ok(Transformed::no(LogicalPlan::Join(semi))),
        }
    }
}

/// `semi` moved below the inner join it filters, when it can be.
fn push_down(semi: &Join) -> Result<Option<LogicalPlan>> {
    // A semi join with a non-equi condition is a correlated `EXISTS` (TPC-H Q21: another line
    // of the same order from another supplier); it keeps most rows, and below the inner joins
    // it would run on all of them instead of the few the joins keep (Q21 took 2.5x as long).
    // `IN (SELECT key ... GROUP BY ... HAVING ...)` has equi keys only, and is the selective
    // kind this rule is for.
    if semi.join_type != JoinType::LeftSemi || semi.null_aware || semi.filter.is_some() {
        return Ok(None);
    }
    // Through a projection of plain columns (projection pushdown puts them between joins).
    if let LogicalPlan::Projection(p) = semi.left.as_ref() {
        if !p.expr.iter().all(|e| matches!(e, Expr::Column(_))) {
            return Ok(None);
        }
        let Some(below) = push_down(&semi_over(semi, &p.input)?)? else {
            return Ok(None);
        };
        return Ok(Some(LogicalPlan::Projection(Projection::try_new(
            p.expr.clone(),
            Arc::new(below),
        )?)));
    }
    let LogicalPlan::Join(inner) = semi.left.as_ref() else {
        return Ok(None);
    };
    if inner.join_type != JoinType::Inner {
        return Ok(None);
    }
    // The columns of the inner join's output that the semi join reads.
    let mut used: HashSet<Column> = HashSet::new();
    for (l, _) in &semi.on {
        used.extend(l.column_refs().into_iter().cloned());
    }
    if let Some(f) = &semi.filter {
        used.extend(
            f.column_refs()
                .into_iter()
                .filter(|c| inner.schema.has_column(c))
                .cloned(),
        );
    }
    if used.is_empty() {
        return Ok(None);
    }
    let within = |side: &LogicalPlan| used.iter().all(|c| side.schema().has_column(c));
    let filtered = |side: &Arc<LogicalPlan>| -> Result<Arc<LogicalPlan>> {
        Ok(Arc::new(LogicalPlan::Join(semi_over(semi, side)?)))
    };
    let (left, right) = if within(&inner.left) {
        (filtered(&inner.left)?, Arc::clone(&inner.right))
    } else if within(&inner.right) {
        (Arc::clone(&inner.left), filtered(&inner.right)?)
    } else {
        return Ok(None);
    };
    Ok(Some(LogicalPlan::Join(Join::try_new(
        left,
        right,
        inner.on.clone(),
        inner.filter.clone(),
        JoinType::Inner,
        inner.join_constraint,
        inner.null_equality,
        false,
    )?)))
}

/// `semi` with `input` as its left side.
fn semi_over(semi: &Join, input: &Arc<LogicalPlan>) -> Result<Join> {
    Join::try_new(
        Arc::clone(input),
        Arc::clone(&semi.right),
        semi.on.clone(),
        semi.filter.clone(),
        JoinType::LeftSemi,
        semi.join_constraint,
        semi.null_equality,
        false,
    )
}

#[cfg(test)]
mod tests {
    use datafusion::prelude::SessionContext;

    use super::*;

    #[tokio::test]
    async fn in_subquery_filters_the_input_that_holds_its_key() {
        let ctx = SessionContext::new();
        for (name, sql) in [
            (
                "c",
                "SELECT * FROM (VALUES (1, 'a'), (2, 'b')) AS t(ck, name)",
            ),
            (
                "o",
                "SELECT * FROM (VALUES (10, 1), (11, 2), (12, 1)) AS t(ok, ock)",
            ),
            (
                "l",
                "SELECT * FROM (VALUES (10, 5), (10, 7), (11, 1), (12, 2)) AS t(lok, q)",
            ),
        ] {
            let df = ctx.sql(sql).await.expect("values");
            ctx.register_table(name, df.into_view()).expect("register");
        }
        let sql = "SELECT name, ok, sum(q) AS qty FROM c, o, l
            WHERE ok IN (SELECT lok FROM l GROUP BY lok HAVING sum(q) > 5)
              AND ck = ock AND ok = lok
            GROUP BY name, ok ORDER BY ok";
        let expected = ctx
            .sql(sql)
            .await
            .expect("plan")
            .collect()
            .await
            .expect("run");
        let state = datafusion::execution::SessionStateBuilder::new_from_existing(ctx.state())
            .with_optimizer_rule(Arc::new(PushSemiJoinBelowInnerJoins))
            .build();
        // The same catalog, with the rule.
        let with_rule = SessionContext::new_with_state(state);
        let df = with_rule.sql(sql).await.expect("plan");
        let plan = df.clone().into_optimized_plan().expect("optimize");
        let text = format!("{}", plan.display_indent());
        // The semi join now sits directly on a scan side, below the inner joins.
        let semi = text.find("LeftSemi").expect("a semi join");
        let inner = text.find("Inner Join").expect("an inner join");
        assert!(inner < semi, "{text}");
        let got = df.collect().await.expect("run");
        assert_eq!(
            datafusion::arrow::util::pretty::pretty_format_batches(&got)
                .expect("format")
                .to_string(),
            datafusion::arrow::util::pretty::pretty_format_batches(&expected)
                .expect("format")
                .to_string()
        );
    }
}
