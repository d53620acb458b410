//! Functions that build values larger than their inputs (`repeat`, `lpad`, `rpad`,
//! `array_repeat`, `concat`, `concat_ws`, `replace`, `regexp_replace`, `range` and
//! `generate_series` over integers, dates and timestamps) are bounded: before one runs, the
//! size of what it would build is computed from its arguments, and a value (or a batch of
//! values) over the per-value limit is refused with `ResourcesExhausted` instead of being
//! allocated outside the memory pool's sight. What passes is then reserved from the session's
//! memory pool while it is built, so a batch the query's pool cannot hold is refused too.
//! The `||` operator ([`concat_op`]) and `string_agg` ([`aggregate`]) are held to the same
//! per-value limit.
//!
//! `SELECT length(repeat('x', 1500000000))` would otherwise allocate 1.5 GB per row whatever
//! `memory_limit` says (DataFusion's pool sees only operators' reservations, not the values
//! functions build). The same check runs when the planner folds constant calls.

mod aggregate;
mod concat_op;

pub use concat_op::{STRING_CONCAT, as_operator};

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Int64Array};
use datafusion::arrow::compute::{cast, kernels::length::length};
use datafusion::arrow::datatypes::{DataType, FieldRef, IntervalMonthDayNanoType, TimeUnit};
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryPool, MemoryReservation};
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
};
use datafusion::prelude::SessionContext;

/// How a function's output size follows from its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Growth {
    /// `repeat(s, n)`: `len(s) * n` bytes.
    Repeat,
    /// `lpad(s, n [, fill])`, `rpad(...)`: `n` characters.
    Pad,
    /// `array_repeat(x, n)`: `n` elements.
    ArrayRepeat,
    /// `concat(a, b, ...)`: the arguments' lengths added up.
    Sum,
    /// `concat_ws(sep, a, b, ...)`: the arguments, and the separator between each two.
    SumWithSeparator,
    /// `replace(s, from, to)`: every occurrence of `from` (at most `len(s) / len(from)`)
    /// becomes `to`.
    Replace,
    /// `regexp_replace(s, pattern, to [, flags])`: at most `len(s) + 1` matches become `to`.
    RegexpReplace,
    /// `range(stop)`, `range(start, stop [, step])`, `generate_series(...)`: `(stop - start)
    /// / step` elements; on dates and timestamps, the span over the step's shortest length
    /// (a month counted as 28 days).
    Range,
}

const BOUNDED: &[(&str, Growth)] = &[
    ("repeat", Growth::Repeat),
    ("lpad", Growth::Pad),
    ("rpad", Growth::Pad),
    ("array_repeat", Growth::ArrayRepeat),
    ("concat", Growth::Sum),
    ("concat_ws", Growth::SumWithSeparator),
    ("replace", Growth::Replace),
    ("regexp_replace", Growth::RegexpReplace),
    ("range", Growth::Range),
    ("generate_series", Growth::Range),
];

/// Bytes a non-string argument of `concat` is counted at.
const OTHER_BYTES: u64 = 32;

/// Bytes an `array_repeat` or `range` element is counted at (at least).
const ELEMENT_BYTES: u64 = 8;

/// The largest value one call may build: a sixteenth of the memory limit, between 1 MiB and
/// 256 MiB.
pub fn max_value_bytes(memory_limit: u64) -> u64 {
    (memory_limit / 16).clamp(1 << 20, 256 << 20)
}

/// Replace the session's growing functions and aggregates by bounded ones, and register
/// `string_concat` (what [`bound_string_concat`] turns `||` into).
pub fn register(ctx: &SessionContext, max_value: u64) {
    let state = ctx.state();
    let pool = Arc::clone(&ctx.runtime_env().memory_pool);
    for (name, growth) in BOUNDED {
        if let Some(inner) = state.scalar_functions().get(*name) {
            ctx.register_udf(ScalarUDF::new_from_impl(Bounded {
                inner: inner.as_ref().clone(),
                growth: *growth,
                max_value,
                pool: Pool(Arc::clone(&pool)),
            }));
        }
    }
    aggregate::register(ctx, max_value);
    if let Some(concat) = ctx.state().scalar_functions().get("concat") {
        ctx.register_udf(ScalarUDF::new_from_impl(concat_op::StringConcat::new(
            concat.as_ref().clone(),
        )));
    }
}

/// Plan `||` on strings as the bounded `string_concat` (after [`register`]). Not for sessions
/// whose plans run on a cluster's executors, which know only DataFusion's own functions.
pub fn bound_string_concat(ctx: &SessionContext) {
    if let Some(udf) = ctx.state().scalar_functions().get(STRING_CONCAT) {
        ctx.add_analyzer_rule(Arc::new(concat_op::BoundedStringConcat {
            udf: Arc::clone(udf),
        }));
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Bounded {
    inner: ScalarUDF,
    growth: Growth,
    max_value: u64,
    pool: Pool,
}

/// The session's memory pool, which values are reserved from while they are built (one
/// pool per process: functions compare equal whatever pool they hold).
#[derive(Debug, Clone)]
struct Pool(Arc<dyn MemoryPool>);

impl PartialEq for Pool {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for Pool {}
impl std::hash::Hash for Pool {
    fn hash<H: std::hash::Hasher>(&self, _: &mut H) {}
}

impl Bounded {
    /// Refuse the call when a value, or the batch's values together, would exceed the limit;
    /// otherwise reserve what the batch will take from the memory pool.
    fn check(&self, args: &ScalarFunctionArgs) -> Result<MemoryReservation> {
        let rows = args.number_rows.max(1);
        let lens = args.args.iter().map(lengths).collect::<Result<Vec<_>>>()?;
        let ints = args.args.iter().map(integers).collect::<Result<Vec<_>>>()?;
        // Dates and timestamps are read in milliseconds, interval steps in nanoseconds.
        let temporal = args
            .args
            .first()
            .is_some_and(|a| a.data_type().is_temporal());
        let n_rows = lens
            .iter()
            .chain(ints.iter())
            .flatten()
            .map(|a| a.len())
            .max()
            .unwrap_or(1);
        let mut total: u64 = 0;
        for row in 0..n_rows {
            let len = |i: usize| {
                lens.get(i)
                    .and_then(|a| at(a.as_ref()?, row))
                    .map(|v| v.max(0) as u64)
            };
            let int = |i: usize| ints.get(i).and_then(|a| at(a.as_ref()?, row));
            let bytes = self.estimate(args.args.len(), temporal, &len, &int);
            if bytes > self.max_value {
                return Err(self.exhausted(format!("a value of {bytes} bytes")));
            }
            total = total.saturating_add(bytes);
        }
        // Constant arguments are one value standing for every row. A call on constants only is
        // folded into a literal while planning, and a literal is copied into every row of every
        // batch it is projected into: count it a whole batch of times.
        let copies = if args
            .args
            .iter()
            .all(|a| matches!(a, ColumnarValue::Scalar(_)))
        {
            rows.max(usize::from(args.config_options.execution.batch_size))
        } else if n_rows == 1 {
            rows
        } else {
            1
        };
        let total = total.saturating_mul(copies as u64);
        if total > self.max_value.saturating_mul(4) {
            return Err(self.exhausted(format!("{total} bytes in one batch")));
        }
        let reservation =
            MemoryConsumer::new(format!("{}()", self.inner.name())).register(&self.pool.0);
        reservation
            .try_grow(usize::try_from(total).unwrap_or(usize::MAX))
            .map_err(|e| {
                DataFusionError::ResourcesExhausted(format!(
                    "{}() would build {total} bytes, more than the query's memory pool has left: {}",
                    self.inner.name(),
                    e.find_root()
                ))
            })?;
        Ok(reservation)
    }

    /// Bytes one row's value would take, from its arguments' lengths and integer values.
    fn estimate(
        &self,
        args: usize,
        temporal: bool,
        len: &dyn Fn(usize) -> Option<u64>,
        int: &dyn Fn(usize) -> Option<i64>,
    ) -> u64 {
        let count = |i: usize| int(i).map_or(0, |n| n.max(0) as u64);
        match self.growth {
            Growth::Repeat => len(0).unwrap_or(0).saturating_mul(count(1)),
            Growth::Pad => count(1),
            Growth::ArrayRepeat => count(1).saturating_mul(ELEMENT_BYTES),
            Growth::Sum => (0..args).map(|i| len(i).unwrap_or(OTHER_BYTES)).sum(),
            Growth::SumWithSeparator => {
                let parts: u64 = (1..args).map(|i| len(i).unwrap_or(OTHER_BYTES)).sum();
                let separators =
                    (args.saturating_sub(2) as u64).saturating_mul(len(0).unwrap_or(0));
                parts.saturating_add(separators)
            }
            Growth::Replace => {
                let (s, from, to) = (
                    len(0).unwrap_or(0),
                    len(1).unwrap_or(0),
                    len(2).unwrap_or(0),
                );
                if to <= from {
                    s
                } else {
                    (s / from.max(1) + 1).saturating_mul(to).saturating_add(s)
                }
            }
            Growth::RegexpReplace => {
                let (s, to) = (len(0).unwrap_or(0), len(2).unwrap_or(0));
                (s + 1).saturating_mul(to).saturating_add(s)
            }
            Growth::Range => {
                let (start, stop, step) = match args {
                    1 => (Some(0), int(0), Some(1)),
                    2 => (int(0), int(1), Some(1)),
                    _ => (int(0), int(1), int(2)),
                };
                match (start, stop, step) {
                    (Some(a), Some(b), Some(step)) => {
                        let mut span = (i128::from(b) - i128::from(a)).unsigned_abs();
                        if temporal {
                            // Milliseconds over a step in nanoseconds.
                            span = span.saturating_mul(1_000_000);
                        }
                        let step = i128::from(step).unsigned_abs().max(1);
                        u64::try_from(span / step)
                            .unwrap_or(u64::MAX)
                            .saturating_mul(ELEMENT_BYTES)
                    }
                    _ => 0,
                }
            }
        }
    }

    fn exhausted(&self, what: String) -> DataFusionError {
        DataFusionError::ResourcesExhausted(format!(
            "{}() would build {what}; one value may hold at most {} bytes \
             (a sixteenth of the memory limit, at most 256 MiB)",
            self.inner.name(),
            self.max_value
        ))
    }
}

/// Row `row` of `a` (a one-value array stands for every row), when not null.
fn at(a: &Int64Array, row: usize) -> Option<i64> {
    let i = if a.len() == 1 { 0 } else { row };
    (i < a.len() && !a.is_null(i)).then(|| a.value(i))
}

fn to_array(value: &ColumnarValue) -> Result<ArrayRef> {
    Ok(match value {
        ColumnarValue::Array(a) => Arc::clone(a),
        ColumnarValue::Scalar(s) => s.to_array_of_size(1)?,
    })
}

/// Byte lengths of a string or binary argument; `None` for other types.
fn lengths(value: &ColumnarValue) -> Result<Option<Int64Array>> {
    let array = to_array(value)?;
    let array = match array.data_type() {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Binary | DataType::LargeBinary => array,
        DataType::Utf8View | DataType::BinaryView | DataType::Dictionary(_, _) => {
            match cast(&array, &DataType::LargeUtf8) {
                Ok(a) => a,
                Err(_) => return Ok(None),
            }
        }
        _ => return Ok(None),
    };
    let lengths = cast(&length(&array)?, &DataType::Int64)?;
    Ok(lengths.as_any().downcast_ref::<Int64Array>().cloned())
}

/// Values of an integer argument; a date or timestamp in milliseconds since the epoch; an
/// interval as its shortest length in nanoseconds (a month counted as 28 days); `None` for
/// other types.
fn integers(value: &ColumnarValue) -> Result<Option<Int64Array>> {
    let array = to_array(value)?;
    let data_type = array.data_type();
    if data_type.is_integer() {
        let values = cast(&array, &DataType::Int64)?;
        return Ok(values.as_any().downcast_ref::<Int64Array>().cloned());
    }
    if matches!(
        data_type,
        DataType::Date32 | DataType::Date64 | DataType::Timestamp(_, _)
    ) {
        // A value outside what milliseconds hold is left unestimated.
        let Ok(ms) = cast(&array, &DataType::Timestamp(TimeUnit::Millisecond, None)) else {
            return Ok(None);
        };
        let values = cast(&ms, &DataType::Int64)?;
        return Ok(values.as_any().downcast_ref::<Int64Array>().cloned());
    }
    if let DataType::Interval(_) = data_type {
        let Ok(mdn) = cast(
            &array,
            &DataType::Interval(datafusion::arrow::datatypes::IntervalUnit::MonthDayNano),
        ) else {
            return Ok(None);
        };
        const DAY: i128 = 86_400_000_000_000;
        let values = mdn.as_primitive::<IntervalMonthDayNanoType>();
        let nanos: Int64Array = values
            .iter()
            .map(|v| {
                v.map(|v| {
                    let n = i128::from(v.months) * 28 * DAY
                        + i128::from(v.days) * DAY
                        + i128::from(v.nanoseconds);
                    i64::try_from(n).unwrap_or(if n < 0 { i64::MIN } else { i64::MAX })
                })
            })
            .collect();
        return Ok(Some(nanos));
    }
    Ok(None)
}

impl ScalarUDFImpl for Bounded {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }
    fn signature(&self) -> &Signature {
        self.inner.signature()
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }
    fn return_field_from_args(&self, args: ReturnFieldArgs<'_>) -> Result<FieldRef> {
        self.inner.return_field_from_args(args)
    }
    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }
    fn documentation(&self) -> Option<&datafusion::logical_expr::Documentation> {
        self.inner.documentation()
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        // The reservation is held while the value is built, and released once it is handed on.
        let _reservation = self.check(&args)?;
        self.inner.invoke_with_args(args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn run(ctx: &SessionContext, sql: &str) -> Result<()> {
        ctx.sql(sql).await?.collect().await.map(|_| ())
    }

    #[tokio::test]
    async fn large_values_are_refused_small_ones_built() {
        let ctx = SessionContext::new();
        register(&ctx, 1 << 20);
        bound_string_concat(&ctx);
        for sql in [
            "SELECT length(repeat('x', 1500000000))",
            "SELECT lpad('x', 2147483647)",
            "SELECT rpad('x', 2000000, 'ab')",
            "SELECT array_repeat(1, 100000000)",
            "SELECT list_repeat(1, 100000000)",
            "SELECT length(repeat(s, 2000000)) FROM (VALUES ('a'), ('b')) t(s)",
            "SELECT length(repeat(arrow_cast('x', 'Utf8View'), 2000000))",
            // A constant a whole batch of rows would copy.
            "SELECT length(repeat('x', 1000)) FROM range(10)",
            "SELECT length(concat(repeat('x', 600000), repeat('y', 600000)))",
            "SELECT length(concat_ws(repeat(',', 300000), 'a', 'b', 'c', 'd', 'e'))",
            "SELECT length(replace(repeat('a', 1000), 'a', repeat('b', 2000)))",
            "SELECT length(regexp_replace(repeat('a', 1000), 'a', repeat('b', 2000), 'g'))",
            "SELECT cardinality(range(1000000000))",
            "SELECT cardinality(generate_series(1, 1000000000, 2))",
            // Dates and timestamps stepped by intervals.
            "SELECT cardinality(range(TIMESTAMP '1970-01-01', TIMESTAMP '2200-01-01', INTERVAL '1' SECOND))",
            "SELECT cardinality(range(DATE '0001-01-01', DATE '9999-12-31', INTERVAL '1' DAY))",
            "SELECT cardinality(generate_series(TIMESTAMP '2000-01-01', TIMESTAMP '2000-01-02', INTERVAL '1 millisecond'))",
            // `||` builds no more than concat may.
            "SELECT length(lpad(CAST(value AS VARCHAR), 600000, 'x') || lpad(CAST(value AS VARCHAR), 600000, 'y')) FROM range(1)",
            "SELECT length(s || s || s) FROM (SELECT lpad(CAST(value AS VARCHAR), 400000, 'x') AS s FROM range(1))",
            // string_agg, without and with groups, and ordered.
            "SELECT length(string_agg(lpad(CAST(value AS VARCHAR), 1000, 'x'), ',')) FROM range(2000)",
            "SELECT length(string_agg(lpad(CAST(value AS VARCHAR), 1000, 'x'), ',')) FROM range(4000) GROUP BY value % 2",
            "SELECT length(string_agg(lpad(CAST(value AS VARCHAR), 1000, 'x'), ',' ORDER BY value)) FROM range(2000)",
        ] {
            let err = run(&ctx, sql).await.expect_err(sql);
            assert!(
                matches!(err.find_root(), DataFusionError::ResourcesExhausted(_)),
                "{sql}: {err}"
            );
        }
        for sql in [
            "SELECT length(repeat('x', 100))",
            "SELECT lpad('x', 10), rpad('x', 10, '-')",
            "SELECT array_repeat(1, 10)",
            "SELECT repeat(NULL, 5), repeat('x', NULL), repeat('x', -1)",
            "SELECT repeat(s, n) FROM (VALUES ('ab', 3), (NULL, 2)) t(s, n)",
            "SELECT concat('a', 1, NULL, 'b'), concat_ws('-', 'a', 'b')",
            "SELECT replace('abc', 'b', 'xyz'), regexp_replace('abc', 'b', 'x')",
            "SELECT cardinality(range(10)), cardinality(generate_series(1, 10))",
            "SELECT cardinality(range(DATE '2024-01-01', DATE '2024-02-01', INTERVAL '1' DAY))",
            "SELECT cardinality(range(TIMESTAMP '2024-01-01 00:00:00', TIMESTAMP '2024-01-01 01:00:00', INTERVAL '1' MINUTE))",
            "SELECT string_agg(CAST(value AS VARCHAR), ',') FROM range(100) GROUP BY value % 3",
        ] {
            run(&ctx, sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
    }

    #[tokio::test]
    async fn string_concat_keeps_the_operators_meaning_and_names() {
        let ctx = SessionContext::new();
        register(&ctx, 1 << 20);
        bound_string_concat(&ctx);
        let batches = ctx
            .sql(
                "SELECT s || t, s || 'x' || t AS three, 'a' || 'b' AS lit \
                 FROM (VALUES ('a', 'b'), (NULL, 'c'), ('d', NULL)) v(s, t)",
            )
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let shown = datafusion::arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string();
        let expected = [
            "+------------+-------+-----+",
            "| v.s || v.t | three | lit |",
            "+------------+-------+-----+",
            "| ab         | axb   | ab  |",
            "|            |       | ab  |",
            "|            |       | ab  |",
            "+------------+-------+-----+",
        ]
        .join("\n");
        assert_eq!(shown, expected);
        // Views and other string types take the same path.
        let batches = ctx
            .sql("SELECT arrow_cast('a', 'Utf8View') || arrow_cast('b', 'Utf8View') AS v")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        assert_eq!(batches[0].column(0).data_type(), &DataType::Utf8View);
    }

    #[tokio::test]
    async fn a_value_the_pool_cannot_hold_is_refused() {
        use datafusion::execution::runtime_env::RuntimeEnvBuilder;
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_limit(2 << 20, 1.0)
            .build_arc()
            .unwrap();
        let ctx = SessionContext::new_with_config_rt(Default::default(), runtime);
        // A per-value limit above what the pool holds: the pool refuses first.
        register(&ctx, 64 << 20);
        let sql = "SELECT length(lpad(CAST(value AS VARCHAR), 3000000, 'x')) FROM range(1)";
        let err = run(&ctx, sql).await.expect_err(sql);
        assert!(err.to_string().contains("memory pool"), "{err}");
    }
}
