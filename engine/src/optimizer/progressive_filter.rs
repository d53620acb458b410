//! Filters evaluate each conjunct of their `AND` chain only on the rows the conjuncts before
//! it kept.
//!
//! DataFusion 55 evaluates a filter's `a AND b AND c` as `(a AND b) AND c`. At each `AND` whose
//! left side keeps at most a fifth of the batch, it copies the kept rows of *every* column of
//! the batch, evaluates the right side on them, and scatters that result back to the batch's
//! length, appending value by value from one sliced array per run of kept rows. TPC-H Q06's
//! five conjuncts copied the batch three times and scattered three times per batch:
//! `pre_selection_scatter` alone took 10% of the query's CPU samples.
//!
//! This physical optimizer rule gives every `FilterExec` whose predicate has two or more
//! conjuncts a [`ProgressiveAnd`] predicate. The first conjunct runs on the batch. Once the
//! rows kept so far are at most half of the rows in hand, those rows of the columns the later
//! conjuncts read are copied, once, and the later conjuncts run on them. At the end, the kept
//! rows' numbers set the bits of one mask.
//!
//! No conjunct sees a row DataFusion would not have shown it, so none can fail where it did
//! not fail before. DataFusion evaluates a conjunct on every row once the conjuncts before it
//! keep more than a fifth of the batch, and on the kept rows otherwise; this one never keeps a
//! row the earlier conjuncts dropped once the kept rows are a fifth of the batch or fewer.
//!
//! A filter drops rows whose predicate is NULL just as it drops false ones, so the mask says
//! false for both: the expression is only a filter's predicate, never a value. It displays as
//! the predicate it replaces, so `EXPLAIN` does not change.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use datafusion::arrow::buffer::{BooleanBuffer, MutableBuffer};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::{DataType, Schema};
use datafusion::arrow::util::bit_util;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::ColumnarValue;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::utils::collect_columns;
use datafusion::physical_expr::{PhysicalExpr, conjunction, split_conjunction};
use datafusion::physical_expr_common::physical_expr::is_volatile;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::filter::{FilterExec, FilterExecBuilder};

/// Gives filters with two or more conjuncts a [`ProgressiveAnd`] predicate.
#[derive(Debug, Default)]
pub struct ProgressiveFilters;

impl PhysicalOptimizerRule for ProgressiveFilters {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let Some(filter) = node.downcast_ref::<FilterExec>() else {
                return Ok(Transformed::no(node));
            };
            let input_schema = filter.input().schema();
            let Some(predicate) = ProgressiveAnd::try_new(filter.predicate(), &input_schema)?
            else {
                return Ok(Transformed::no(node));
            };
            let rebuilt = FilterExecBuilder::from(filter)
                .with_predicate(Arc::new(predicate))
                .build()?;
            Ok(Transformed::yes(Arc::new(rebuilt) as Arc<dyn ExecutionPlan>))
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "progressive_filters"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// A filter predicate `c1 AND c2 AND ...` whose conjuncts after the first run only on the rows
/// the ones before them kept; NULL counts as false.
#[derive(Debug)]
pub struct ProgressiveAnd {
    /// The conjuncts over the filter's input, in order: the children, and what it displays as.
    conjuncts: Vec<Arc<dyn PhysicalExpr>>,
    /// The conjuncts after the first, over the columns in `later_columns` only.
    later: Vec<Arc<dyn PhysicalExpr>>,
    /// The input columns the conjuncts after the first read, ascending.
    later_columns: Vec<usize>,
}

/// Kept rows at most this share of the rows in hand are copied before the next conjunct.
const COPY_AT_MOST: f64 = 0.5;
/// Kept rows at most this share of the batch are always copied: past it, DataFusion evaluates
/// the next conjunct on every row too, so evaluating it on dropped rows fails nowhere new.
const DATAFUSION_PRE_SELECTION: f64 = 0.2;

impl ProgressiveAnd {
    /// The progressive form of `predicate` over `schema`, or `None` when it has fewer than two
    /// conjuncts, a volatile one, or later conjuncts that read no column.
    pub fn try_new(predicate: &Arc<dyn PhysicalExpr>, schema: &Schema) -> Result<Option<Self>> {
        let conjuncts: Vec<_> = split_conjunction(predicate)
            .into_iter()
            .map(Arc::clone)
            .collect();
        if conjuncts.len() < 2 || conjuncts.iter().any(is_volatile) {
            return Ok(None);
        }
        for c in &conjuncts {
            if c.data_type(schema)? != DataType::Boolean {
                return Ok(None);
            }
        }
        Self::from_conjuncts(conjuncts)
    }

    fn from_conjuncts(conjuncts: Vec<Arc<dyn PhysicalExpr>>) -> Result<Option<Self>> {
        let mut later_columns: Vec<usize> = conjuncts[1..]
            .iter()
            .flat_map(collect_columns)
            .map(|c| c.index())
            .collect();
        later_columns.sort_unstable();
        later_columns.dedup();
        if later_columns.is_empty() {
            return Ok(None);
        }
        let later = conjuncts[1..]
            .iter()
            .map(|c| {
                Arc::clone(c)
                    .transform_up(|e| match e.downcast_ref::<Column>() {
                        Some(col) => {
                            let at = later_columns.binary_search(&col.index()).map_err(|_| {
                                DataFusionError::Internal(format!("column {col} not collected"))
                            })?;
                            Ok(Transformed::yes(
                                Arc::new(Column::new(col.name(), at)) as Arc<dyn PhysicalExpr>
                            ))
                        }
                        None => Ok(Transformed::no(e)),
                    })
                    .map(|t| t.data)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(Self {
            conjuncts,
            later,
            later_columns,
        }))
    }

    /// The predicate as DataFusion's own `AND` chain.
    fn plain(&self) -> Arc<dyn PhysicalExpr> {
        conjunction(self.conjuncts.iter().map(Arc::clone))
    }
}

/// The rows of `value` that are true (NULL counts as false).
fn true_rows(value: ColumnarValue, rows: usize) -> Result<BooleanBuffer> {
    let array = value.into_array(rows)?;
    let mask = array.as_boolean_opt().ok_or_else(|| {
        DataFusionError::Internal(format!(
            "filter conjunct returned {}, not booleans",
            array.data_type()
        ))
    })?;
    Ok(match mask.nulls() {
        Some(nulls) => mask.values() & nulls.inner(),
        None => mask.values().clone(),
    })
}

impl PhysicalExpr for ProgressiveAnd {
    fn data_type(&self, _input_schema: &Schema) -> Result<DataType> {
        Ok(DataType::Boolean)
    }

    fn nullable(&self, _input_schema: &Schema) -> Result<bool> {
        Ok(false)
    }

    fn evaluate(&self, batch: &RecordBatch) -> Result<ColumnarValue> {
        let rows = batch.num_rows();
        let mut kept = true_rows(self.conjuncts[0].evaluate(batch)?, rows)?;
        // The later conjuncts' columns of the rows in hand, and those rows' numbers in the
        // batch once some were dropped.
        let mut in_hand = batch.project(&self.later_columns)?;
        let mut numbers: Option<Vec<u32>> = None;
        for conjunct in &self.later {
            let count = kept.count_set_bits();
            if count == 0 {
                return Ok(ColumnarValue::Array(Arc::new(BooleanArray::new(
                    BooleanBuffer::new_unset(rows),
                    None,
                ))));
            }
            let hand = in_hand.num_rows();
            if count < hand
                && (count as f64 <= COPY_AT_MOST * hand as f64
                    || count as f64 <= DATAFUSION_PRE_SELECTION * rows as f64)
            {
                in_hand = filter_record_batch(&in_hand, &BooleanArray::new(kept.clone(), None))?;
                numbers = Some(match numbers {
                    Some(n) => kept.set_indices().map(|i| n[i]).collect(),
                    None => kept.set_indices().map(|i| i as u32).collect(),
                });
                kept = BooleanBuffer::new_set(count);
            }
            let next = true_rows(conjunct.evaluate(&in_hand)?, in_hand.num_rows())?;
            kept = &kept & &next;
        }
        let mask = match numbers {
            None => kept,
            Some(numbers) => {
                let mut bits = MutableBuffer::from_len_zeroed(rows.div_ceil(8));
                for i in kept.set_indices() {
                    bit_util::set_bit(bits.as_slice_mut(), numbers[i] as usize);
                }
                BooleanBuffer::new(bits.into(), 0, rows)
            }
        };
        Ok(ColumnarValue::Array(Arc::new(BooleanArray::new(
            mask, None,
        ))))
    }

    fn children(&self) -> Vec<&Arc<dyn PhysicalExpr>> {
        self.conjuncts.iter().collect()
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn PhysicalExpr>>,
    ) -> Result<Arc<dyn PhysicalExpr>> {
        if children.len() != self.conjuncts.len() {
            return Err(DataFusionError::Internal(format!(
                "ProgressiveAnd takes {} children, got {}",
                self.conjuncts.len(),
                children.len()
            )));
        }
        Ok(match Self::from_conjuncts(children.clone())? {
            Some(progressive) => Arc::new(progressive),
            None => conjunction(children),
        })
    }

    fn fmt_sql(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.plain().fmt_sql(f)
    }
}

impl fmt::Display for ProgressiveAnd {
    /// `progressive(a AND b)`: `EXPLAIN` shows that each conjunct runs on the rows the ones
    /// before it kept.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "progressive({})", self.plain())
    }
}

impl PartialEq for ProgressiveAnd {
    fn eq(&self, other: &Self) -> bool {
        self.conjuncts == other.conjuncts
    }
}

impl Eq for ProgressiveAnd {}

impl Hash for ProgressiveAnd {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.conjuncts.hash(state);
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::util::pretty::pretty_format_batches;
    use datafusion::execution::SessionStateBuilder;
    use datafusion::physical_optimizer::optimizer::PhysicalOptimizer;
    use datafusion::physical_plan::displayable;
    use datafusion::prelude::SessionContext;

    use super::*;

    /// 20,000 rows over several batches: `a` 0-99, `b` NULL on every 7th row, `z` zero on
    /// nine rows in ten, `c` one of five strings.
    const TABLE: &str = "CREATE TABLE t AS SELECT value AS i, value % 100 AS a,
        CASE WHEN value % 7 = 0 THEN NULL ELSE value % 13 END AS b,
        CASE WHEN value % 10 = 0 THEN value ELSE 0 END AS z,
        'x' || CAST(value % 5 AS VARCHAR) AS c
        FROM generate_series(1, 20000)";

    async fn session(progressive: bool) -> SessionContext {
        let mut rules = PhysicalOptimizer::new().rules;
        if progressive {
            rules.push(Arc::new(ProgressiveFilters));
        }
        let state = SessionStateBuilder::new()
            .with_default_features()
            .with_physical_optimizer_rules(rules)
            .build();
        let ctx = SessionContext::new_with_state(state);
        ctx.sql(TABLE).await.unwrap().collect().await.unwrap();
        ctx
    }

    /// The query's rows, sorted, or its error.
    async fn rows(ctx: &SessionContext, sql: &str) -> std::result::Result<String, String> {
        let df = ctx.sql(sql).await.map_err(|e| e.to_string())?;
        let batches = df.collect().await.map_err(|e| e.to_string())?;
        let text = pretty_format_batches(&batches).unwrap().to_string();
        let mut lines: Vec<_> = text.lines().map(str::to_string).collect();
        lines.sort();
        Ok(lines.join("\n"))
    }

    async fn plan(ctx: &SessionContext, sql: &str) -> Arc<dyn ExecutionPlan> {
        ctx.sql(sql)
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap()
    }

    fn predicates(plan: &Arc<dyn ExecutionPlan>, out: &mut Vec<Arc<dyn PhysicalExpr>>) {
        if let Some(filter) = plan.downcast_ref::<FilterExec>() {
            out.push(Arc::clone(filter.predicate()));
        }
        for child in plan.children() {
            predicates(child, out);
        }
    }

    #[tokio::test]
    async fn results_and_plans_match_datafusion_at_every_selectivity() {
        let (plain, progressive) = (session(false).await, session(true).await);
        for predicate in [
            // Few rows kept by the first conjunct: copied at once.
            "a < 10 AND b > 3 AND c = 'x2'",
            // Most rows kept, then NULLs and strings.
            "a < 90 AND b IS NOT NULL AND i % 2 = 0 AND c <> 'x1'",
            // Nothing kept after the second conjunct.
            "a < 50 AND b > 100 AND c = 'x3'",
            // Every row kept by the first; NULLs dropped by the second.
            "a >= 0 AND b >= 0",
            // An OR inside, and a conjunct over two columns.
            "(a < 5 OR a > 95) AND b < a AND c IN ('x0', 'x4')",
        ] {
            let sql = format!("SELECT i, a, b, c FROM t WHERE {predicate}");
            assert_eq!(
                rows(&plain, &sql).await,
                rows(&progressive, &sql).await,
                "{predicate}"
            );
            let (before, after) = (plan(&plain, &sql).await, plan(&progressive, &sql).await);
            // EXPLAIN shows the same predicate, marked progressive.
            let bare = |s: String| s.replace("progressive", "").replace(['(', ')', ' '], "");
            let after_text = displayable(after.as_ref()).indent(true).to_string();
            assert!(after_text.contains("progressive("), "{after_text}");
            assert_eq!(
                bare(displayable(before.as_ref()).indent(true).to_string()),
                bare(after_text),
                "{predicate}"
            );
            let mut found = Vec::new();
            predicates(&after, &mut found);
            assert!(
                found
                    .iter()
                    .any(|p| p.downcast_ref::<ProgressiveAnd>().is_some()),
                "{predicate}: {found:?}"
            );
        }
    }

    #[tokio::test]
    async fn later_conjuncts_fail_exactly_where_datafusion_fails() {
        let (plain, progressive) = (session(false).await, session(true).await);
        // `z <> 0` keeps a tenth of the rows: DataFusion divides on those rows only, and so
        // does the progressive filter, so neither divides by zero.
        let guarded = "SELECT count(*) FROM t WHERE z <> 0 AND 100000 / z > 3 AND a < 50";
        let expected = rows(&plain, guarded).await;
        assert!(expected.is_ok(), "{expected:?}");
        assert_eq!(rows(&progressive, guarded).await, expected);
        // `a <> 0` keeps 99% of the rows: DataFusion divides every row by `z` and fails; the
        // progressive filter evaluates the division on the same rows and fails the same way.
        let unguarded = "SELECT count(*) FROM t WHERE a <> 0 AND 100000 / z > 3";
        let expected = rows(&plain, unguarded).await;
        assert!(
            expected
                .as_ref()
                .is_err_and(|e| e.contains("Divide by zero")),
            "{expected:?}"
        );
        assert_eq!(rows(&progressive, unguarded).await, expected);
    }

    #[tokio::test]
    async fn the_mask_is_false_where_any_conjunct_is_false_or_null() {
        let ctx = session(true).await;
        let sql = "SELECT * FROM t WHERE a < 30 AND b > 2 AND c <> 'x0'";
        let physical = plan(&ctx, sql).await;
        let mut found = Vec::new();
        predicates(&physical, &mut found);
        let predicate = found.pop().expect("a filter");
        assert!(predicate.downcast_ref::<ProgressiveAnd>().is_some());
        let batches = ctx
            .sql("SELECT * FROM t")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let mut checked = 0;
        for batch in &batches {
            let mask = predicate
                .evaluate(batch)
                .unwrap()
                .into_array(batch.num_rows())
                .unwrap();
            let mask = mask.as_boolean();
            assert_eq!(mask.null_count(), 0);
            let a = batch
                .column(1)
                .as_primitive::<datafusion::arrow::datatypes::Int64Type>();
            let b = batch
                .column(2)
                .as_primitive::<datafusion::arrow::datatypes::Int64Type>();
            let c = datafusion::arrow::compute::cast(batch.column(4), &DataType::Utf8).unwrap();
            let c = c.as_string::<i32>();
            for row in 0..batch.num_rows() {
                let expected = a.value(row) < 30
                    && b.is_valid(row)
                    && b.value(row) > 2
                    && c.value(row) != "x0";
                assert_eq!(mask.value(row), expected, "row {row}");
                checked += 1;
            }
        }
        assert_eq!(checked, 20_000);
    }
}
