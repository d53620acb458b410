//! `string_agg` held to the per-value limit: each group's string is counted as it grows (its
//! values and delimiters), and a group that would pass the limit fails the query with
//! `ResourcesExhausted` before the string is built. The memory pool already sees the
//! accumulators' total size; this bounds one value, which the pool cannot split.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray};
use datafusion::arrow::datatypes::{DataType, FieldRef};
use datafusion::common::{DataFusionError, Result, ScalarValue};
use datafusion::logical_expr::expr::{AggregateFunction, AggregateFunctionParams};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Documentation, EmitTo, GroupsAccumulator,
    ReversedUDAF, Signature,
};
use datafusion::physical_expr::expressions::Literal;

use super::lengths;

/// Aggregates whose one value grows with their input.
const BOUNDED: &[&str] = &["string_agg"];

/// Replace the session's growing aggregates by bounded ones.
pub(super) fn register(ctx: &datafusion::prelude::SessionContext, max_value: u64) {
    let state = ctx.state();
    for name in BOUNDED {
        if let Some(inner) = state.aggregate_functions().get(*name) {
            ctx.register_udaf(AggregateUDF::new_from_impl(BoundedAggregate {
                inner: Arc::clone(inner),
                max_value,
            }));
        }
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct BoundedAggregate {
    inner: Arc<AggregateUDF>,
    max_value: u64,
}

impl BoundedAggregate {
    fn exhausted(name: &str, max_value: u64) -> DataFusionError {
        DataFusionError::ResourcesExhausted(format!(
            "{name}() would build a value over {max_value} bytes; one value may hold at most \
             {max_value} bytes (a sixteenth of the memory limit, at most 256 MiB)"
        ))
    }
}

/// Bytes of the delimiter (`string_agg`'s second argument) when it is a literal.
fn delimiter_bytes(args: &AccumulatorArgs<'_>) -> u64 {
    args.exprs
        .get(1)
        .and_then(|e| e.downcast_ref::<Literal>())
        .and_then(|l| match l.value() {
            ScalarValue::Utf8(Some(s))
            | ScalarValue::LargeUtf8(Some(s))
            | ScalarValue::Utf8View(Some(s)) => Some(s.len() as u64),
            _ => None,
        })
        .unwrap_or(0)
}

impl AggregateUDFImpl for BoundedAggregate {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }
    fn schema_name(&self, params: &AggregateFunctionParams) -> Result<String> {
        self.inner.inner().schema_name(params)
    }
    fn display_name(&self, params: &AggregateFunctionParams) -> Result<String> {
        self.inner.inner().display_name(params)
    }
    fn human_display(&self, params: &AggregateFunctionParams) -> Result<String> {
        self.inner.inner().human_display(params)
    }
    fn signature(&self) -> &Signature {
        self.inner.signature()
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }
    fn return_field(&self, arg_fields: &[FieldRef]) -> Result<FieldRef> {
        self.inner.return_field(arg_fields)
    }
    fn is_nullable(&self) -> bool {
        self.inner.is_nullable()
    }
    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }
    fn state_fields(&self, args: StateFieldsArgs<'_>) -> Result<Vec<FieldRef>> {
        self.inner.state_fields(args)
    }
    fn accumulator(&self, args: AccumulatorArgs<'_>) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(BoundedAccumulator {
            inner: self.inner.accumulator(args)?,
            name: self.inner.name().to_string(),
            max_value: self.max_value,
        }))
    }
    fn create_sliding_accumulator(
        &self,
        args: AccumulatorArgs<'_>,
    ) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(BoundedAccumulator {
            inner: self.inner.create_sliding_accumulator(args)?,
            name: self.inner.name().to_string(),
            max_value: self.max_value,
        }))
    }
    fn groups_accumulator_supported(&self, args: AccumulatorArgs<'_>) -> bool {
        self.inner.groups_accumulator_supported(args)
    }
    fn create_groups_accumulator(
        &self,
        args: AccumulatorArgs<'_>,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        let delimiter = delimiter_bytes(&args);
        Ok(Box::new(BoundedGroups {
            inner: self.inner.create_groups_accumulator(args)?,
            name: self.inner.name().to_string(),
            max_value: self.max_value,
            delimiter,
            bytes: Vec::new(),
        }))
    }
    fn reverse_expr(&self) -> ReversedUDAF {
        match self.inner.reverse_udf() {
            ReversedUDAF::Reversed(udf) => {
                ReversedUDAF::Reversed(Arc::new(AggregateUDF::new_from_impl(BoundedAggregate {
                    inner: udf,
                    max_value: self.max_value,
                })))
            }
            other => other,
        }
    }
    fn order_sensitivity(&self) -> datafusion::logical_expr::utils::AggregateOrderSensitivity {
        self.inner.inner().order_sensitivity()
    }
    fn simplify(
        &self,
    ) -> Option<datafusion::logical_expr::function::AggregateFunctionSimplification> {
        self.inner.simplify()
    }
    fn simplify_expr_op_literal(
        &self,
        agg_function: &AggregateFunction,
        arg: &datafusion::logical_expr::Expr,
        op: datafusion::logical_expr::Operator,
        lit: &datafusion::logical_expr::Expr,
        arg_is_left: bool,
    ) -> Result<Option<datafusion::logical_expr::Expr>> {
        self.inner
            .inner()
            .simplify_expr_op_literal(agg_function, arg, op, lit, arg_is_left)
    }
    fn default_value(&self, data_type: &DataType) -> Result<ScalarValue> {
        self.inner.default_value(data_type)
    }
    fn supports_null_handling_clause(&self) -> bool {
        self.inner.inner().supports_null_handling_clause()
    }
    fn supports_within_group_clause(&self) -> bool {
        self.inner.inner().supports_within_group_clause()
    }
    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }
}

/// One value's accumulator: its size is the value it builds (and what it keeps to build it).
#[derive(Debug)]
struct BoundedAccumulator {
    inner: Box<dyn Accumulator>,
    name: String,
    max_value: u64,
}

impl BoundedAccumulator {
    fn check(&self) -> Result<()> {
        if self.inner.size() as u64 > self.max_value {
            return Err(BoundedAggregate::exhausted(&self.name, self.max_value));
        }
        Ok(())
    }
}

impl Accumulator for BoundedAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        self.inner.update_batch(values)?;
        self.check()
    }
    fn evaluate(&mut self) -> Result<ScalarValue> {
        self.inner.evaluate()
    }
    fn size(&self) -> usize {
        self.inner.size()
    }
    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        self.inner.state()
    }
    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        self.inner.merge_batch(states)?;
        self.check()
    }
    fn retract_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        self.inner.retract_batch(values)
    }
    fn supports_retract_batch(&self) -> bool {
        self.inner.supports_retract_batch()
    }
}

/// Many groups' accumulator: each group's bytes are added up before the group grows.
struct BoundedGroups {
    inner: Box<dyn GroupsAccumulator>,
    name: String,
    max_value: u64,
    delimiter: u64,
    /// Bytes of each group's value so far.
    bytes: Vec<u64>,
}

impl BoundedGroups {
    fn count(
        &mut self,
        values: &ArrayRef,
        group_indices: &[usize],
        filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.bytes.resize(total_num_groups, 0);
        let Some(lens) = lengths(&datafusion::logical_expr::ColumnarValue::Array(Arc::clone(
            values,
        )))?
        else {
            return Ok(());
        };
        for (row, &group) in group_indices.iter().enumerate() {
            if lens.is_null(row) || filter.is_some_and(|f| !f.is_valid(row) || !f.value(row)) {
                continue;
            }
            let slot = &mut self.bytes[group];
            let separator = if *slot > 0 { self.delimiter } else { 0 };
            *slot = slot
                .saturating_add(lens.value(row).max(0) as u64)
                .saturating_add(separator);
            if *slot > self.max_value {
                return Err(BoundedAggregate::exhausted(&self.name, self.max_value));
            }
        }
        Ok(())
    }
}

impl std::fmt::Debug for BoundedGroups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoundedGroups")
            .field("name", &self.name)
            .field("max_value", &self.max_value)
            .finish()
    }
}

impl GroupsAccumulator for BoundedGroups {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        if let Some(v) = values.first() {
            self.count(v, group_indices, opt_filter, total_num_groups)?;
        }
        self.inner
            .update_batch(values, group_indices, opt_filter, total_num_groups)
    }
    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        self.take(emit_to);
        self.inner.evaluate(emit_to)
    }
    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        self.take(emit_to);
        self.inner.state(emit_to)
    }
    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        if let Some(v) = values.first() {
            self.count(v, group_indices, None, total_num_groups)?;
        }
        self.inner
            .merge_batch(values, group_indices, total_num_groups)
    }
    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        self.inner.convert_to_state(values, opt_filter)
    }
    fn size(&self) -> usize {
        self.inner.size() + self.bytes.capacity() * size_of::<u64>()
    }
}

impl BoundedGroups {
    fn take(&mut self, emit_to: EmitTo) {
        let _ = emit_to.take_needed(&mut self.bytes);
    }
}
