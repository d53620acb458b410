//! A logical optimizer rule DataFusion 55 lacks: an inner join with a point-filtered dimension
//! (`nation WHERE n_name = 'FRANCE'`) is moved down onto the relation that holds its join key,
//! instead of running after every other join of the `FROM` clause.
//!
//! DataFusion 55 has no cost-based join ordering: comma joins run in the order written, so in
//! TPC-H Q7 (`FROM supplier, lineitem, orders, customer, nation n1, nation n2`) 1.8 million
//! `lineitem` rows flow through the joins with `orders` and `customer` before the two one-row
//! `nation` filters keep 5,900 of them. Joined onto `supplier` and `customer` directly, the
//! nation filters shrink those inputs first, and every join above works on a few percent of the
//! rows (and builds small hash tables whose dynamic filters prune the scans).
//!
//! Inner joins commute and associate, so `((X ⋈ Y) ⋈ Z) ⋈ S` with conditions between `S` and
//! `X` alone equals `((X ⋈ S) ⋈ Y) ⋈ Z`; the rewrite keeps the original output columns (a
//! projection on top) and any non-equi condition of the moved join as a condition of the
//! lowest join that has its columns. Without row counts at logical planning time, "selective"
//! is judged from the plan's shape: a single table filtered by an equality or `IN` list on a
//! column, or a chain of up to three tables each joined onto such a dimension (`nation ⋈ region
//! WHERE r_name = 'ASIA'`, and `supplier ⋈` that). A range filter does not qualify (TPC-H's
//! filtered `lineitem` is millions of rows), and the join is not moved below another join whose
//! other input is itself a dimension of as many tables or fewer, since that join may be the
//! more selective (a point-filtered table counts as one).
//!
//! When the dimension's join keys come from two tables of the other side (TPC-H Q5's suppliers
//! of a region join `lineitem` on the supplier key and `customer` on the nation key), it moves
//! down on the key pair of one table, and the other pair becomes a key of the join where the
//! two meet again: Q5's 6 million `lineitem` rows then probe the region's 2,000 suppliers
//! before the 228,000 `customer ⋈ orders` rows, not after.

use std::collections::HashSet;
use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, NullEquality, Result};
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{
    BinaryExpr, Expr, Filter, Join, JoinConstraint, JoinType, LogicalPlan, Operator, Projection,
};
use datafusion::optimizer::optimizer::ApplyOrder;
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};

/// See the module documentation.
#[derive(Debug, Default)]
pub struct JoinFilteredDimensionsEarly;

impl OptimizerRule for JoinFilteredDimensionsEarly {
    fn name(&self) -> &str {
        "join_filtered_dimensions_early"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        // Bottom up: a lower dimension join moves first, so one above it (TPC-H Q7's second
        // nation) is not stopped by the point-filtered input it still sits next to.
        Some(ApplyOrder::BottomUp)
    }

    fn supports_rewrite(&self) -> bool {
        true
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        let LogicalPlan::Join(join) = plan else {
            return Ok(Transformed::no(plan));
        };
        let Some(mut rewritten) = move_down(&join)? else {
            return Ok(Transformed::no(LogicalPlan::Join(join)));
        };
        // A move can make a new selective input (TPC-H Q5: `nation ⋈ region` once region
        // joined nation), which can move further down at once instead of in a later optimizer
        // pass that may not come. Every move takes a join deeper, so this ends; the bound is a
        // guard.
        for _ in 0..8 {
            let again = rewritten.transform_down(|node| match node {
                LogicalPlan::Join(j) => Ok(match move_down(&j)? {
                    Some(moved) => Transformed::new(moved, true, TreeNodeRecursion::Stop),
                    None => Transformed::no(LogicalPlan::Join(j)),
                }),
                other => Ok(Transformed::no(other)),
            })?;
            rewritten = again.data;
            if !again.transformed {
                break;
            }
        }
        Ok(Transformed::yes(rewritten))
    }
}

/// `join` with its selective side joined further down the other side, when that helps.
fn move_down(join: &Join) -> Result<Option<LogicalPlan>> {
    if join.join_type != JoinType::Inner || join.null_aware || join.on.is_empty() {
        return Ok(None);
    }
    // Which side is the filtered dimension; `on` is re-paired as (rest, dimension).
    let (rest, dim, on, tables): (&Arc<LogicalPlan>, &Arc<LogicalPlan>, Vec<(Expr, Expr)>, _) =
        if let Some(tables) = selective_tables(&join.right) {
            (&join.left, &join.right, join.on.clone(), tables)
        } else if let Some(tables) = selective_tables(&join.left) {
            let swapped = join
                .on
                .iter()
                .map(|(l, r)| (r.clone(), l.clone()))
                .collect();
            (&join.right, &join.left, swapped, tables)
        } else {
            return Ok(None);
        };
    if on
        .iter()
        .any(|(_, d)| !d.column_refs().iter().all(|c| dim.schema().has_column(c)))
    {
        return Ok(None);
    }
    let Some((moving, staying)) = split_keys(rest, dim, tables, on, join.null_equality) else {
        return Ok(None);
    };
    let keys = rest_columns(&moving);
    let target = Target {
        dim,
        on: &moving,
        null_equality: join.null_equality,
        keys: &keys,
        tables,
    };
    let mut moved = target.place(rest)?;
    for (r, d) in staying {
        // A key pair that stays joins where both its columns meet again, as a key of that join.
        moved = match attach(&moved, &Attach::Keys(r.clone(), d.clone()))? {
            Some(attached) => attached,
            None => LogicalPlan::Filter(Filter::try_new(r.eq(d), Arc::new(moved))?),
        };
    }
    if let Some(filter) = &join.filter {
        // The moved join's non-equi condition becomes a condition of the lowest join that has
        // its columns, as DataFusion would have placed it. Not a `Filter` above: DataFusion 55's
        // physical filter pushdown maps columns by name through projections, and with two
        // `n_name` columns (n1, n2) it pushed the filter onto the wrong one (apache/datafusion
        // #21246, fixed after 55).
        moved = match attach(&moved, &Attach::Condition(filter.clone()))? {
            Some(attached) => attached,
            None => LogicalPlan::Filter(Filter::try_new(filter.clone(), Arc::new(moved))?),
        };
    }
    // The join's own output columns, in its order, for the plans above.
    let columns = join
        .schema
        .columns()
        .into_iter()
        .map(Expr::Column)
        .collect::<Vec<_>>();
    Ok(Some(LogicalPlan::Projection(Projection::try_new(
        columns,
        Arc::new(moved),
    )?)))
}

/// Where the dimension goes and how it joins.
struct Target<'a> {
    dim: &'a Arc<LogicalPlan>,
    on: &'a [(Expr, Expr)],
    null_equality: NullEquality,
    keys: &'a HashSet<Column>,
    /// How many tables the dimension spans (see [`selective_tables`]).
    tables: usize,
}

impl Target<'_> {
    /// `plan` with the dimension joined onto the deepest input that holds all the keys.
    fn place(&self, plan: &LogicalPlan) -> Result<LogicalPlan> {
        match plan {
            LogicalPlan::Projection(p) if plain_columns(p) => {
                let mut expr = p.expr.clone();
                expr.extend(self.dim.schema().columns().into_iter().map(Expr::Column));
                let input = self.place(&p.input)?;
                Ok(LogicalPlan::Projection(Projection::try_new(
                    expr,
                    Arc::new(input),
                )?))
            }
            LogicalPlan::Filter(f) if descends(&f.input, self.keys, self.tables) => {
                Ok(LogicalPlan::Filter(Filter::try_new(
                    f.predicate.clone(),
                    Arc::new(self.place(&f.input)?),
                )?))
            }
            LogicalPlan::Join(j) if crossable(j) => {
                match side_to_enter(j, self.keys, self.tables) {
                    Some(Side::Left) => {
                        let left = Arc::new(self.place(&j.left)?);
                        inner_join_with(j, left, Arc::clone(&j.right), j.filter.clone())
                    }
                    Some(Side::Right) => {
                        let right = Arc::new(self.place(&j.right)?);
                        inner_join_with(j, Arc::clone(&j.left), right, j.filter.clone())
                    }
                    None => self.join_here(plan),
                }
            }
            _ => self.join_here(plan),
        }
    }

    fn join_here(&self, plan: &LogicalPlan) -> Result<LogicalPlan> {
        Ok(LogicalPlan::Join(Join::try_new(
            Arc::new(plan.clone()),
            Arc::clone(self.dim),
            self.on.to_vec(),
            None,
            JoinType::Inner,
            JoinConstraint::On,
            self.null_equality,
            false,
        )?))
    }
}

/// Key pairs of a join: (rest-of-the-plan side, dimension side).
type KeyPairs = Vec<(Expr, Expr)>;

/// The key pairs of a dimension join that move down with the dimension, and those that stay
/// for the join where their two columns meet again. All of them move when their columns on the
/// other side lie in one input further down. Otherwise (TPC-H Q5: `l_suppkey = s_suppkey AND
/// c_nationkey = s_nationkey`, keys from `lineitem` and `customer`) the first pair that can move
/// alone does, provided NULL keys never match (so a pair can become a condition elsewhere) and
/// the dimension's column of that pair is not one it joins its own filtered part on: such a
/// column (`s_nationkey`, which links the suppliers to their region) repeats across the
/// dimension's rows, and joining on it alone would multiply rows instead of filtering them.
fn split_keys(
    rest: &LogicalPlan,
    dim: &LogicalPlan,
    tables: usize,
    on: Vec<(Expr, Expr)>,
    null_equality: NullEquality,
) -> Option<(KeyPairs, KeyPairs)> {
    let keys = rest_columns(&on);
    if keys.is_empty() {
        return None;
    }
    if descends(rest, &keys, tables) {
        return Some((on, Vec::new()));
    }
    if on.len() < 2 || null_equality != NullEquality::NullEqualsNothing {
        return None;
    }
    let links = inner_join_columns(dim);
    let index = on.iter().position(|(r, d)| {
        let keys: HashSet<Column> = r.column_refs().into_iter().cloned().collect();
        !keys.is_empty()
            && d.column_refs().iter().all(|c| !links.contains(*c))
            && descends(rest, &keys, tables)
    })?;
    let mut staying = on;
    let moving = staying.remove(index);
    Some((vec![moving], staying))
}

/// The columns the rest-of-the-plan side of key pairs reads.
fn rest_columns(on: &[(Expr, Expr)]) -> HashSet<Column> {
    on.iter()
        .flat_map(|(r, _)| r.column_refs().into_iter().cloned())
        .collect()
}

/// Every column an equi-join inside `plan` joins on.
fn inner_join_columns(plan: &LogicalPlan) -> HashSet<Column> {
    let mut columns = HashSet::new();
    // The closure never fails; the walk's own result carries no information.
    let _ = plan.apply(|node| {
        if let LogicalPlan::Join(j) = node {
            for (l, r) in &j.on {
                columns.extend(l.column_refs().into_iter().cloned());
                columns.extend(r.column_refs().into_iter().cloned());
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    columns
}

/// What a moved join leaves behind for a join higher up: its non-equi condition, or a key pair
/// (rest side, dimension side) that did not move with it.
enum Attach {
    Condition(Expr),
    Keys(Expr, Expr),
}

impl Attach {
    fn columns(&self) -> HashSet<Column> {
        let exprs: Vec<&Expr> = match self {
            Attach::Condition(e) => vec![e],
            Attach::Keys(r, d) => vec![r, d],
        };
        exprs
            .into_iter()
            .flat_map(|e| e.column_refs().into_iter().cloned())
            .collect()
    }

    /// The join `j` with this added: a key pair becomes a key when its two sides are on the
    /// join's two sides, else (as a condition does) an `AND` to its filter.
    fn onto(&self, j: &Join) -> Result<LogicalPlan> {
        let mut on = j.on.clone();
        let condition = match self {
            Attach::Condition(e) => Some(e.clone()),
            Attach::Keys(r, d) => {
                let within = |e: &Expr, side: &LogicalPlan| {
                    e.column_refs().iter().all(|c| side.schema().has_column(c))
                };
                if within(r, &j.left) && within(d, &j.right) {
                    on.push((r.clone(), d.clone()));
                    None
                } else if within(d, &j.left) && within(r, &j.right) {
                    on.push((d.clone(), r.clone()));
                    None
                } else {
                    Some(r.clone().eq(d.clone()))
                }
            }
        };
        let filter = match (&j.filter, condition) {
            (Some(existing), Some(added)) => Some(existing.clone().and(added)),
            (existing, added) => added.or_else(|| existing.clone()),
        };
        Ok(LogicalPlan::Join(Join::try_new(
            Arc::clone(&j.left),
            Arc::clone(&j.right),
            on,
            filter,
            JoinType::Inner,
            j.join_constraint,
            j.null_equality,
            false,
        )?))
    }
}

/// `plan` with `what` added to its lowest inner join whose output has every column it reads;
/// `None` when no join below has them all.
fn attach(plan: &LogicalPlan, what: &Attach) -> Result<Option<LogicalPlan>> {
    attach_reading(plan, what, &what.columns())
}

fn attach_reading(
    plan: &LogicalPlan,
    what: &Attach,
    columns: &HashSet<Column>,
) -> Result<Option<LogicalPlan>> {
    if !holds(plan, columns) {
        return Ok(None);
    }
    let below = |input: &LogicalPlan| attach_reading(input, what, columns);
    match plan {
        LogicalPlan::Projection(p) if plain_columns(p) => below(&p.input)?
            .map(|input| Projection::try_new(p.expr.clone(), Arc::new(input)))
            .transpose()
            .map(|p| p.map(LogicalPlan::Projection)),
        LogicalPlan::Filter(f) => below(&f.input)?
            .map(|input| Filter::try_new(f.predicate.clone(), Arc::new(input)))
            .transpose()
            .map(|f| f.map(LogicalPlan::Filter)),
        LogicalPlan::Join(j) if crossable(j) => {
            if let Some(left) = below(&j.left)? {
                return inner_join_with(j, Arc::new(left), Arc::clone(&j.right), j.filter.clone())
                    .map(Some);
            }
            if let Some(right) = below(&j.right)? {
                return inner_join_with(j, Arc::clone(&j.left), Arc::new(right), j.filter.clone())
                    .map(Some);
            }
            what.onto(j).map(Some)
        }
        _ => Ok(None),
    }
}

/// Whether placing a join on `keys` into `plan` would cross at least one inner join (otherwise
/// the rewrite would only reproduce the plan).
fn descends(plan: &LogicalPlan, keys: &HashSet<Column>, tables: usize) -> bool {
    match plan {
        LogicalPlan::Projection(p) if plain_columns(p) => descends(&p.input, keys, tables),
        LogicalPlan::Filter(f) => descends(&f.input, keys, tables),
        LogicalPlan::Join(j) if crossable(j) => side_to_enter(j, keys, tables).is_some(),
        _ => false,
    }
}

enum Side {
    Left,
    Right,
}

/// The input of `j` a join on `keys` with a dimension of `tables` tables moves into: the one
/// holding the keys, unless the other input is a dimension of as many tables or fewer (that join
/// may be the more selective one, so it stays below; a point-filtered table is a dimension of
/// one). The comparison also keeps two dimensions on one table from trading places forever.
fn side_to_enter(j: &Join, keys: &HashSet<Column>, tables: usize) -> Option<Side> {
    let yields_to = |other: &LogicalPlan| selective_tables(other).is_some_and(|t| t <= tables);
    if holds(&j.left, keys) && !yields_to(&j.right) {
        Some(Side::Left)
    } else if holds(&j.right, keys) && !yields_to(&j.left) {
        Some(Side::Right)
    } else {
        None
    }
}

/// The inner join `j` over new inputs and with `filter` as its non-equi condition.
fn inner_join_with(
    j: &Join,
    left: Arc<LogicalPlan>,
    right: Arc<LogicalPlan>,
    filter: Option<Expr>,
) -> Result<LogicalPlan> {
    Ok(LogicalPlan::Join(Join::try_new(
        left,
        right,
        j.on.clone(),
        filter,
        JoinType::Inner,
        j.join_constraint,
        j.null_equality,
        false,
    )?))
}

fn crossable(j: &Join) -> bool {
    j.join_type == JoinType::Inner && !j.null_aware
}

fn plain_columns(p: &Projection) -> bool {
    p.expr.iter().all(|e| matches!(e, Expr::Column(_)))
}

fn holds(plan: &LogicalPlan, keys: &HashSet<Column>) -> bool {
    keys.iter().all(|c| plan.schema().has_column(c))
}

/// The most tables a snowflake dimension may span (TPC-H Q5's `supplier ⋈ nation ⋈ region`).
const SNOWFLAKE_TABLES: usize = 3;

/// How many tables `plan` spans if it is a dimension: 1 for a point-filtered table, one more
/// for each plain table joined onto such a dimension (a snowflake: `supplier ⋈ (nation ⋈ region
/// WHERE r_name = 'ASIA')` is 3), up to [`SNOWFLAKE_TABLES`]; `None` for anything else.
fn selective_tables(plan: &LogicalPlan) -> Option<usize> {
    if is_point_filtered(plan) {
        return Some(1);
    }
    let tables = match peel(plan) {
        LogicalPlan::Join(j) if crossable(j) && !j.on.is_empty() => {
            let onto = |dim: &LogicalPlan, table: &LogicalPlan| {
                if is_table(table) {
                    selective_tables(dim).map(|t| t + 1)
                } else {
                    None
                }
            };
            onto(&j.left, &j.right).or_else(|| onto(&j.right, &j.left))?
        }
        _ => return None,
    };
    (tables <= SNOWFLAKE_TABLES).then_some(tables)
}

/// One table filtered by an equality or `IN` list on a column.
fn is_point_filtered(plan: &LogicalPlan) -> bool {
    match peel(plan) {
        LogicalPlan::Filter(f) => {
            is_table(&f.input) && split_conjunction(&f.predicate).into_iter().any(is_point)
        }
        LogicalPlan::TableScan(scan) => scan.filters.iter().any(is_point),
        _ => false,
    }
}

fn is_table(plan: &LogicalPlan) -> bool {
    matches!(peel(plan), LogicalPlan::TableScan(_))
}

/// The plan under aliases and projections.
fn peel(plan: &LogicalPlan) -> &LogicalPlan {
    match plan {
        LogicalPlan::SubqueryAlias(a) => peel(&a.input),
        LogicalPlan::Projection(p) => peel(&p.input),
        other => other,
    }
}

/// `col = literal`, `col IN (literals)`, or an `OR` of those on one column.
fn is_point(expr: &Expr) -> bool {
    point_column(expr).is_some()
}

fn point_column(expr: &Expr) -> Option<&Column> {
    match expr {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => match (op, &**left, &**right) {
            (Operator::Eq, Expr::Column(c), Expr::Literal(..))
            | (Operator::Eq, Expr::Literal(..), Expr::Column(c)) => Some(c),
            (Operator::Or, l, r) => {
                let (l, r) = (point_column(l)?, point_column(r)?);
                (l == r).then_some(l)
            }
            _ => None,
        },
        Expr::InList(list) if !list.negated => match &*list.expr {
            Expr::Column(c) if list.list.iter().all(|e| matches!(e, Expr::Literal(..))) => Some(c),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use datafusion::prelude::SessionContext;

    use super::*;

    /// The tables as Parquet files, so the plans scan tables as TPC-H's do.
    const TABLES: &[(&str, &str)] = &[
        (
            "s",
            "SELECT * FROM (VALUES (1, 10), (2, 20), (3, 10)) AS t(sk, snk)",
        ),
        (
            "l",
            "SELECT * FROM (VALUES (1, 100, 5), (2, 100, 6), (3, 101, 7), (1, 102, 8))
             AS t(lsk, lok, q)",
        ),
        (
            "o",
            "SELECT * FROM (VALUES (100, 1000), (101, 1001), (102, 1000)) AS t(ok, ock)",
        ),
        (
            "c",
            "SELECT * FROM (VALUES (1000, 20), (1001, 10)) AS t(ck, cnk)",
        ),
        (
            "n",
            "SELECT * FROM (VALUES (10, 'FRANCE'), (20, 'GERMANY'), (30, 'PERU')) AS t(nk, name)",
        ),
        (
            "r",
            "SELECT * FROM (VALUES (10, 1), (20, 2), (30, 1)) AS t(rnk, rk)",
        ),
    ];

    /// A session over [`TABLES`], and the same catalog with the rule added.
    async fn sessions(dir: &std::path::Path) -> (SessionContext, SessionContext) {
        let ctx = SessionContext::new();
        for (name, sql) in TABLES {
            let path = dir.join(format!("{name}.parquet"));
            let path = path.display();
            for statement in [
                format!("COPY ({sql}) TO '{path}' STORED AS PARQUET"),
                format!("CREATE EXTERNAL TABLE {name} STORED AS PARQUET LOCATION '{path}'"),
            ] {
                ctx.sql(&statement)
                    .await
                    .expect("plan")
                    .collect()
                    .await
                    .expect("run");
            }
        }
        let state = datafusion::execution::SessionStateBuilder::new_from_existing(ctx.state())
            .with_optimizer_rule(Arc::new(JoinFilteredDimensionsEarly))
            .build();
        let with_rule = SessionContext::new_with_state(state);
        (ctx, with_rule)
    }

    async fn optimized(ctx: &SessionContext, sql: &str) -> String {
        let df = ctx.sql(sql).await.expect("plan");
        let plan = df.into_optimized_plan().expect("optimize");
        format!("{}", plan.display_indent())
    }

    async fn results(ctx: &SessionContext, sql: &str) -> String {
        let batches = ctx
            .sql(sql)
            .await
            .expect("plan")
            .collect()
            .await
            .expect("run");
        datafusion::arrow::util::pretty::pretty_format_batches(&batches)
            .expect("format")
            .to_string()
    }

    /// The plan `sql` optimizes to with the rule, and its results, which must equal those
    /// without the rule.
    async fn rewritten(sql: &str) -> (String, String) {
        let dir = tempfile::tempdir().expect("tempdir");
        let (ctx, with_rule) = sessions(dir.path()).await;
        let text = optimized(&with_rule, sql).await;
        let got = results(&with_rule, sql).await;
        assert_eq!(got, results(&ctx, sql).await, "{text}");
        (text, got)
    }

    #[tokio::test]
    async fn filtered_dimensions_join_their_key_holders_first() {
        // TPC-H Q7's shape: two filtered nations joined last in the order written.
        let sql = "SELECT n1.name AS sn, n2.name AS cn, sum(q) AS qty
            FROM s, l, o, c, n n1, n n2
            WHERE sk = lsk AND ok = lok AND ck = ock AND snk = n1.nk AND cnk = n2.nk
              AND ((n1.name = 'FRANCE' AND n2.name = 'GERMANY')
                OR (n1.name = 'GERMANY' AND n2.name = 'FRANCE'))
            GROUP BY n1.name, n2.name ORDER BY sn, cn";
        let (text, got) = rewritten(sql).await;
        // Each nation now joins the table holding its key directly.
        assert!(text.contains("Inner Join: s.snk = n1.nk"), "{text}");
        assert!(text.contains("Inner Join: c.cnk = n2.nk"), "{text}");
        let n1 = text.find("Inner Join: s.snk = n1.nk").expect(&text);
        let l = text.find("Inner Join: s.sk = l.lsk").expect(&text);
        assert!(
            l < n1,
            "the nation join sits below the lineitem join: {text}"
        );
        assert!(got.contains("GERMANY"), "{got}");
    }

    #[tokio::test]
    async fn a_dimension_filtered_through_another_moves_as_one() {
        // TPC-H Q5's shape: the region filter reaches the supplier through the nation.
        let sql = "SELECT name, sum(q) AS qty FROM o, l, s, n, r
            WHERE ok = lok AND sk = lsk AND snk = nk AND nk = rnk AND rk = 1
            GROUP BY name ORDER BY name";
        let (text, got) = rewritten(sql).await;
        let nation = text.find("Inner Join: s.snk = n.nk").expect("nation join");
        let lineitem = text
            .find("Inner Join: l.lsk = s.sk")
            .expect("lineitem join");
        assert!(
            lineitem < nation,
            "nation ⋈ region joins the supplier: {text}"
        );
        assert!(got.contains("FRANCE"), "{got}");
    }

    #[tokio::test]
    async fn a_join_on_keys_of_two_tables_moves_on_the_key_of_one() {
        // TPC-H Q5's full shape: the suppliers of a region join `l` on the supplier key and
        // `c` on the nation key, and the region filter reaches them through the nation.
        let sql = "SELECT name, sum(q) AS qty FROM c, o, l, s, n, r
            WHERE ck = ock AND ok = lok AND sk = lsk AND cnk = snk AND snk = nk AND nk = rnk
              AND rk = 1
            GROUP BY name ORDER BY name";
        let (text, got) = rewritten(sql).await;
        let supplier = text.find("Inner Join: l.lsk = s.sk").expect(&text);
        let order = text.find("Inner Join: o.ok = l.lok").expect(&text);
        assert!(
            order < supplier,
            "the suppliers join lineitem below its join with the orders: {text}"
        );
        // The nation key pair stays as a key of the join where customer meets the suppliers,
        // and the suppliers never join the customers on the nation key alone.
        assert!(
            text.contains("Inner Join: o.ok = l.lok, c.cnk = s.snk"),
            "{text}"
        );
        assert!(!text.contains("Inner Join: c.cnk = s.snk"), "{text}");
        // Only (s 3, o 101, c 1001) has the customer and supplier in one nation.
        assert!(got.contains("| FRANCE | 7   |"), "{got}");
    }

    #[tokio::test]
    async fn two_dimensions_on_one_table_settle() {
        // Two snowflakes of two tables each join `l`: neither moves below the other, so the
        // rule settles instead of trading their places until its bound.
        let sql = "SELECT sum(q) AS qty FROM l, s, n, o, c
            WHERE sk = lsk AND snk = nk AND name = 'FRANCE' AND ok = lok AND ock = ck
              AND cnk = 10";
        let (text, got) = rewritten(sql).await;
        assert!(text.contains("Inner Join: s.snk = n.nk"), "{text}");
        assert!(text.contains("Inner Join: o.ock = c.ck"), "{text}");
        // Each move adds a projection; dimensions trading places would add one per round,
        // 8 rounds per optimizer pass, instead of the 9 this plan settles with.
        assert!(
            text.matches("Projection:").count() <= 12,
            "the dimensions keep trading places: {text}"
        );
        // Suppliers 1 and 3 are French; only order 101 is customer 1001's.
        assert!(got.contains("| 7   |"), "{got}");
    }

    #[tokio::test]
    async fn range_filters_and_adjacent_joins_are_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (ctx, with_rule) = sessions(dir.path()).await;
        for sql in [
            // A range filter is not a point filter.
            "SELECT sum(q) FROM s, l, o WHERE sk = lsk AND ok = lok AND sk > 1",
            // The filtered table already joins the table holding its key.
            "SELECT sum(q) FROM l, s WHERE sk = lsk AND snk = 10",
        ] {
            assert_eq!(
                optimized(&ctx, sql).await,
                optimized(&with_rule, sql).await,
                "{sql}"
            );
        }
    }

    #[test]
    fn point_predicates() {
        use datafusion::prelude::{col, lit};
        assert!(is_point(&col("a").eq(lit(1))));
        assert!(is_point(&lit("x").eq(col("a"))));
        assert!(is_point(&col("a").eq(lit(1)).or(col("a").eq(lit(2)))));
        assert!(is_point(&col("a").in_list(vec![lit(1), lit(2)], false)));
        assert!(!is_point(&col("a").in_list(vec![lit(1)], true)));
        assert!(!is_point(&col("a").eq(lit(1)).or(col("b").eq(lit(2)))));
        assert!(!is_point(&col("a").gt(lit(1))));
        assert!(!is_point(&col("a").eq(col("b"))));
    }
}
