//! A logical optimizer rule DataFusion 55 lacks: an aggregate joined on its grouping key to the
//! keys of a filtered table aggregates only the groups that join can keep ("magic sets").
//!
//! A correlated scalar subquery is decorrelated into an inner join with an aggregate grouped by
//! the correlation key over the whole table: TPC-H Q17's `l_quantity < (SELECT 0.2 *
//! avg(l_quantity) FROM lineitem WHERE l_partkey = p_partkey)` groups 6M lineitem rows into
//! 200K parts, of which the join with the filtered `part` keeps about 200; Q2's
//! `ps_supplycost = (SELECT min(ps_supplycost) ... WHERE p_partkey = ps_partkey)` joins and
//! groups all of partsupp for the few parts of one size and type.
//!
//! `O ⋈[o.k = g] Agg(group by g, ...)(A)` equals `O ⋈[o.k = g] Agg(...)(A ⋉[g = k] K)` when
//! every row of `O` took its `o.k` from a row of `K`: a group whose key `K` lacks is dropped by
//! the join anyway, and the groups kept see all their rows. `K` is found inside `O` through
//! inner joins, filters and projections that pass the column through, and across the keys of
//! inner and semi joins (TPC-H Q20: `partsupp ⋉ part WHERE p_name LIKE 'forest%'` holds only
//! the 2,127 filtered parts' keys, so 9,741 of 1994's 909,455 `lineitem` rows are aggregated,
//! into 5,843 groups instead of 543,210); the rule applies only when `K` is a single filtered
//! table scan: cheap to read a second time, and likely selective. The semi join then sits
//! under the aggregate, and DataFusion's join selection builds its hash table on the small
//! side.

use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, NullEquality, Result};
use datafusion::logical_expr::{
    Aggregate, Expr, Filter, Join, JoinConstraint, JoinType, LogicalPlan, Projection, SubqueryAlias,
};
use datafusion::optimizer::optimizer::ApplyOrder;
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};

/// Alias prefix of the key lists this rule adds (and recognises, so it applies once).
const KEYS_ALIAS: &str = "__join_keys";

/// See the module documentation.
#[derive(Debug, Default)]
pub struct FilterAggregateByJoinKeys;

impl OptimizerRule for FilterAggregateByJoinKeys {
    fn name(&self) -> &str {
        "filter_aggregate_by_join_keys"
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
        config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        let LogicalPlan::Join(join) = plan else {
            return Ok(Transformed::no(plan));
        };
        // Which side may hold the aggregate: one whose rows only matter where the other
        // side's keys find them. A null-aware anti join (`NOT IN`) also looks at NULL keys,
        // which the semi join would drop.
        let (right_ok, left_ok) = match join.join_type {
            _ if join.null_aware || join.null_equality != NullEquality::NullEqualsNothing => {
                (false, false)
            }
            JoinType::Inner => (true, true),
            JoinType::Left | JoinType::LeftSemi | JoinType::LeftAnti => (true, false),
            JoinType::Right | JoinType::RightSemi | JoinType::RightAnti => (false, true),
            _ => (false, false),
        };
        for (l, r) in &join.on {
            let (Expr::Column(lc), Expr::Column(rc)) = (l, r) else {
                continue;
            };
            for aggregate_on_right in [true, false] {
                if !(if aggregate_on_right {
                    right_ok
                } else {
                    left_ok
                }) {
                    continue;
                }
                let (outer, outer_col, grouped, grouped_col) = if aggregate_on_right {
                    (&join.left, lc, &join.right, rc)
                } else {
                    (&join.right, rc, &join.left, lc)
                };
                let Some((source, source_col)) = filtered_source(outer, outer_col) else {
                    continue;
                };
                let alias = config.alias_generator().next(KEYS_ALIAS);
                let keys = LogicalPlan::SubqueryAlias(SubqueryAlias::try_new(
                    Arc::new(LogicalPlan::Projection(Projection::try_new(
                        vec![Expr::Column(source_col.clone())],
                        Arc::new(source),
                    )?)),
                    alias.as_str(),
                )?);
                let key = Column::new(Some(alias), source_col.name.clone());
                let Some(filtered) = filter_groups(grouped, grouped_col, &keys, &key)? else {
                    continue;
                };
                let (left, right) = if aggregate_on_right {
                    (Arc::clone(&join.left), Arc::new(filtered))
                } else {
                    (Arc::new(filtered), Arc::clone(&join.right))
                };
                return Ok(Transformed::yes(LogicalPlan::Join(Join::try_new(
                    left,
                    right,
                    join.on.clone(),
                    join.filter.clone(),
                    join.join_type,
                    join.join_constraint,
                    join.null_equality,
                    join.null_aware,
                )?)));
            }
        }
        Ok(Transformed::no(LogicalPlan::Join(join)))
    }
}

/// The filtered table scan inside `plan` every value of `col` in `plan`'s output comes from,
/// and the column's name there.
fn filtered_source(plan: &LogicalPlan, col: &Column) -> Option<(LogicalPlan, Column)> {
    match plan {
        LogicalPlan::Join(j) if !j.null_aware => {
            // The sides whose rows every output row comes from.
            let (left, right) = match j.join_type {
                JoinType::Inner => (true, true),
                JoinType::Left | JoinType::LeftSemi | JoinType::LeftAnti => (true, false),
                JoinType::Right | JoinType::RightSemi | JoinType::RightAnti => (false, true),
                _ => (false, false),
            };
            let in_left = j.left.schema().has_column(col);
            let own = if left && in_left {
                filtered_source(&j.left, col)
            } else if right && j.right.schema().has_column(col) {
                filtered_source(&j.right, col)
            } else {
                None
            };
            own.or_else(|| matched_key_source(j, col, in_left))
        }
        LogicalPlan::Filter(f) if is_scan(&f.input) => Some((plan.clone(), col.clone())),
        LogicalPlan::TableScan(scan) if !scan.filters.is_empty() => {
            Some((plan.clone(), col.clone()))
        }
        LogicalPlan::Filter(f) => filtered_source(&f.input, col),
        LogicalPlan::Projection(p) => {
            let i = p.schema.index_of_column(col).ok()?;
            match unalias(&p.expr[i]) {
                Expr::Column(c) => filtered_source(&p.input, c),
                _ => None,
            }
        }
        LogicalPlan::SubqueryAlias(sa) => {
            let i = sa.schema.index_of_column(col).ok()?;
            filtered_source(&sa.input, &column_at(&sa.input, i))
        }
        _ => None,
    }
}

/// Through an equi-join key: a row of an inner or semi join has `col` equal to the key it was
/// matched on, so the values of `col` come from the other input's key column as well (TPC-H Q20:
/// `partsupp ⋉ part WHERE p_name LIKE 'forest%'` keeps only the filtered parts' keys). Not for
/// joins where NULL keys match, nor from the side an anti join or outer join keeps unmatched.
fn matched_key_source(j: &Join, col: &Column, col_in_left: bool) -> Option<(LogicalPlan, Column)> {
    if j.null_equality != NullEquality::NullEqualsNothing
        || !matches!(
            j.join_type,
            JoinType::Inner | JoinType::LeftSemi | JoinType::RightSemi
        )
    {
        return None;
    }
    j.on.iter().find_map(|(l, r)| {
        let (Expr::Column(lc), Expr::Column(rc)) = (l, r) else {
            return None;
        };
        if col_in_left && lc == col {
            filtered_source(&j.right, rc)
        } else if !col_in_left && rc == col {
            filtered_source(&j.left, lc)
        } else {
            None
        }
    })
}

/// The qualified column of `plan`'s output field `i`.
fn column_at(plan: &LogicalPlan, i: usize) -> Column {
    let (qualifier, field) = plan.schema().qualified_field(i);
    Column::new(qualifier.cloned(), field.name())
}

/// A table scan, possibly under a projection.
fn is_scan(plan: &LogicalPlan) -> bool {
    match plan {
        LogicalPlan::TableScan(_) => true,
        LogicalPlan::Projection(p) => matches!(p.input.as_ref(), LogicalPlan::TableScan(_)),
        _ => false,
    }
}

/// `plan` with the input of the aggregate that groups by `col` semi-joined with `keys` on
/// `key`; `None` when `col` is not (a rename of) a plain grouping column of an aggregate
/// reached through aliases, projections and filters.
fn filter_groups(
    plan: &LogicalPlan,
    col: &Column,
    keys: &LogicalPlan,
    key: &Column,
) -> Result<Option<LogicalPlan>> {
    Ok(match plan {
        LogicalPlan::SubqueryAlias(sa) => {
            let Ok(i) = sa.schema.index_of_column(col) else {
                return Ok(None);
            };
            filter_groups(&sa.input, &column_at(&sa.input, i), keys, key)?
                .map(|input| SubqueryAlias::try_new(Arc::new(input), sa.alias.clone()))
                .transpose()?
                .map(LogicalPlan::SubqueryAlias)
        }
        LogicalPlan::Projection(p) => {
            let Ok(i) = p.schema.index_of_column(col) else {
                return Ok(None);
            };
            let Expr::Column(inner) = unalias(&p.expr[i]) else {
                return Ok(None);
            };
            filter_groups(&p.input, inner, keys, key)?
                .map(|input| Projection::try_new(p.expr.clone(), Arc::new(input)))
                .transpose()?
                .map(LogicalPlan::Projection)
        }
        LogicalPlan::Filter(f) => filter_groups(&f.input, col, keys, key)?
            .map(|input| Filter::try_new(f.predicate.clone(), Arc::new(input)))
            .transpose()?
            .map(LogicalPlan::Filter),
        LogicalPlan::Aggregate(a) => {
            if a.group_expr
                .iter()
                .any(|e| matches!(e, Expr::GroupingSet(_)))
                || already_filtered(&a.input)
            {
                return Ok(None);
            }
            let Ok(i) = a.schema.index_of_column(col) else {
                return Ok(None);
            };
            let Some(Expr::Column(group)) = a.group_expr.get(i).map(unalias) else {
                return Ok(None);
            };
            let semi = Join::try_new(
                Arc::clone(&a.input),
                Arc::new(keys.clone()),
                vec![(Expr::Column(group.clone()), Expr::Column(key.clone()))],
                None,
                JoinType::LeftSemi,
                JoinConstraint::On,
                NullEquality::NullEqualsNothing,
                false,
            )?;
            Some(LogicalPlan::Aggregate(Aggregate::try_new(
                Arc::new(LogicalPlan::Join(semi)),
                a.group_expr.clone(),
                a.aggr_expr.clone(),
            )?))
        }
        _ => None,
    })
}

fn unalias(e: &Expr) -> &Expr {
    match e {
        Expr::Alias(a) => unalias(&a.expr),
        other => other,
    }
}

/// The aggregate input is already filtered by this rule (possibly moved down by
/// [`crate::optimizer::semi_join`]), so the rule applies once per aggregate.
fn already_filtered(plan: &LogicalPlan) -> bool {
    let mut found = false;
    let _ = plan.apply(|node| {
        if let LogicalPlan::SubqueryAlias(sa) = node
            && sa.alias.table().starts_with(KEYS_ALIAS)
        {
            found = true;
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
}

#[cfg(test)]
mod tests {
    use datafusion::prelude::SessionContext;

    use super::*;

    async fn context(with_rule: bool) -> SessionContext {
        let ctx = SessionContext::new();
        let ctx = if with_rule {
            SessionContext::new_with_state(
                datafusion::execution::SessionStateBuilder::new_from_existing(ctx.state())
                    .with_optimizer_rule(Arc::new(FilterAggregateByJoinKeys))
                    .with_optimizer_rule(Arc::new(
                        crate::optimizer::semi_join::PushSemiJoinBelowInnerJoins,
                    ))
                    .build(),
            )
        } else {
            ctx
        };
        use datafusion::arrow::array::{Float64Array, Int64Array, StringArray};
        use datafusion::arrow::record_batch::RecordBatch;
        let part = RecordBatch::try_from_iter([
            (
                "p_partkey",
                Arc::new(Int64Array::from(vec![1, 2, 3, 4])) as _,
            ),
            (
                "p_brand",
                Arc::new(StringArray::from(vec![
                    Some("A"),
                    Some("B"),
                    Some("A"),
                    None,
                ])) as _,
            ),
        ])
        .expect("part");
        let lineitem = RecordBatch::try_from_iter([
            (
                "l_partkey",
                Arc::new(Int64Array::from(vec![
                    Some(1),
                    Some(1),
                    Some(2),
                    Some(3),
                    Some(3),
                    Some(3),
                    Some(4),
                    None,
                ])) as _,
            ),
            (
                "l_quantity",
                Arc::new(Float64Array::from(vec![
                    10.0, 2.0, 5.0, 1.0, 9.0, 4.0, 7.0, 3.0,
                ])) as _,
            ),
            (
                "l_line",
                Arc::new(Int64Array::from(vec![1, 2, 1, 1, 2, 3, 1, 1])) as _,
            ),
        ])
        .expect("lineitem");
        ctx.register_batch("part", part).expect("register");
        ctx.register_batch("lineitem", lineitem).expect("register");
        ctx
    }

    async fn run(ctx: &SessionContext, sql: &str) -> (String, String) {
        let df = ctx.sql(sql).await.expect("plan");
        let plan = format!(
            "{}",
            df.clone()
                .into_optimized_plan()
                .expect("optimize")
                .display_indent()
        );
        let rows = datafusion::arrow::util::pretty::pretty_format_batches(
            &df.collect().await.expect("run"),
        )
        .expect("format")
        .to_string();
        (plan, rows)
    }

    #[tokio::test]
    async fn correlated_aggregate_reads_only_the_keys_the_join_keeps() {
        // Q17's shape, and Q2's (the aggregate's own joins), and a grouping key renamed by an
        // alias; the results must not change.
        let queries = [
            "SELECT l_partkey, l_quantity FROM lineitem, part
             WHERE p_partkey = l_partkey AND p_brand = 'A'
               AND l_quantity < (SELECT avg(l_quantity) FROM lineitem WHERE l_partkey = p_partkey)
             ORDER BY 1, 2",
            "SELECT p_partkey, p_brand FROM part
             WHERE p_brand = 'A' AND 9.0 = (SELECT max(l_quantity) FROM lineitem
                                             WHERE l_partkey = p_partkey AND l_line < 3)
             ORDER BY 1",
            "SELECT p.p_partkey, s.total FROM part p
             JOIN (SELECT l_partkey AS k, sum(l_quantity) AS total FROM lineitem GROUP BY l_partkey) s
               ON s.k = p.p_partkey
             WHERE p.p_brand = 'A' ORDER BY 1",
            // Q20's shape: the outer side is unfiltered but semi-joined with the filtered
            // table, whose keys then bound the aggregate.
            "SELECT p_partkey FROM part WHERE p_partkey IN (
               SELECT l.l_partkey FROM lineitem l
               WHERE l.l_partkey IN (SELECT p_partkey FROM part WHERE p_brand = 'A')
                 AND l.l_quantity > (SELECT 0.5 * sum(i.l_quantity) FROM lineitem i
                                     WHERE i.l_partkey = l.l_partkey AND i.l_line = l.l_line))
             ORDER BY 1",
        ];
        let plain = context(false).await;
        let ruled = context(true).await;
        for sql in queries {
            let (_, expected) = run(&plain, sql).await;
            let (plan, got) = run(&ruled, sql).await;
            assert_eq!(got, expected, "{sql}\n{plan}");
            assert!(plan.contains(KEYS_ALIAS), "{sql}\n{plan}");
            // The key list sits below the aggregate (after its line in the indented plan).
            let aggregate = plan.find("Aggregate:").expect("an aggregate");
            assert!(plan.find(KEYS_ALIAS) > Some(aggregate), "{plan}");
        }
        // An outer join keeps rows whose key the filtered table lacks: its keys bound nothing.
        let sql = "SELECT l.l_partkey, l.l_line, s.total FROM lineitem l
             LEFT JOIN (SELECT p_partkey FROM part WHERE p_brand = 'A') a ON a.p_partkey = l.l_partkey
             JOIN (SELECT l_partkey AS k, sum(l_quantity) AS total FROM lineitem GROUP BY l_partkey) s
               ON s.k = l.l_partkey
             ORDER BY 1, 2";
        let (_, expected) = run(&plain, sql).await;
        let (plan, got) = run(&ruled, sql).await;
        assert_eq!(got, expected, "{plan}");
        assert!(!plan.contains(KEYS_ALIAS), "{plan}");
        // No filtered side (every part is kept): nothing to gain, the plan is left alone.
        let (plan, _) = run(
            &ruled,
            "SELECT p_partkey FROM part
             WHERE 5.0 < (SELECT avg(l_quantity) FROM lineitem WHERE l_partkey = p_partkey)",
        )
        .await;
        assert!(!plan.contains(KEYS_ALIAS), "{plan}");
    }
}
