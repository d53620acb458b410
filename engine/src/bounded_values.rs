//! Functions that build values larger than their inputs (`repeat`, `lpad`, `rpad`,
//! `array_repeat`) are bounded: before one runs, the size of what it would build is computed
//! from its arguments, and a value (or a batch of values) over the limit is refused with
//! `ResourcesExhausted` instead of being allocated outside the memory pool's sight.
//!
//! `SELECT length(repeat('x', 1500000000))` would otherwise allocate 1.5 GB per row whatever
//! `memory_limit` says (DataFusion's pool sees only operators' reservations, not the values
//! functions build). The same check runs when the planner folds constant calls.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, Int64Array};
use datafusion::arrow::compute::{cast, kernels::length::length};
use datafusion::arrow::datatypes::{DataType, FieldRef};
use datafusion::common::{DataFusionError, Result};
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
}

const BOUNDED: &[(&str, Growth)] = &[
    ("repeat", Growth::Repeat),
    ("lpad", Growth::Pad),
    ("rpad", Growth::Pad),
    ("array_repeat", Growth::ArrayRepeat),
];

/// Bytes an `array_repeat` element is counted at (at least).
const ELEMENT_BYTES: u64 = 8;

/// The largest value one call may build: a sixteenth of the memory limit, between 1 MiB and
/// 256 MiB.
pub fn max_value_bytes(memory_limit: u64) -> u64 {
    (memory_limit / 16).clamp(1 << 20, 256 << 20)
}

/// Replace the session's growing functions by bounded ones.
pub fn register(ctx: &SessionContext, max_value: u64) {
    let state = ctx.state();
    for (name, growth) in BOUNDED {
        if let Some(inner) = state.scalar_functions().get(*name) {
            ctx.register_udf(ScalarUDF::new_from_impl(Bounded {
                inner: inner.as_ref().clone(),
                growth: *growth,
                max_value,
            }));
        }
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Bounded {
    inner: ScalarUDF,
    growth: Growth,
    max_value: u64,
}

impl Bounded {
    /// Refuse the call when a value, or the batch's values together, would exceed the limit.
    fn check(&self, args: &ScalarFunctionArgs) -> Result<()> {
        let rows = args.number_rows.max(1);
        let Some(count) = args.args.get(1) else {
            return Ok(());
        };
        let counts = as_i64(count)?;
        let unit: Option<ArrayRef> = match self.growth {
            Growth::Repeat => match args.args.first() {
                Some(s) => Some(string_lengths(s)?),
                None => None,
            },
            Growth::Pad | Growth::ArrayRepeat => None,
        };
        let unit = unit.as_ref().map(|u| as_i64_array(u)).transpose()?;
        let mut total: u64 = 0;
        // A constant argument is one value standing for every row.
        let at = |a: &Int64Array, row: usize| if a.len() == 1 { 0 } else { row };
        let n_rows = counts.len().max(unit.as_ref().map_or(0, |u| u.len()));
        for row in 0..n_rows {
            let c = at(&counts, row);
            if c >= counts.len() || counts.is_null(c) {
                continue;
            }
            let n = counts.value(c).max(0) as u64;
            let bytes = match self.growth {
                Growth::Repeat => unit.as_ref().map_or(0, |u| {
                    let i = at(u, row);
                    if i >= u.len() || u.is_null(i) {
                        0
                    } else {
                        u.value(i).max(0) as u64
                    }
                }),
                Growth::Pad => 1,
                Growth::ArrayRepeat => ELEMENT_BYTES,
            }
            .saturating_mul(n);
            if bytes > self.max_value {
                return Err(self.exhausted(format!("a value of {bytes} bytes")));
            }
            total = total.saturating_add(bytes);
        }
        let total = if n_rows == 1 {
            total.saturating_mul(rows as u64)
        } else {
            total
        };
        if total > self.max_value.saturating_mul(4) {
            return Err(self.exhausted(format!("{total} bytes in one batch")));
        }
        Ok(())
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

fn as_i64(value: &ColumnarValue) -> Result<Int64Array> {
    let array = match value {
        ColumnarValue::Array(a) => Arc::clone(a),
        ColumnarValue::Scalar(s) => s.to_array_of_size(1)?,
    };
    let cast = cast(&array, &DataType::Int64)?;
    Ok(as_i64_array(&cast)?.clone())
}

fn as_i64_array(array: &ArrayRef) -> Result<&Int64Array> {
    array.as_any().downcast_ref::<Int64Array>().ok_or_else(|| {
        DataFusionError::Internal(format!("expected Int64 lengths, got {}", array.data_type()))
    })
}

/// Byte lengths of a string argument, as Int64.
fn string_lengths(value: &ColumnarValue) -> Result<ArrayRef> {
    let array = match value {
        ColumnarValue::Array(a) => Arc::clone(a),
        ColumnarValue::Scalar(s) => s.to_array_of_size(1)?,
    };
    let array = match array.data_type() {
        DataType::Utf8View | DataType::Dictionary(_, _) => cast(&array, &DataType::LargeUtf8)?,
        _ => array,
    };
    Ok(cast(&length(&array)?, &DataType::Int64)?)
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
        self.check(&args)?;
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
        for sql in [
            "SELECT length(repeat('x', 1500000000))",
            "SELECT lpad('x', 2147483647)",
            "SELECT rpad('x', 2000000, 'ab')",
            "SELECT array_repeat(1, 100000000)",
            "SELECT list_repeat(1, 100000000)",
            "SELECT length(repeat(s, 2000000)) FROM (VALUES ('a'), ('b')) t(s)",
            "SELECT length(repeat(arrow_cast('x', 'Utf8View'), 2000000))",
        ] {
            let err = run(&ctx, sql).await.expect_err(sql);
            assert!(
                matches!(err.find_root(), DataFusionError::ResourcesExhausted(_)),
                "{sql}: {err}"
            );
        }
        for sql in [
            "SELECT length(repeat('x', 1000))",
            "SELECT lpad('x', 10), rpad('x', 10, '-')",
            "SELECT array_repeat(1, 10)",
            "SELECT repeat(NULL, 5), repeat('x', NULL), repeat('x', -1)",
            "SELECT repeat(s, n) FROM (VALUES ('ab', 3), (NULL, 2)) t(s, n)",
        ] {
            run(&ctx, sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
    }
}
