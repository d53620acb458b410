//! Decimal arithmetic without a check per value when a batch cannot overflow.
//!
//! arrow-rs evaluates `+`, `-` and `*` on `Decimal128` one value at a time with checked `i128`
//! operations, so that an overflow fails instead of wrapping. The checks keep the loop from
//! being vectorized: over TPC-H `lineitem`, `sum(l_extendedprice * (1 - l_discount) * (1 +
//! l_tax))` took twice as long as the three plain sums, and most of Q01's time went there.
//!
//! This physical optimizer rule replaces those operations, in projections and in the
//! arguments of aggregates, with [`ExactDecimalBinary`]. For each batch it computes the
//! results with wrapping operations and, in the same pass, the operands' largest absolute
//! values. When those bound every result within an `i128`, nothing wrapped and the results
//! stand; otherwise they are dropped and the batch goes through the same arrow kernel as
//! before, with the same results and the same overflow errors. Result types (precision and scale) follow arrow's rules exactly, and the
//! expression displays as the `BinaryExpr` it replaces, so `EXPLAIN` output does not change.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Decimal128Array, RecordBatch};
use datafusion::arrow::buffer::{NullBuffer, ScalarBuffer};
use datafusion::arrow::compute::kernels::numeric::{add, mul, sub};
use datafusion::arrow::datatypes::{DECIMAL128_MAX_PRECISION, DECIMAL128_MAX_SCALE, DataType};
use datafusion::arrow::datatypes::{FieldRef, Schema};
use datafusion::common::ScalarValue;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::error::Result;
use datafusion::logical_expr::interval_arithmetic::Interval;
use datafusion::logical_expr::sort_properties::ExprProperties;
use datafusion::logical_expr::{ColumnarValue, Operator};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_expr::expressions::BinaryExpr;
use datafusion::physical_expr_common::datum::apply;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::aggregates::AggregateExec;
use datafusion::physical_plan::projection::{ProjectionExec, ProjectionExpr};

/// Replaces checked `Decimal128` `+`, `-` and `*` in projections and aggregate arguments with
/// [`ExactDecimalBinary`].
#[derive(Debug, Default)]
pub struct ExactDecimalArithmetic;

impl PhysicalOptimizerRule for ExactDecimalArithmetic {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            if let Some(projection) = node.downcast_ref::<ProjectionExec>() {
                return rewrite_projection(projection, &node);
            }
            if let Some(aggregate) = node.downcast_ref::<AggregateExec>() {
                return rewrite_aggregate(aggregate, &node);
            }
            Ok(Transformed::no(node))
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "exact_decimal_arithmetic"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

fn rewrite_projection(
    projection: &ProjectionExec,
    node: &Arc<dyn ExecutionPlan>,
) -> Result<Transformed<Arc<dyn ExecutionPlan>>> {
    let input_schema = projection.input().schema();
    let mut changed = false;
    let mut exprs = Vec::with_capacity(projection.expr().len());
    for item in projection.expr() {
        let new = replace(&item.expr, &input_schema)?;
        changed |= new.transformed;
        exprs.push(ProjectionExpr {
            expr: new.data,
            alias: item.alias.clone(),
        });
    }
    if !changed {
        return Ok(Transformed::no(Arc::clone(node)));
    }
    let schema = projection.schema();
    let plan = ProjectionExec::try_new_with_schema_metadata(
        exprs,
        Arc::clone(projection.input()),
        &schema,
    )?;
    Ok(Transformed::yes(Arc::new(plan)))
}

fn rewrite_aggregate(
    aggregate: &AggregateExec,
    node: &Arc<dyn ExecutionPlan>,
) -> Result<Transformed<Arc<dyn ExecutionPlan>>> {
    let input_schema = aggregate.input_schema();
    let mut changed = false;
    let mut aggr_exprs: Vec<Arc<AggregateFunctionExpr>> = Vec::new();
    for expr in aggregate.aggr_expr() {
        let mut args = Vec::new();
        let mut any = false;
        for arg in expr.expressions() {
            let new = replace(&arg, &input_schema)?;
            any |= new.transformed;
            args.push(new.data);
        }
        let rewritten = if any {
            let order_bys = expr
                .order_bys()
                .iter()
                .map(|sort| Arc::clone(&sort.expr))
                .collect();
            expr.with_new_expressions(args, order_bys).map(Arc::new)
        } else {
            None
        };
        changed |= rewritten.is_some();
        aggr_exprs.push(rewritten.unwrap_or_else(|| Arc::clone(expr)));
    }
    if !changed {
        return Ok(Transformed::no(Arc::clone(node)));
    }
    Ok(Transformed::yes(Arc::new(
        aggregate.with_new_aggr_exprs(aggr_exprs),
    )))
}

/// `expr` with every checked `Decimal128` `+`, `-` and `*` replaced.
fn replace(
    expr: &Arc<dyn PhysicalExpr>,
    schema: &Schema,
) -> Result<Transformed<Arc<dyn PhysicalExpr>>> {
    Arc::clone(expr).transform_up(|e| {
        let Some(binary) = e.downcast_ref::<BinaryExpr>() else {
            return Ok(Transformed::no(e));
        };
        if !matches!(
            binary.op(),
            Operator::Plus | Operator::Minus | Operator::Multiply
        ) {
            return Ok(Transformed::no(e));
        }
        let decimal = |side: &Arc<dyn PhysicalExpr>| {
            matches!(side.data_type(schema), Ok(DataType::Decimal128(_, _)))
        };
        if !(decimal(binary.left()) && decimal(binary.right())) {
            return Ok(Transformed::no(e));
        }
        Ok(Transformed::yes(Arc::new(ExactDecimalBinary::new(
            Arc::clone(binary.left()),
            *binary.op(),
            Arc::clone(binary.right()),
        ))))
    })
}

/// `left op right` over two `Decimal128` operands (`op` one of `+`, `-`, `*`), unchecked for
/// each batch whose operands bound every result within `i128`, and by arrow's checked kernel
/// otherwise.
#[derive(Debug, Clone)]
pub struct ExactDecimalBinary {
    /// The same operation as DataFusion's expression, for types, bounds and ordering.
    inner: BinaryExpr,
}

impl ExactDecimalBinary {
    /// `left op right`.
    pub fn new(left: Arc<dyn PhysicalExpr>, op: Operator, right: Arc<dyn PhysicalExpr>) -> Self {
        Self {
            inner: BinaryExpr::new(left, op, right),
        }
    }

    /// The left operand.
    pub fn left(&self) -> &Arc<dyn PhysicalExpr> {
        self.inner.left()
    }

    /// The operator.
    pub fn op(&self) -> Operator {
        *self.inner.op()
    }

    /// The right operand.
    pub fn right(&self) -> &Arc<dyn PhysicalExpr> {
        self.inner.right()
    }

    /// This expression as DataFusion's own, with any replaced operands restored too: what it
    /// displays as.
    fn plain(&self) -> BinaryExpr {
        let restore = |side: &Arc<dyn PhysicalExpr>| {
            Arc::clone(side)
                .transform_up(|e| {
                    Ok(match e.downcast_ref::<ExactDecimalBinary>() {
                        Some(exact) => Transformed::yes(Arc::new(BinaryExpr::new(
                            Arc::clone(exact.left()),
                            exact.op(),
                            Arc::clone(exact.right()),
                        ))
                            as Arc<dyn PhysicalExpr>),
                        None => Transformed::no(e),
                    })
                })
                .map(|t| t.data)
                .unwrap_or_else(|_| Arc::clone(side))
        };
        BinaryExpr::new(restore(self.left()), self.op(), restore(self.right()))
    }
}

impl PartialEq for ExactDecimalBinary {
    fn eq(&self, other: &Self) -> bool {
        self.op() == other.op() && self.left().eq(other.left()) && self.right().eq(other.right())
    }
}

impl Eq for ExactDecimalBinary {}

impl Hash for ExactDecimalBinary {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.left().hash(state);
        self.op().hash(state);
        self.right().hash(state);
    }
}

impl fmt::Display for ExactDecimalBinary {
    /// `exact(a * b)`: `EXPLAIN` shows the arithmetic that skips per-value checks when a batch
    /// cannot overflow.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "exact({})", self.plain())
    }
}

impl PhysicalExpr for ExactDecimalBinary {
    fn data_type(&self, input_schema: &Schema) -> Result<DataType> {
        self.inner.data_type(input_schema)
    }

    fn nullable(&self, input_schema: &Schema) -> Result<bool> {
        self.inner.nullable(input_schema)
    }

    fn return_field(&self, input_schema: &Schema) -> Result<FieldRef> {
        self.inner.return_field(input_schema)
    }

    fn evaluate(&self, batch: &RecordBatch) -> Result<ColumnarValue> {
        let lhs = self.left().evaluate(batch)?;
        let rhs = self.right().evaluate(batch)?;
        if let Some(array) = unchecked(self.op(), &lhs, &rhs)? {
            return Ok(ColumnarValue::Array(array));
        }
        match self.op() {
            Operator::Plus => apply(&lhs, &rhs, add),
            Operator::Minus => apply(&lhs, &rhs, sub),
            _ => apply(&lhs, &rhs, mul),
        }
    }

    fn children(&self) -> Vec<&Arc<dyn PhysicalExpr>> {
        vec![self.left(), self.right()]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn PhysicalExpr>>,
    ) -> Result<Arc<dyn PhysicalExpr>> {
        let [left, right] = <[_; 2]>::try_from(children).map_err(|children| {
            datafusion::error::DataFusionError::Internal(format!(
                "ExactDecimalBinary takes 2 children, got {}",
                children.len()
            ))
        })?;
        Ok(Arc::new(Self::new(left, self.op(), right)))
    }

    fn evaluate_bounds(&self, children: &[&Interval]) -> Result<Interval> {
        self.inner.evaluate_bounds(children)
    }

    fn propagate_constraints(
        &self,
        interval: &Interval,
        children: &[&Interval],
    ) -> Result<Option<Vec<Interval>>> {
        self.inner.propagate_constraints(interval, children)
    }

    fn get_properties(&self, children: &[ExprProperties]) -> Result<ExprProperties> {
        self.inner.get_properties(children)
    }

    fn fmt_sql(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.plain().fmt_sql(f)
    }
}

/// One operand: a column of a batch, or a non-null literal.
enum Operand<'a> {
    Array(&'a Decimal128Array),
    Scalar(i128),
}

/// Precision and scale of an operand, and the operand, when it is a `Decimal128` array or a
/// non-null `Decimal128` literal.
fn operand(value: &ColumnarValue) -> Option<(u8, i8, Operand<'_>)> {
    match value {
        ColumnarValue::Array(array) => match array.data_type() {
            DataType::Decimal128(p, s) => Some((*p, *s, Operand::Array(array.as_primitive_opt()?))),
            _ => None,
        },
        ColumnarValue::Scalar(ScalarValue::Decimal128(Some(v), p, s)) => {
            Some((*p, *s, Operand::Scalar(*v)))
        }
        ColumnarValue::Scalar(_) => None,
    }
}

/// `lhs op rhs` computed without per-value checks, when both are `Decimal128` (at least one an
/// array) and the operands' largest absolute values show no result can overflow an `i128`.
/// `None` leaves the batch to arrow's checked kernel.
fn unchecked(op: Operator, lhs: &ColumnarValue, rhs: &ColumnarValue) -> Result<Option<ArrayRef>> {
    let (Some((p1, s1, l)), Some((p2, s2, r))) = (operand(lhs), operand(rhs)) else {
        return Ok(None);
    };
    let limit = i128::MAX as u128;
    // Result precision, scale and the factors that bring both operands to that scale, as
    // arrow's decimal arithmetic computes them.
    let (precision, scale, l_mul, r_mul) = match op {
        Operator::Plus | Operator::Minus => {
            let scale = s1.max(s2);
            let precision = (scale.saturating_add((p1 as i8 - s1).max(p2 as i8 - s2)) as u8)
                .saturating_add(1)
                .min(DECIMAL128_MAX_PRECISION);
            let (Some(l_mul), Some(r_mul)) = (pow10(scale - s1), pow10(scale - s2)) else {
                return Ok(None);
            };
            (precision, scale, l_mul, r_mul)
        }
        Operator::Multiply => {
            let scale = s1.saturating_add(s2);
            if scale > DECIMAL128_MAX_SCALE {
                // arrow reports this error.
                return Ok(None);
            }
            let precision = p1.saturating_add(p2 + 1).min(DECIMAL128_MAX_PRECISION);
            (precision, scale, 1, 1)
        }
        _ => return Ok(None),
    };
    // Whether operands no larger than these absolute values give results that fit.
    let fits = |bl: u128, br: u128| match op {
        Operator::Multiply => bl.checked_mul(br).is_some_and(|b| b <= limit),
        _ => bl
            .checked_mul(l_mul as u128)
            .zip(br.checked_mul(r_mul as u128))
            .and_then(|(a, b)| a.checked_add(b))
            .is_some_and(|b| b <= limit),
    };
    // The results are computed with wrapping operations in the same pass that finds the
    // operands' largest absolute values (over every slot: null slots are computed, then
    // masked), and kept only when those values show that nothing wrapped.
    let (values, nulls): (Vec<i128>, Option<NullBuffer>) = match (&l, &r) {
        (Operand::Array(a), Operand::Array(b)) => {
            if a.len() != b.len() {
                return Ok(None);
            }
            let (values, bl, br) = kernel(op, a.values(), b.values(), l_mul, r_mul);
            if !fits(bl, br) {
                return Ok(None);
            }
            (values, NullBuffer::union(a.nulls(), b.nulls()))
        }
        (Operand::Array(a), Operand::Scalar(b)) => {
            let br = b.unsigned_abs();
            if !fits(0, br) {
                return Ok(None);
            }
            let (values, bl) = scalar_kernel(op, a.values(), *b, true, l_mul, r_mul);
            if !fits(bl, br) {
                return Ok(None);
            }
            (values, a.nulls().cloned())
        }
        (Operand::Scalar(a), Operand::Array(b)) => {
            let bl = a.unsigned_abs();
            if !fits(bl, 0) {
                return Ok(None);
            }
            let (values, br) = scalar_kernel(op, b.values(), *a, false, l_mul, r_mul);
            if !fits(bl, br) {
                return Ok(None);
            }
            (values, b.nulls().cloned())
        }
        (Operand::Scalar(_), Operand::Scalar(_)) => return Ok(None),
    };
    let array = Decimal128Array::new(ScalarBuffer::from(values), nulls)
        .with_precision_and_scale(precision, scale)?;
    Ok(Some(Arc::new(array)))
}

/// Element-wise `a op b` (wrapping) over two equally long slices, and the largest absolute
/// value of each, in one pass; one loop per operator so each compiles to straight-line code.
fn kernel(
    op: Operator,
    a: &[i128],
    b: &[i128],
    l_mul: i128,
    r_mul: i128,
) -> (Vec<i128>, u128, u128) {
    match (op, l_mul, r_mul) {
        (Operator::Plus, 1, 1) => zip_map(a, b, |x, y| x.wrapping_add(y)),
        (Operator::Minus, 1, 1) => zip_map(a, b, |x, y| x.wrapping_sub(y)),
        (Operator::Plus, _, _) => zip_map(a, b, |x, y| {
            x.wrapping_mul(l_mul).wrapping_add(y.wrapping_mul(r_mul))
        }),
        (Operator::Minus, _, _) => zip_map(a, b, |x, y| {
            x.wrapping_mul(l_mul).wrapping_sub(y.wrapping_mul(r_mul))
        }),
        _ => zip_map(a, b, |x, y| x.wrapping_mul(y)),
    }
}

fn zip_map(a: &[i128], b: &[i128], f: impl Fn(i128, i128) -> i128) -> (Vec<i128>, u128, u128) {
    let (mut max_a, mut max_b) = (0u128, 0u128);
    let values = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| {
            max_a = max_a.max(x.unsigned_abs());
            max_b = max_b.max(y.unsigned_abs());
            f(x, y)
        })
        .collect();
    (values, max_a, max_b)
}

/// Element-wise `array op scalar` (`scalar op array` when `array_left` is false), wrapping,
/// and the array's largest absolute value, in one pass.
fn scalar_kernel(
    op: Operator,
    array: &[i128],
    scalar: i128,
    array_left: bool,
    l_mul: i128,
    r_mul: i128,
) -> (Vec<i128>, u128) {
    // The scalar side's factor is applied once; the array side's in the loop.
    let (array_mul, scalar) = if array_left {
        (l_mul, scalar.wrapping_mul(r_mul))
    } else {
        (r_mul, scalar.wrapping_mul(l_mul))
    };
    match (op, array_left, array_mul) {
        (Operator::Plus, _, 1) => map_one(array, |x| x.wrapping_add(scalar)),
        (Operator::Plus, _, m) => map_one(array, |x| x.wrapping_mul(m).wrapping_add(scalar)),
        (Operator::Minus, true, 1) => map_one(array, |x| x.wrapping_sub(scalar)),
        (Operator::Minus, true, m) => map_one(array, |x| x.wrapping_mul(m).wrapping_sub(scalar)),
        (Operator::Minus, false, 1) => map_one(array, |y| scalar.wrapping_sub(y)),
        (Operator::Minus, false, m) => map_one(array, |y| scalar.wrapping_sub(y.wrapping_mul(m))),
        _ => map_one(array, |x| x.wrapping_mul(scalar)),
    }
}

fn map_one(array: &[i128], f: impl Fn(i128) -> i128) -> (Vec<i128>, u128) {
    let mut max = 0u128;
    let values = array
        .iter()
        .map(|&x| {
            max = max.max(x.unsigned_abs());
            f(x)
        })
        .collect();
    (values, max)
}

/// 10^exp as an `i128`, when it is one.
fn pow10(exp: i8) -> Option<i128> {
    u32::try_from(exp).ok().and_then(|e| 10i128.checked_pow(e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::Field;
    use datafusion::physical_expr::expressions::{Column, Literal};
    use datafusion::prelude::SessionContext;

    /// A batch of three decimal columns: `a` DECIMAL(15,2), `b` DECIMAL(15,2) and `c`
    /// DECIMAL(10,4), with negative values and nulls.
    fn batch(a: Vec<Option<i128>>, b: Vec<Option<i128>>, c: Vec<Option<i128>>) -> RecordBatch {
        let column = |values: Vec<Option<i128>>, p: u8, s: i8| -> ArrayRef {
            Arc::new(
                Decimal128Array::from(values)
                    .with_precision_and_scale(p, s)
                    .expect("precision"),
            )
        };
        let schema = Schema::new(vec![
            Field::new("a", DataType::Decimal128(15, 2), true),
            Field::new("b", DataType::Decimal128(15, 2), true),
            Field::new("c", DataType::Decimal128(10, 4), true),
        ]);
        RecordBatch::try_new(
            Arc::new(schema),
            vec![column(a, 15, 2), column(b, 15, 2), column(c, 10, 4)],
        )
        .expect("batch")
    }

    fn col(name: &str, index: usize) -> Arc<dyn PhysicalExpr> {
        Arc::new(Column::new(name, index))
    }

    fn lit(v: i128, p: u8, s: i8) -> Arc<dyn PhysicalExpr> {
        Arc::new(Literal::new(ScalarValue::Decimal128(Some(v), p, s)))
    }

    /// The result of `left op right` as arrow's checked kernels give it, and as the replacement
    /// gives it (type, values, validity), or both errors as text.
    fn both(
        batch: &RecordBatch,
        left: Arc<dyn PhysicalExpr>,
        op: Operator,
        right: Arc<dyn PhysicalExpr>,
    ) -> (Result<ArrayRef, String>, Result<ArrayRef, String>) {
        let run = |expr: &dyn PhysicalExpr| {
            expr.evaluate(batch)
                .and_then(|v| v.into_array(batch.num_rows()))
                .map_err(|e| e.to_string())
        };
        let plain = BinaryExpr::new(Arc::clone(&left), op, Arc::clone(&right));
        let exact = ExactDecimalBinary::new(left, op, right);
        (run(&plain), run(&exact))
    }

    /// Valid values only: arrow leaves null slots zero, the unchecked path computes them.
    fn valid(result: Result<ArrayRef, String>) -> Result<(DataType, Vec<Option<i128>>), String> {
        result.map(|array| {
            let values = array.as_primitive::<datafusion::arrow::datatypes::Decimal128Type>();
            (array.data_type().clone(), values.iter().collect())
        })
    }

    #[test]
    fn results_equal_the_checked_kernels() {
        let batch = batch(
            vec![Some(12345), Some(-99999), None, Some(0), Some(1), Some(-7)],
            vec![Some(5), Some(-10), Some(3), None, Some(99999999), Some(-7)],
            vec![
                Some(10000),
                Some(-5),
                Some(123456789),
                Some(1),
                None,
                Some(-9999),
            ],
        );
        let ops = [Operator::Plus, Operator::Minus, Operator::Multiply];
        let pairs: Vec<(Arc<dyn PhysicalExpr>, Arc<dyn PhysicalExpr>)> = vec![
            (col("a", 0), col("b", 1)),
            (col("a", 0), col("c", 2)),
            (col("c", 2), col("a", 0)),
            (lit(100, 3, 2), col("b", 1)),
            (col("c", 2), lit(-250, 5, 3)),
            // Scalars of a smaller scale than the column, on either side.
            (lit(7, 2, 0), col("c", 2)),
            (col("a", 0), lit(-3, 2, 0)),
            (lit(7, 2, 0), lit(3, 2, 1)),
        ];
        for op in ops {
            for (left, right) in &pairs {
                let (plain, exact) = both(&batch, Arc::clone(left), op, Arc::clone(right));
                assert!(plain.is_ok(), "{left} {op} {right}: {plain:?}");
                assert_eq!(valid(plain), valid(exact), "{left} {op} {right}");
            }
        }
    }

    #[test]
    fn nested_expressions_evaluate_as_before_and_display_marked() {
        // l_extendedprice * (1 - l_discount) * (1 + l_tax), as TPC-H Q01 has it.
        let batch = batch(
            vec![Some(9_000_000), Some(-1), None],
            vec![Some(5), Some(10), Some(0)],
            vec![Some(800), Some(0), Some(100)],
        );
        let one = || lit(1, 1, 0);
        let build = |wrap: bool| -> Arc<dyn PhysicalExpr> {
            let node = |l, op, r| -> Arc<dyn PhysicalExpr> {
                if wrap {
                    Arc::new(ExactDecimalBinary::new(l, op, r))
                } else {
                    Arc::new(BinaryExpr::new(l, op, r))
                }
            };
            let discounted = node(
                col("a", 0),
                Operator::Multiply,
                node(one(), Operator::Minus, col("b", 1)),
            );
            node(
                discounted,
                Operator::Multiply,
                node(one(), Operator::Plus, col("c", 2)),
            )
        };
        let (plain, exact) = (build(false), build(true));
        // The same expression, marked where it skips the checks.
        let bare = |s: String| s.replace("exact", "").replace(['(', ')', ' '], "");
        assert!(exact.to_string().starts_with("exact("), "{exact}");
        assert_eq!(bare(plain.to_string()), bare(exact.to_string()));
        let run = |e: &Arc<dyn PhysicalExpr>| {
            valid(
                e.evaluate(&batch)
                    .and_then(|v| v.into_array(batch.num_rows()))
                    .map_err(|e| e.to_string()),
            )
        };
        assert_eq!(run(&plain), run(&exact));
        assert!(run(&exact).is_ok());
    }

    #[test]
    fn overflow_fails_as_before() {
        let big = |v: i128| -> ArrayRef {
            Arc::new(
                Decimal128Array::from(vec![Some(1), Some(v)])
                    .with_precision_and_scale(38, 0)
                    .expect("precision"),
            )
        };
        let schema = Schema::new(vec![
            Field::new("x", DataType::Decimal128(38, 0), true),
            Field::new("y", DataType::Decimal128(38, 0), true),
        ]);
        let near_max = 10i128.pow(37) * 9;
        let batch = RecordBatch::try_new(Arc::new(schema), vec![big(near_max), big(near_max)])
            .expect("batch");
        for op in [Operator::Plus, Operator::Multiply] {
            let (plain, exact) = both(&batch, col("x", 0), op, col("y", 1));
            assert!(plain.is_err(), "{op} should overflow");
            assert_eq!(plain.err(), exact.err());
        }
        // The same with a literal on either side.
        let near_max_lit = || lit(near_max, 38, 0);
        for op in [Operator::Plus, Operator::Multiply] {
            for (left, right) in [(col("x", 0), near_max_lit()), (near_max_lit(), col("y", 1))] {
                let (plain, exact) = both(&batch, left, op, right);
                assert!(plain.is_err(), "{op} should overflow");
                assert_eq!(plain.err(), exact.err());
            }
        }
        // A bound that does not fit, but values that do not overflow: the checked kernel runs
        // and succeeds.
        let (plain, exact) = both(&batch, col("x", 0), Operator::Minus, col("y", 1));
        assert_eq!(valid(plain), valid(exact));
        let (plain, exact) = both(&batch, near_max_lit(), Operator::Minus, col("y", 1));
        assert_eq!(valid(plain), valid(exact));
    }

    #[tokio::test]
    async fn the_rule_replaces_decimal_arithmetic_in_plans() {
        let ctx = SessionContext::new();
        ctx.sql(
            "CREATE TABLE t (g INT, p DECIMAL(15,2), d DECIMAL(15,2), n BIGINT) AS VALUES \
             (1, 100.50, 0.05, 1), (1, -20.25, 0.10, 2), (2, NULL, 0.00, 3), (2, 7.00, NULL, 4)",
        )
        .await
        .expect("create t");
        let sql = "SELECT g, sum(p * (1 - d)) AS s, sum(n * 2) AS m, min(p + d) AS lo \
                   FROM t GROUP BY g ORDER BY g";
        let plan = ctx
            .sql(sql)
            .await
            .expect("plan")
            .create_physical_plan()
            .await
            .expect("physical plan");
        let before = datafusion::physical_plan::collect(Arc::clone(&plan), ctx.task_ctx())
            .await
            .expect("run");
        let rewritten = ExactDecimalArithmetic
            .optimize(Arc::clone(&plan), &ConfigOptions::default())
            .expect("rule");
        let mut replaced = 0;
        rewritten
            .apply(|node| {
                if let Some(agg) = node.downcast_ref::<AggregateExec>() {
                    for expr in agg.aggr_expr() {
                        for arg in expr.expressions() {
                            arg.apply(|e| {
                                replaced +=
                                    usize::from(e.downcast_ref::<ExactDecimalBinary>().is_some());
                                Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
                            })
                            .expect("walk");
                        }
                    }
                }
                Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
            })
            .expect("walk");
        // p * (1 - d) is two operations, p + d one, in the partial aggregate and in the final one
        // (which reads the partial states but keeps the expressions); n * 2 is not decimal.
        assert_eq!(
            replaced,
            6,
            "{}",
            datafusion::physical_plan::displayable(rewritten.as_ref()).indent(true)
        );
        assert_eq!(
            datafusion::physical_plan::displayable(plan.as_ref())
                .indent(true)
                .to_string(),
            datafusion::physical_plan::displayable(rewritten.as_ref())
                .indent(true)
                .to_string()
        );
        let after = datafusion::physical_plan::collect(rewritten, ctx.task_ctx())
            .await
            .expect("run");
        let text = |b: &[RecordBatch]| {
            datafusion::arrow::util::pretty::pretty_format_batches(b)
                .expect("format")
                .to_string()
        };
        assert_eq!(text(&before), text(&after));
        assert!(text(&after).contains("77.2500"), "{}", text(&after));
    }
}
