//! The `||` operator on strings, bounded like the functions. After type coercion, `a || b` on
//! two strings of one type becomes `string_concat(a, b)`: the operator's meaning (a null side
//! gives null) over the session's bounded `concat`, which checks the size of each value before
//! building it. Output names stay those of the original expressions.
//!
//! Without it, `x || x || x ...` over a large value builds one copy per term, whatever the
//! memory limit says. Database federation turns `string_concat` back into `||` before it
//! sends a subquery to a database (see the connectors' federation module).

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, make_array};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{DFSchema, Result, ScalarValue, plan_err};
use datafusion::logical_expr::expr_rewriter::NamePreserver;
use datafusion::logical_expr::utils::merge_schema;
use datafusion::logical_expr::{
    BinaryExpr, ColumnarValue, Expr, ExprSchemable, LogicalPlan, Operator, ReturnFieldArgs,
    ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::optimizer::AnalyzerRule;

/// The name `||` takes in plans (and in `EXPLAIN`).
pub const STRING_CONCAT: &str = "string_concat";

/// The analyzer rule; it runs after DataFusion's own (type coercion among them).
#[derive(Debug)]
pub(super) struct BoundedStringConcat {
    pub(super) udf: Arc<ScalarUDF>,
}

impl AnalyzerRule for BoundedStringConcat {
    fn name(&self) -> &str {
        "flowengine_bounded_string_concat"
    }

    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> Result<LogicalPlan> {
        plan.transform_up_with_subqueries(|plan| self.rewrite_node(plan))
            .map(|t| t.data)
    }
}

impl BoundedStringConcat {
    fn rewrite_node(&self, plan: LogicalPlan) -> Result<Transformed<LogicalPlan>> {
        let mut schema = merge_schema(&plan.inputs());
        if let LogicalPlan::TableScan(scan) = &plan {
            schema.merge(&DFSchema::try_from_qualified_schema(
                scan.table_name.clone(),
                &scan.source.schema(),
            )?);
        }
        let names = NamePreserver::new(&plan);
        let rewritten = plan.map_expressions(|expr| {
            let name = names.save(&expr);
            expr.transform_up(|e| self.rewrite_expr(e, &schema))
                .map(|t| t.update_data(|e| name.restore(e)))
        })?;
        if rewritten.transformed {
            rewritten.map_data(|plan| plan.recompute_schema())
        } else {
            Ok(rewritten)
        }
    }

    fn rewrite_expr(&self, expr: Expr, schema: &DFSchema) -> Result<Transformed<Expr>> {
        let Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::StringConcat,
            right,
        }) = expr
        else {
            return Ok(Transformed::no(expr));
        };
        // Strings of one type (what coercion leaves). Anything else stays as it was, as does
        // an expression whose types cannot be read here (an outer reference).
        let string = |e: &Expr| {
            e.get_type(schema)
                .ok()
                .filter(|t| matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View))
        };
        match (string(&left), string(&right)) {
            (Some(l), Some(r)) if l == r => {
                Ok(Transformed::yes(self.udf.call(vec![*left, *right])))
            }
            _ => Ok(Transformed::no(Expr::BinaryExpr(BinaryExpr {
                left,
                op: Operator::StringConcat,
                right,
            }))),
        }
    }
}

/// `string_concat(a, b)`: `a || b`, built by the session's bounded `concat`.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(super) struct StringConcat {
    signature: Signature,
    /// The session's (bounded) `concat`.
    concat: ScalarUDF,
}

impl StringConcat {
    pub(super) fn new(concat: ScalarUDF) -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
            concat,
        }
    }
}

impl ScalarUDFImpl for StringConcat {
    fn name(&self) -> &str {
        STRING_CONCAT
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        match arg_types {
            [a, b] if a == b => Ok(arg_types.to_vec()),
            _ => plan_err!("{STRING_CONCAT} takes two strings of one type, not {arg_types:?}"),
        }
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        Ok(arg_types[0].clone())
    }
    /// Null when either side may be null, as `||` is.
    fn return_field_from_args(&self, args: ReturnFieldArgs<'_>) -> Result<FieldRef> {
        let nullable = args.arg_fields.iter().any(|f| f.is_nullable());
        Ok(Arc::new(Field::new(
            STRING_CONCAT,
            args.arg_fields[0].data_type().clone(),
            nullable,
        )))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let return_type = args.return_field.data_type().clone();
        // A null side: null, without building anything.
        if args
            .args
            .iter()
            .any(|a| matches!(a, ColumnarValue::Scalar(s) if s.is_null()))
        {
            return Ok(ColumnarValue::Scalar(ScalarValue::try_from(&return_type)?));
        }
        let nulls: Vec<Option<NullBuffer>> = args
            .args
            .iter()
            .map(|a| match a {
                ColumnarValue::Array(a) => a.logical_nulls(),
                ColumnarValue::Scalar(_) => None,
            })
            .collect();
        let built = self.concat.invoke_with_args(args)?;
        let union = NullBuffer::union(nulls[0].as_ref(), nulls[1].as_ref());
        match (built, union) {
            (ColumnarValue::Array(a), Some(union)) => {
                Ok(ColumnarValue::Array(with_nulls(&a, union)?))
            }
            (built, _) => Ok(built),
        }
    }
}

/// `array` with `nulls` as its null mask.
fn with_nulls(array: &ArrayRef, nulls: NullBuffer) -> Result<ArrayRef> {
    let data = array.to_data().into_builder().nulls(Some(nulls)).build()?;
    Ok(make_array(data))
}

/// `expr` with every `string_concat(a, b)` turned back into `a || b` (for SQL sent to a
/// database, which knows the operator and not the function).
pub fn as_operator(expr: Expr) -> Result<Transformed<Expr>> {
    expr.transform_up(|e| match e {
        Expr::ScalarFunction(f) if f.name() == STRING_CONCAT && f.args.len() == 2 => {
            let mut args = f.args;
            let right = args
                .pop()
                .unwrap_or_else(|| Expr::Literal(ScalarValue::Null, None));
            let left = args
                .pop()
                .unwrap_or_else(|| Expr::Literal(ScalarValue::Null, None));
            Ok(Transformed::yes(Expr::BinaryExpr(BinaryExpr::new(
                Box::new(left),
                Operator::StringConcat,
                Box::new(right),
            ))))
        }
        other => Ok(Transformed::no(other)),
    })
}
