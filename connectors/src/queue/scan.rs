//! The shape every queue scan shares: open a bounded read, decode its messages batch by batch
//! until its end, then settle it (a consuming read hands its acknowledgement to the session's
//! ledger). A read that fails, or is dropped before its end, settles nothing: its messages come
//! again.

use std::future::Future;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::error::Result;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use futures::StreamExt;

use super::broker::{MessageRead, next_rows};
use super::options::ReadOptions;
use super::rows::MessageColumns;

/// The rows of the read `open` opens, as a stream of `schema`.
pub(crate) fn batches<R: MessageRead>(
    schema: SchemaRef,
    declared: SchemaRef,
    options: ReadOptions,
    columns: MessageColumns,
    open: impl Future<Output = Result<R>> + Send + 'static,
) -> SendableRecordBatchStream {
    let rows_schema = Arc::clone(&schema);
    let batches = futures::stream::once(open).flat_map(move |opened| match opened {
        Ok(read) => {
            let state = (
                Some(read),
                Arc::clone(&rows_schema),
                Arc::clone(&declared),
                options.clone(),
            );
            futures::stream::unfold(state, move |(read, schema, declared, options)| async move {
                let mut read = read?;
                match next_rows(&mut read, &schema, &declared, &options, &columns).await {
                    Ok(Some(b)) => Some((Ok(b), (Some(read), schema, declared, options))),
                    Ok(None) => {
                        read.finish().await;
                        None
                    }
                    Err(e) => Some((Err(e), (None, schema, declared, options))),
                }
            })
            .boxed()
        }
        Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
    });
    Box::pin(RecordBatchStreamAdapter::new(schema, batches))
}

/// Messages one scan reads at most: a pushed-down `LIMIT` or `max_messages`, the smaller.
pub(crate) fn cap(limit: Option<u64>, max_messages: Option<u64>) -> Option<u64> {
    match (limit, max_messages) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The plan of one scan: a queue table is a single partition, read once.
pub(crate) fn plan(
    schema: &SchemaRef,
    partition: Arc<dyn PartitionStream>,
    projection: Option<&Vec<usize>>,
    limit: Option<usize>,
) -> Result<Arc<dyn ExecutionPlan>> {
    Ok(Arc::new(StreamingTableExec::try_new(
        Arc::clone(schema),
        vec![partition],
        projection,
        Vec::new(),
        false,
        limit,
    )?))
}

#[cfg(test)]
mod tests {
    #[test]
    fn cap_is_the_smaller_bound() {
        assert_eq!(super::cap(Some(3), Some(10)), Some(3));
        assert_eq!(super::cap(None, Some(10)), Some(10));
        assert_eq!(super::cap(Some(7), None), Some(7));
        assert_eq!(super::cap(None, None), None);
    }
}
