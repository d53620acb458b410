//! Query timeouts enforced by FlowEngine, for databases whose providers give no server-side
//! statement timeout (MySQL/MariaDB: the providers crate fixes each connection's setup
//! statements). A read that is still running `statement_timeout` after it started fails with
//! an error naming the option; its connection goes back to the pool, which discards the rest
//! of the result. Both ways a query reaches the database are covered: table scans
//! ([`with_deadline`] in the scan's plan) and federated subqueries ([`with_executor_deadline`]).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::TableProvider;
use datafusion::common::Statistics;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::metrics::MetricsSet;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::sql::unparser::dialect::Dialect;
use datafusion_federation::FederatedTableProviderAdaptor;
use datafusion_federation::sql::{
    AstAnalyzer, LogicalOptimizer, SQLExecutor, SQLFederationProvider, SQLTableSource,
};
use futures::StreamExt;

/// `stream`, failing once `timeout` has passed since now. `what` names the database.
pub(crate) fn with_deadline(
    stream: SendableRecordBatchStream,
    timeout: Duration,
    what: &'static str,
) -> SendableRecordBatchStream {
    let schema = stream.schema();
    let deadline = tokio::time::Instant::now() + timeout;
    let limited = futures::stream::unfold(Some(stream), move |state| async move {
        let mut stream = state?;
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(item)) => Some((item, Some(stream))),
            Ok(None) => None,
            Err(_) => Some((
                Err(DataFusionError::Execution(format!(
                    "{what} query ran longer than statement_timeout ({} ms) and was abandoned",
                    timeout.as_millis()
                ))),
                None,
            )),
        }
    });
    Box::pin(RecordBatchStreamAdapter::new(schema, limited))
}

/// `read` (a federation adaptor) with its federated queries under `timeout`; `read` itself
/// when it is not one.
pub(crate) fn with_executor_deadline(
    read: Arc<dyn TableProvider>,
    timeout: Duration,
    what: &'static str,
) -> Arc<dyn TableProvider> {
    let Some(adaptor) =
        (read.as_ref() as &dyn std::any::Any).downcast_ref::<FederatedTableProviderAdaptor>()
    else {
        return read;
    };
    let Some(source) =
        (adaptor.source.as_ref() as &dyn std::any::Any).downcast_ref::<SQLTableSource>()
    else {
        return read;
    };
    let executor = Arc::new(DeadlineExecutor {
        inner: Arc::clone(&source.provider.executor),
        timeout,
        what,
    });
    let source = SQLTableSource::new_with_table(
        Arc::new(SQLFederationProvider::new(executor)),
        Arc::clone(&source.table),
    );
    match &adaptor.table_provider {
        Some(provider) => Arc::new(FederatedTableProviderAdaptor::new_with_provider(
            Arc::new(source),
            Arc::clone(provider),
        )),
        None => read,
    }
}

/// An executor whose query streams end in an error after `timeout`.
struct DeadlineExecutor {
    inner: Arc<dyn SQLExecutor>,
    timeout: Duration,
    what: &'static str,
}

#[async_trait]
impl SQLExecutor for DeadlineExecutor {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn compute_context(&self) -> Option<String> {
        self.inner.compute_context()
    }

    fn dialect(&self) -> Arc<dyn Dialect> {
        self.inner.dialect()
    }

    fn logical_optimizer(&self) -> Option<LogicalOptimizer> {
        self.inner.logical_optimizer()
    }

    fn ast_analyzer(&self) -> Option<AstAnalyzer> {
        self.inner.ast_analyzer()
    }

    fn execute(
        &self,
        query: &str,
        schema: SchemaRef,
        filters: &[Arc<dyn PhysicalExpr>],
    ) -> Result<SendableRecordBatchStream> {
        let stream = self.inner.execute(query, schema, filters)?;
        Ok(with_deadline(stream, self.timeout, self.what))
    }

    async fn statistics(&self, plan: &LogicalPlan) -> Result<Statistics> {
        self.inner.statistics(plan).await
    }

    async fn table_names(&self) -> Result<Vec<String>> {
        self.inner.table_names().await
    }

    async fn get_table_schema(&self, table_name: &str) -> Result<SchemaRef> {
        self.inner.get_table_schema(table_name).await
    }

    fn metrics(&self) -> Option<MetricsSet> {
        self.inner.metrics()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int32Array;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::arrow::record_batch::RecordBatch;

    #[tokio::test]
    async fn slow_streams_fail_after_the_timeout() {
        let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Int32, false)]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![Arc::new(Int32Array::from(vec![1]))],
        )
        .expect("batch");
        let slow = futures::stream::once(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok(batch)
        });
        let stream: SendableRecordBatchStream =
            Box::pin(RecordBatchStreamAdapter::new(Arc::clone(&schema), slow));
        let mut limited = with_deadline(stream, Duration::from_millis(50), "MySQL");
        let err = limited
            .next()
            .await
            .expect("an item")
            .expect_err("times out");
        assert!(
            err.to_string().contains("statement_timeout (50 ms)"),
            "{err}"
        );
        assert!(limited.next().await.is_none());
    }
}
