//! [`LastPerKeyExec`]: keeps, within each batch, only the last row of every upsert key.
//!
//! The providers crate upserts into PostgreSQL with one multi-row `INSERT ... ON CONFLICT DO
//! UPDATE` per batch, and PostgreSQL refuses a statement that updates the same row twice
//! ("ON CONFLICT DO UPDATE command cannot affect row a second time"). A batch may well hold a
//! key twice (a change feed, a message delivered again after a crash), and an upsert means
//! "the latest row wins": so each batch keeps its last row per key before it is sent. Rows of
//! later batches go in later statements of the same transaction, which overwrite earlier ones
//! as an upsert should. Rows with a NULL in the key never conflict and are all kept.

use std::collections::HashSet;
use std::sync::Arc;

use datafusion::arrow::array::{RecordBatch, UInt32Array};
use datafusion::arrow::compute::take_record_batch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use futures::StreamExt;

/// Passes its input through, each batch reduced to its last row per key.
#[derive(Debug)]
pub(crate) struct LastPerKeyExec {
    input: Arc<dyn ExecutionPlan>,
    /// Indices of the key columns in the input.
    key: Vec<usize>,
    names: Vec<String>,
}

impl LastPerKeyExec {
    /// Deduplicate `input` on the columns `names` (matched exactly, then ignoring case).
    pub(crate) fn try_new(input: Arc<dyn ExecutionPlan>, names: &[&str]) -> Result<Self> {
        let schema = input.schema();
        let key = names
            .iter()
            .map(|name| {
                schema
                    .index_of(name)
                    .ok()
                    .or_else(|| {
                        schema
                            .fields()
                            .iter()
                            .position(|f| f.name().eq_ignore_ascii_case(name))
                    })
                    .ok_or_else(|| {
                        DataFusionError::Plan(format!(
                            "option `on_conflict`: the table has no column `{name}`"
                        ))
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            input,
            key,
            names: names.iter().map(|n| (*n).to_string()).collect(),
        })
    }
}

/// `batch` with only the last row of each key (rows with a NULL key all kept).
fn last_per_key(batch: RecordBatch, key: &[usize], schema: &SchemaRef) -> Result<RecordBatch> {
    if batch.num_rows() < 2 || key.is_empty() {
        return Ok(batch);
    }
    let columns: Vec<_> = key.iter().map(|i| Arc::clone(batch.column(*i))).collect();
    let fields = key
        .iter()
        .map(|i| SortField::new(schema.field(*i).data_type().clone()))
        .collect();
    let rows = RowConverter::new(fields)?.convert_columns(&columns)?;
    let mut seen = HashSet::with_capacity(batch.num_rows());
    let mut kept = Vec::with_capacity(batch.num_rows());
    for i in (0..batch.num_rows()).rev() {
        let has_null = columns.iter().any(|c| c.is_null(i));
        if has_null || seen.insert(rows.row(i)) {
            kept.push(u32::try_from(i).map_err(|_| {
                DataFusionError::Execution("a batch of more than 2^32 rows".into())
            })?);
        }
    }
    if kept.len() == batch.num_rows() {
        return Ok(batch);
    }
    kept.reverse();
    Ok(take_record_batch(&batch, &UInt32Array::from(kept))?)
}

impl DisplayAs for LastPerKeyExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LastPerKeyExec: key=[{}]", self.names.join(", "))
    }
}

impl ExecutionPlan for LastPerKeyExec {
    fn name(&self) -> &str {
        "LastPerKeyExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        match (children.pop(), children.is_empty()) {
            (Some(input), true) => Ok(Arc::new(Self {
                input,
                key: self.key.clone(),
                names: self.names.clone(),
            })),
            _ => Err(DataFusionError::Internal(
                "LastPerKeyExec has one child".into(),
            )),
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        let schema = input.schema();
        let key = self.key.clone();
        let batch_schema = Arc::clone(&schema);
        let stream = input.map(move |batch| last_per_key(batch?, &key, &batch_schema));
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    fn batch(ids: Vec<Option<i64>>, names: Vec<&str>) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("name", DataType::Utf8, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(ids)),
                Arc::new(StringArray::from(names)),
            ],
        )
        .unwrap()
    }

    fn names(b: &RecordBatch) -> Vec<String> {
        let a = b.column(1).as_any().downcast_ref::<StringArray>().unwrap();
        (0..a.len()).map(|i| a.value(i).to_string()).collect()
    }

    #[test]
    fn keeps_the_last_row_of_each_key_in_input_order() {
        let b = batch(
            vec![Some(1), Some(2), Some(1), None, Some(3), None, Some(2)],
            vec!["a1", "b1", "a2", "n1", "c", "n2", "b2"],
        );
        let schema = b.schema();
        let out = last_per_key(b, &[0], &schema).unwrap();
        assert_eq!(names(&out), ["a2", "n1", "c", "n2", "b2"]);
    }

    #[test]
    fn a_batch_without_duplicates_is_passed_unchanged() {
        let b = batch(vec![Some(1), Some(2)], vec!["a", "b"]);
        let schema = b.schema();
        let out = last_per_key(b.clone(), &[0], &schema).unwrap();
        assert_eq!(out, b);
    }

    #[test]
    fn composite_keys_compare_every_column() {
        let b = batch(vec![Some(1), Some(1), Some(1)], vec!["x", "y", "x"]);
        let schema = b.schema();
        let out = last_per_key(b, &[0, 1], &schema).unwrap();
        assert_eq!(names(&out), ["y", "x"]);
    }
}
