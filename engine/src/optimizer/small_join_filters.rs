//! Probe-side scans drop the rows a small hash-join build side cannot match, before those rows
//! are repartitioned and probed.
//!
//! When a hash join's build side has few distinct keys, DataFusion 55 hands the probe side's
//! Parquet scan a dynamic filter: `key IN (...)` once the build side is collected. With
//! `datafusion.execution.parquet.pushdown_filters` off (the default), the scan uses it only to
//! prune row groups, so every row still travels to the join. TPC-H Q18's `HAVING sum(...) >
//! 300` keeps 57 orders, yet 1.5 M `orders` and 6 M `lineitem` rows were repartitioned to meet
//! them.
//!
//! This physical optimizer rule puts a `FilterExec` right above every file scan that holds such
//! a dynamic filter. Its predicate, [`JoinKeysIn`], evaluates a cheap form of the filter:
//!
//! - a join whose build side is one partition: the `IN` list alone (the build keys' min/max
//!   bounds DataFusion adds are implied by the list);
//! - a partitioned join: DataFusion's filter is `CASE hash(key) % N WHEN 0 THEN key IN (...)
//!   WHEN 1 THEN ...`, which costs a hash and a CASE per row (227 ms of CPU over Q18's 6 M
//!   rows). Every key belongs to one partition, so one `IN` list of all partitions' keys keeps
//!   exactly the same rows, at one hash-set probe per row;
//! - anything else (a large build side probed through its hash table, a TopK or aggregate
//!   filter, a filter not filled yet): no filtering.
//!
//! An `IN` list over an `Int32` or `Int64` key is evaluated as a bitmap ([`KeyBitmap`]).
//!
//! A scan whose rows reach the join's probe side without per-row work on the way (only column
//! projections, round-robin repartitioning, merging partitions) is not filtered by that join's
//! filter: the join's own probe drops those rows as cheaply. A hash repartition, a filter or
//! another join between them is such work.
//!
//! Each form keeps every row DataFusion's filter keeps, so the join sees all the rows it can
//! match; the filter is the one DataFusion itself applies row by row when `pushdown_filters` is
//! on. A filter that keeps most rows stops being evaluated: after [`SAMPLE_ROWS`] rows, if it
//! kept more than [`KEEP_AT_MOST`] of them, the rest pass unchecked.
//!
//! Plans of recursive queries are left alone: DataFusion resets their joins between
//! iterations, and a scan's copy of a reset join's filter would keep the last iteration's keys.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Schema, SchemaRef};
use datafusion::common::ScalarValue;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::datasource::physical_plan::FileScanConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{ColumnarValue, Operator};
use datafusion::physical_expr::Partitioning;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::{
    BinaryExpr, CaseExpr, Column, DynamicFilterPhysicalExpr, InListExpr, IsNullExpr, Literal, lit,
};
use datafusion::physical_expr::utils::collect_columns;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::coop::CooperativeExec;
use datafusion::physical_plan::execution_plan::replace_children_if_necessary;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::joins::HashJoinExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::repartition::RepartitionExec;

use crate::optimizer::key_bitmap::KeyBitmap;

/// Rows a filter is evaluated on before it may be found not worth evaluating.
pub const SAMPLE_ROWS: usize = 100_000;
/// A filter that kept more than this share of its first [`SAMPLE_ROWS`] rows stops filtering.
pub const KEEP_AT_MOST: f64 = 0.75;

/// Filters probe-side file scans by the keys of small hash-join build sides.
#[derive(Debug, Default)]
pub struct SmallJoinFilters;

impl PhysicalOptimizerRule for SmallJoinFilters {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        // With pushdown on, the scan already applies the filter to every row.
        if config.execution.parquet.pushdown_filters
            || plan.exists(|node| Ok(node.name() == "RecursiveQueryExec"))?
        {
            return Ok(plan);
        }
        rewrite(plan, &[]).map(|t| t.data)
    }

    fn name(&self) -> &str {
        "small_join_filters"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// `plan` with a filter above each file scan for each dynamic filter in its predicate, except
/// the filters of the joins in `direct`: the scan's rows reach those joins' probe sides without
/// per-row work on the way, and the join's own probe drops them as cheaply.
fn rewrite(
    plan: Arc<dyn ExecutionPlan>,
    direct: &[u64],
) -> Result<Transformed<Arc<dyn ExecutionPlan>>> {
    if let Some(scan) = plan.downcast_ref::<DataSourceExec>() {
        let filters: Vec<_> = dynamic_filters(scan)?
            .into_iter()
            .filter(|f| f.expression_id().is_none_or(|id| !direct.contains(&id)))
            .collect();
        if filters.is_empty() {
            return Ok(Transformed::no(plan));
        }
        let mut plan = plan;
        for filter in filters {
            let predicate = Arc::new(JoinKeysIn::new(filter, plan.schema()));
            // The filter's effect is unknown until run time: keep the estimates as they are.
            let filtered = FilterExec::try_new(predicate, plan)?.with_default_selectivity(100)?;
            plan = Arc::new(filtered);
        }
        return Ok(Transformed::yes(plan));
    }
    let own = match plan.downcast_ref::<HashJoinExec>() {
        Some(_) => plan
            .dynamic_expressions_produced()
            .first()
            .and_then(|filter| filter.expression_id()),
        None => None,
    };
    let passes_rows_on = passes_rows_on(&plan);
    let mut changed = false;
    let mut children = vec![];
    for (i, child) in plan.children().into_iter().enumerate() {
        let child_direct = match own {
            // The probe side.
            Some(id) if i == 1 => vec![id],
            _ if passes_rows_on => direct.to_vec(),
            _ => vec![],
        };
        let child = rewrite(Arc::clone(child), &child_direct)?;
        changed |= child.transformed;
        children.push(child.data);
    }
    if !changed {
        return Ok(Transformed::no(plan));
    }
    Ok(Transformed::yes(replace_children_if_necessary(
        plan, children,
    )?))
}

/// Whether `plan` hands its input's rows on without evaluating anything per row.
fn passes_rows_on(plan: &Arc<dyn ExecutionPlan>) -> bool {
    if let Some(projection) = plan.downcast_ref::<ProjectionExec>() {
        return projection
            .expr()
            .iter()
            .all(|p| p.expr.downcast_ref::<Column>().is_some());
    }
    if let Some(repartition) = plan.downcast_ref::<RepartitionExec>() {
        return matches!(repartition.partitioning(), Partitioning::RoundRobinBatch(_));
    }
    plan.downcast_ref::<CooperativeExec>().is_some()
        || plan.downcast_ref::<CoalescePartitionsExec>().is_some()
}

/// The dynamic filters in `scan`'s predicate, over the scan's output columns; a filter over a
/// column the scan does not output is left out.
fn dynamic_filters(scan: &DataSourceExec) -> Result<Vec<Arc<dyn PhysicalExpr>>> {
    let Some(files) = scan.data_source().downcast_ref::<FileScanConfig>() else {
        return Ok(vec![]);
    };
    let source = files.file_source();
    let Some(predicate) = source.filter() else {
        return Ok(vec![]);
    };
    let mut found = vec![];
    predicate.apply(|expr| {
        Ok(
            if expr.downcast_ref::<DynamicFilterPhysicalExpr>().is_some() {
                found.push(Arc::clone(expr));
                TreeNodeRecursion::Jump
            } else {
                TreeNodeRecursion::Continue
            },
        )
    })?;
    let schema = scan.schema();
    Ok(found
        .into_iter()
        // The predicate reads the table's columns; the scan outputs its projection of them.
        .filter_map(|filter| match source.projection() {
            Some(projection) => projection.project_expr(&filter).ok(),
            None => Some(filter),
        })
        .filter(|filter| {
            collect_columns(filter).iter().all(|column| {
                schema
                    .fields()
                    .get(column.index())
                    .is_some_and(|field| field.name() == column.name())
            })
        })
        .collect())
}

/// A filter predicate keeping the rows a join's dynamic filter keeps, evaluated in its cheapest
/// form (see the module doc); NULL counts as false.
#[derive(Debug)]
pub struct JoinKeysIn {
    /// The join's dynamic filter, over the input's columns.
    filter: Arc<dyn PhysicalExpr>,
    schema: SchemaRef,
    /// The filter generation last seen and the test evaluated for it (`None`: every row).
    test: Mutex<(u64, Option<Arc<dyn PhysicalExpr>>)>,
    seen: AtomicUsize,
    kept: AtomicUsize,
    /// Set once the filter proved to keep most rows.
    off: AtomicBool,
}

impl JoinKeysIn {
    pub fn new(filter: Arc<dyn PhysicalExpr>, schema: SchemaRef) -> Self {
        Self {
            filter,
            schema,
            test: Mutex::new((0, None)),
            seen: AtomicUsize::new(0),
            kept: AtomicUsize::new(0),
            off: AtomicBool::new(false),
        }
    }

    /// The test for the filter's current generation.
    fn current_test(&self) -> Result<Option<Arc<dyn PhysicalExpr>>> {
        let generation = self.filter.snapshot_generation();
        let poisoned = |_| DataFusionError::Internal("join key filter lock poisoned".into());
        {
            let cached = self.test.lock().map_err(poisoned)?;
            if cached.0 == generation {
                return Ok(cached.1.clone());
            }
        }
        let current = self
            .filter
            .snapshot()?
            .unwrap_or_else(|| Arc::clone(&self.filter));
        let test = match membership(&current, &self.schema)? {
            Some(test) if matches!(test.data_type(&self.schema), Ok(DataType::Boolean)) => {
                Some(with_bitmaps(test, &self.schema)?)
            }
            _ => None,
        };
        *self.test.lock().map_err(poisoned)? = (generation, test.clone());
        Ok(test)
    }
}

/// `test` with its `IN` lists over integer keys as bitmaps where their values allow.
fn with_bitmaps(test: Arc<dyn PhysicalExpr>, schema: &Schema) -> Result<Arc<dyn PhysicalExpr>> {
    test.transform_up(|expr| {
        let Some(list) = expr.downcast_ref::<InListExpr>() else {
            return Ok(Transformed::no(expr));
        };
        Ok(match KeyBitmap::try_from_in_list(list, schema)? {
            Some(bitmap) => Transformed::yes(Arc::new(bitmap) as Arc<dyn PhysicalExpr>),
            None => Transformed::no(expr),
        })
    })
    .map(|t| t.data)
}

/// A cheap predicate true on every row `filter` is true on, or `None` when there is none.
fn membership(
    filter: &Arc<dyn PhysicalExpr>,
    schema: &Schema,
) -> Result<Option<Arc<dyn PhysicalExpr>>> {
    if let Some(literal) = filter.downcast_ref::<Literal>() {
        // An empty build side: no row can match.
        let none_match = matches!(literal.value(), ScalarValue::Boolean(Some(false)));
        return Ok(none_match.then(|| Arc::clone(filter)));
    }
    if let Some(list) = filter.downcast_ref::<InListExpr>() {
        return Ok((!list.negated()).then(|| Arc::clone(filter)));
    }
    if let Some(binary) = filter.downcast_ref::<BinaryExpr>() {
        return Ok(match binary.op() {
            // `bounds AND key IN (...)`: either side alone keeps a superset.
            Operator::And => match membership(binary.right(), schema)? {
                Some(right) => Some(right),
                None => membership(binary.left(), schema)?,
            },
            // `key IS NULL OR filter`, for joins that match NULL keys.
            Operator::Or if only_null_checks(binary.left()) => membership(binary.right(), schema)?
                .map(|right| {
                    Arc::new(BinaryExpr::new(
                        Arc::clone(binary.left()),
                        Operator::Or,
                        right,
                    )) as Arc<dyn PhysicalExpr>
                }),
            _ => None,
        });
    }
    if let Some(case) = filter.downcast_ref::<CaseExpr>() {
        return merged_partitions(case, schema);
    }
    Ok(None)
}

/// `k IS NULL`, or several of them OR-ed.
fn only_null_checks(expr: &Arc<dyn PhysicalExpr>) -> bool {
    if expr.downcast_ref::<IsNullExpr>().is_some() {
        return true;
    }
    expr.downcast_ref::<BinaryExpr>().is_some_and(|b| {
        *b.op() == Operator::Or && only_null_checks(b.left()) && only_null_checks(b.right())
    })
}

/// One `IN` list of every branch's keys for `CASE partition(key) WHEN i THEN key IN (...)
/// ... ELSE false END`: a row the CASE keeps is in its branch's list, so in the union.
fn merged_partitions(case: &CaseExpr, schema: &Schema) -> Result<Option<Arc<dyn PhysicalExpr>>> {
    let else_false = case.else_expr().is_none_or(|e| {
        e.downcast_ref::<Literal>()
            .is_some_and(|l| matches!(l.value(), ScalarValue::Boolean(Some(false) | None)))
    });
    if !else_false {
        return Ok(None);
    }
    let mut key: Option<&Arc<dyn PhysicalExpr>> = None;
    let mut values = vec![];
    let mut lists = vec![];
    for (_, then) in case.when_then_expr() {
        let Some(branch) = membership(then, schema)? else {
            return Ok(None);
        };
        lists.push(branch);
    }
    for branch in &lists {
        if branch.downcast_ref::<Literal>().is_some() {
            continue; // an empty partition
        }
        let Some(list) = branch.downcast_ref::<InListExpr>() else {
            return Ok(None);
        };
        match key {
            Some(k) if k != list.expr() => return Ok(None),
            _ => key = Some(list.expr()),
        }
        for item in list.list() {
            let Some(value) = item.downcast_ref::<Literal>() else {
                return Ok(None);
            };
            values.push(value.value().clone());
        }
    }
    let Some(key) = key.filter(|_| !values.is_empty()) else {
        return Ok(Some(lit(false)));
    };
    let array = ScalarValue::iter_to_array(values)?;
    Ok(Some(Arc::new(InListExpr::try_new_from_array(
        Arc::clone(key),
        array,
        false,
        schema,
    )?)))
}

impl PhysicalExpr for JoinKeysIn {
    fn data_type(&self, _input_schema: &Schema) -> Result<DataType> {
        Ok(DataType::Boolean)
    }

    fn nullable(&self, _input_schema: &Schema) -> Result<bool> {
        Ok(true)
    }

    fn evaluate(&self, batch: &RecordBatch) -> Result<ColumnarValue> {
        let every_row = Ok(ColumnarValue::Scalar(ScalarValue::Boolean(Some(true))));
        if self.off.load(Ordering::Relaxed) {
            return every_row;
        }
        let Some(test) = self.current_test()? else {
            return every_row;
        };
        let rows = batch.num_rows();
        let mask = test.evaluate(batch)?.into_array(rows)?;
        let kept = mask
            .as_boolean_opt()
            .map(|m| m.true_count())
            .ok_or_else(|| {
                DataFusionError::Internal(format!(
                    "join key filter returned {}, not booleans",
                    mask.data_type()
                ))
            })?;
        let seen = self.seen.fetch_add(rows, Ordering::Relaxed) + rows;
        let kept = self.kept.fetch_add(kept, Ordering::Relaxed) + kept;
        if seen >= SAMPLE_ROWS && kept as f64 > KEEP_AT_MOST * seen as f64 {
            self.off.store(true, Ordering::Relaxed);
        }
        Ok(ColumnarValue::Array(mask))
    }

    fn children(&self) -> Vec<&Arc<dyn PhysicalExpr>> {
        vec![&self.filter]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn PhysicalExpr>>,
    ) -> Result<Arc<dyn PhysicalExpr>> {
        match <[_; 1]>::try_from(children) {
            Ok([filter]) => Ok(Arc::new(Self::new(filter, Arc::clone(&self.schema)))),
            Err(children) => Err(DataFusionError::Internal(format!(
                "JoinKeysIn takes 1 child, got {}",
                children.len()
            ))),
        }
    }

    fn fmt_sql(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.filter.fmt_sql(f)
    }
}

impl fmt::Display for JoinKeysIn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "join_keys_in({})", self.filter)
    }
}

impl PartialEq for JoinKeysIn {
    fn eq(&self, other: &Self) -> bool {
        self.filter.eq(&other.filter)
    }
}

impl Eq for JoinKeysIn {}

impl Hash for JoinKeysIn {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.filter.hash(state);
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::util::pretty::pretty_format_batches;
    use datafusion::execution::SessionStateBuilder;
    use datafusion::physical_optimizer::optimizer::PhysicalOptimizer;
    use datafusion::physical_plan::collect;
    use datafusion::prelude::{SessionConfig, SessionContext};

    use super::*;

    /// `probe`: 200,000 rows, `k` 0-999, `nk` like `k` but NULL on every 97th row, `k2` 0-6,
    /// `s` a string key; `dim`: keys 0-999 and one row whose `nk` is NULL.
    async fn write_tables(dir: &std::path::Path) {
        let ctx = SessionContext::new();
        for (name, sql) in [
            (
                "probe",
                "SELECT value AS id, value % 1000 AS k,
                   CASE WHEN value % 97 = 0 THEN NULL ELSE value % 1000 END AS nk,
                   value % 7 AS k2, 's' || CAST(value % 1000 AS VARCHAR) AS s
                 FROM generate_series(1, 200000)",
            ),
            (
                "dim",
                "SELECT value AS k, CASE WHEN value = 999 THEN NULL ELSE value END AS nk,
                   value % 7 AS k2, 's' || CAST(value AS VARCHAR) AS s, 'd' || CAST(value AS VARCHAR) AS name
                 FROM generate_series(0, 999)",
            ),
        ] {
            let path = dir.join(format!("{name}.parquet"));
            let copy = format!("COPY ({sql}) TO '{}' STORED AS PARQUET", path.display());
            ctx.sql(&copy).await.unwrap().collect().await.unwrap();
        }
    }

    async fn session(dir: &std::path::Path, filtered: bool, partitioned: bool) -> SessionContext {
        let mut rules = PhysicalOptimizer::new().rules;
        if filtered {
            rules.push(Arc::new(SmallJoinFilters));
        }
        let mut config = SessionConfig::new().with_target_partitions(4);
        if partitioned {
            config = config
                .set_usize(
                    "datafusion.optimizer.hash_join_single_partition_threshold",
                    0,
                )
                .set_usize(
                    "datafusion.optimizer.hash_join_single_partition_threshold_rows",
                    0,
                );
        }
        let state = SessionStateBuilder::new()
            .with_config(config)
            .with_default_features()
            .with_physical_optimizer_rules(rules)
            .build();
        let ctx = SessionContext::new_with_state(state);
        for name in ["probe", "dim"] {
            let path = dir.join(format!("{name}.parquet"));
            let sql = format!(
                "CREATE EXTERNAL TABLE {name} STORED AS PARQUET LOCATION '{}'",
                path.display()
            );
            ctx.sql(&sql).await.unwrap().collect().await.unwrap();
        }
        ctx
    }

    /// The plan's filters that the rule added, after it ran.
    fn join_filters(plan: &Arc<dyn ExecutionPlan>, out: &mut Vec<Arc<dyn ExecutionPlan>>) {
        if let Some(filter) = plan.downcast_ref::<FilterExec>()
            && filter.predicate().downcast_ref::<JoinKeysIn>().is_some()
        {
            out.push(Arc::clone(plan));
        }
        for child in plan.children() {
            join_filters(child, out);
        }
    }

    /// Plans and runs the query: the executed plan (with its metrics) and the sorted rows.
    async fn execute(ctx: &SessionContext, sql: &str) -> (Arc<dyn ExecutionPlan>, String) {
        let plan = ctx
            .sql(sql)
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        let batches = collect(Arc::clone(&plan), ctx.task_ctx()).await.unwrap();
        let text = pretty_format_batches(&batches).unwrap().to_string();
        let mut lines: Vec<_> = text.lines().map(str::to_string).collect();
        lines.sort();
        (plan, lines.join("\n"))
    }

    /// The query's sorted rows, and the rows each added filter let through.
    async fn run(ctx: &SessionContext, sql: &str) -> (String, Vec<usize>) {
        let (plan, rows) = execute(ctx, sql).await;
        let mut filters = vec![];
        join_filters(&plan, &mut filters);
        let passed = filters
            .iter()
            .map(|f| {
                f.metrics()
                    .and_then(|m| m.output_rows())
                    .unwrap_or(usize::MAX)
            })
            .collect();
        (rows, passed)
    }

    #[tokio::test]
    async fn results_match_datafusion_for_every_join_kind() {
        let dir = tempfile::tempdir().unwrap();
        write_tables(dir.path()).await;
        let ten_keys = "d.k % 100 = 3";
        let queries = [
            format!("SELECT p.id, d.name FROM probe p JOIN dim d ON p.k = d.k WHERE {ten_keys}"),
            format!("SELECT p.id, d.name FROM probe p JOIN dim d ON p.k = d.k AND p.k2 = d.k2 WHERE {ten_keys}"),
            format!("SELECT p.id, d.name FROM probe p JOIN dim d ON p.s = d.s WHERE {ten_keys}"),
            format!("SELECT p.id, d.name FROM dim d LEFT JOIN probe p ON p.k = d.k WHERE {ten_keys}"),
            format!("SELECT p.id, d.name FROM probe p LEFT JOIN (SELECT * FROM dim d WHERE {ten_keys}) d ON p.k = d.k WHERE p.id < 3000"),
            format!("SELECT p.id, d.name FROM probe p RIGHT JOIN (SELECT * FROM dim d WHERE {ten_keys}) d ON p.k = d.k"),
            format!("SELECT p.id, d.name FROM (SELECT * FROM probe WHERE id < 5000) p FULL JOIN (SELECT * FROM dim d WHERE {ten_keys}) d ON p.k = d.k"),
            format!("SELECT count(*), sum(id) FROM probe WHERE k IN (SELECT k FROM dim d WHERE {ten_keys})"),
            format!("SELECT count(*), sum(id) FROM probe p WHERE NOT EXISTS (SELECT 1 FROM dim d WHERE d.k = p.k AND {ten_keys})"),
            format!("SELECT count(*), sum(id) FROM probe WHERE nk NOT IN (SELECT nk FROM dim d WHERE {ten_keys})"),
            "SELECT count(*), sum(id) FROM probe WHERE nk NOT IN (SELECT nk FROM dim d WHERE d.k > 990)".into(),
            "SELECT count(*), sum(p.id) FROM probe p JOIN dim d ON p.nk IS NOT DISTINCT FROM d.nk WHERE d.k > 990".into(),
            "SELECT count(*) FROM probe p JOIN dim d ON p.k = d.k WHERE d.k < 0".into(),
            "SELECT count(*), sum(p.id) FROM probe p JOIN dim d ON p.k2 = d.k2 WHERE d.k < 7".into(),
        ];
        for partitioned in [false, true] {
            let plain = session(dir.path(), false, partitioned).await;
            let filtered = session(dir.path(), true, partitioned).await;
            for sql in &queries {
                let (expected, _) = run(&plain, sql).await;
                let (actual, _) = run(&filtered, sql).await;
                assert_eq!(actual, expected, "partitioned: {partitioned}\n{sql}");
            }
        }
    }

    #[tokio::test]
    async fn probe_scans_pass_only_the_rows_with_build_side_keys() {
        let dir = tempfile::tempdir().unwrap();
        write_tables(dir.path()).await;
        for partitioned in [false, true] {
            let ctx = session(dir.path(), true, partitioned).await;
            // Ten keys of 1,000: 2,000 of the 200,000 probe rows. The condition on `p.id` keeps
            // every row but is work between the scan and the join.
            let (rows, passed) = run(
                &ctx,
                "SELECT count(*) FROM probe p JOIN dim d ON p.k = d.k
                 WHERE d.k % 100 = 3 AND p.id % 3 <> 5",
            )
            .await;
            assert!(rows.contains("| 2000     |"), "{rows}");
            assert_eq!(passed, vec![2000], "partitioned: {partitioned}");
            // A scan feeding the join's probe directly is filtered only when the rows are
            // repartitioned on the way. (A condition on `d.k` would be copied to `p.k`, and
            // that filter is work on the way.)
            let (rows, passed) = run(
                &ctx,
                "SELECT count(*) FROM probe p JOIN dim d ON p.k = d.k
                 WHERE d.name LIKE 'd_03' OR d.name = 'd3'",
            )
            .await;
            assert!(rows.contains("| 2000     |"), "{rows}");
            let expected: &[usize] = if partitioned { &[2000] } else { &[] };
            assert_eq!(passed, expected, "partitioned: {partitioned}");
            // No build row: nothing passes.
            let (_, passed) = run(
                &ctx,
                "SELECT count(*) FROM probe p JOIN dim d ON p.k = d.k WHERE d.k < 0 AND p.id % 3 <> 5",
            )
            .await;
            assert_eq!(passed, vec![0], "partitioned: {partitioned}");
        }
    }

    #[tokio::test]
    async fn a_filter_keeping_most_rows_stops_filtering() {
        let dir = tempfile::tempdir().unwrap();
        write_tables(dir.path()).await;
        let ctx = session(dir.path(), true, false).await;
        // All seven `k2` values are build keys: every probe row passes.
        let sql = "SELECT count(*) FROM probe p JOIN dim d ON p.k2 = d.k2 WHERE d.k < 7 AND p.id % 3 <> 5";
        let (plan, _) = execute(&ctx, sql).await;
        let mut filters = vec![];
        join_filters(&plan, &mut filters);
        assert_eq!(filters.len(), 1);
        let filter = filters[0].downcast_ref::<FilterExec>().unwrap();
        let keys_in = filter.predicate().downcast_ref::<JoinKeysIn>().unwrap();
        assert!(keys_in.off.load(Ordering::Relaxed));
        assert!(keys_in.seen.load(Ordering::Relaxed) < 200_000);
        assert_eq!(filters[0].metrics().unwrap().output_rows(), Some(200_000));
    }

    #[tokio::test]
    async fn recursive_queries_and_pushed_down_filters_are_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        write_tables(dir.path()).await;
        let ctx = session(dir.path(), true, false).await;
        let recursive = "WITH RECURSIVE r(k, n) AS (SELECT k, 0 FROM dim WHERE k < 3
            UNION ALL SELECT p.k2, r.n + 1 FROM r JOIN probe p ON p.k = r.k WHERE r.n < 2)
            SELECT count(*) FROM r";
        let plain = session(dir.path(), false, false).await;
        let (expected, _) = run(&plain, recursive).await;
        let (actual, passed) = run(&ctx, recursive).await;
        assert_eq!(actual, expected);
        assert!(passed.is_empty());
        ctx.sql("SET datafusion.execution.parquet.pushdown_filters = true")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let (_, passed) = run(
            &ctx,
            "SELECT count(*) FROM probe p JOIN dim d ON p.k = d.k WHERE d.k < 3",
        )
        .await;
        assert!(passed.is_empty());
    }
}
