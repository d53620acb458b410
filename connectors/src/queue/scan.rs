//! The shape every queue scan shares: open a bounded read, pull its batches until its end, then
//! settle it (a consuming read hands its acknowledgement to the session's ledger). A read that
//! fails, or is dropped before its end, settles nothing: its messages come again.

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::error::Result;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use futures::StreamExt;

/// An open, bounded read of one queue table.
#[async_trait]
pub(crate) trait BoundedRead: Send + Sized + 'static {
    /// The next batch of rows; `None` at the end of the read.
    async fn next_batch(&mut self) -> Result<Option<RecordBatch>>;

    /// The read reached its end (not called after an error or an early drop).
    async fn finish(self) {}
}

/// The batches of the read `open` opens, as a stream of `schema`.
pub(crate) fn batches<R: BoundedRead>(
    schema: SchemaRef,
    open: impl Future<Output = Result<R>> + Send + 'static,
) -> SendableRecordBatchStream {
    let batches = futures::stream::once(open).flat_map(|opened| match opened {
        Ok(read) => futures::stream::unfold(Some(read), |read| async move {
            let mut read = read?;
            match read.next_batch().await {
                Ok(Some(b)) => Some((Ok(b), Some(read))),
                Ok(None) => {
                    read.finish().await;
                    None
                }
                Err(e) => Some((Err(e), None)),
            }
        })
        .boxed(),
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
