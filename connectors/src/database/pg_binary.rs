//! Reads from PostgreSQL with `COPY (<query>) TO STDOUT (FORMAT binary)`.
//!
//! The providers crate reads every query with `query_raw` and converts the rows one value at a
//! time through `tokio_postgres::Row`. [`CopyOutPool`] hands its SQL tables (and so the
//! federation executor and plain scans alike) connections whose `query_arrow` first prepares
//! the query to learn the result's column types; when every column has a decoder here, the rows
//! come as one binary COPY stream decoded straight into Arrow builders ([`super::pg_decode`])
//! on a separate task, so
//! decoding overlaps with the consumer (benches/DATABASE_RESULTS.md). Queries with parameters,
//! or with a column type not listed in [`Decoder::for_column`] (arrays, geometric types,
//! ranges, ...), keep the providers crate's path; so does everything but `query_arrow`
//! (schemas, table lists, writes).

use std::any::Any;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::TableReference;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchReceiverStreamBuilder;
use datafusion_table_providers::UnsupportedTypeAction;
use datafusion_table_providers::sql::db_connection_pool::dbconnection::postgresconn::PostgresConnection;
use datafusion_table_providers::sql::db_connection_pool::dbconnection::{
    self, AsyncDbConnection, DbConnection,
};
use datafusion_table_providers::sql::db_connection_pool::postgrespool::PostgresConnectionPool;
use datafusion_table_providers::sql::db_connection_pool::{DbConnectionPool, JoinPushDown};
use futures::StreamExt;
use tokio_postgres::types::{ToSql, Type};

use super::pg_decode::{RowDecoder, copy_error};

type PooledConnection = datafusion_table_providers::sql::db_connection_pool::dbconnection::postgresconn::PostgresPooledConnection;
type Param = &'static (dyn ToSql + Sync);
type DynConnection = dyn DbConnection<PooledConnection, Param>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A pool whose connections read by binary COPY where they can.
#[derive(Debug)]
pub(crate) struct CopyOutPool {
    inner: Arc<PostgresConnectionPool>,
    unsupported: UnsupportedTypeAction,
}

impl CopyOutPool {
    /// Connections of `inner`, with its `unsupported_types` action.
    pub(crate) fn new(
        inner: Arc<PostgresConnectionPool>,
        unsupported: UnsupportedTypeAction,
    ) -> Self {
        Self { inner, unsupported }
    }
}

#[async_trait]
impl DbConnectionPool<PooledConnection, Param> for CopyOutPool {
    async fn connect(&self) -> Result<Box<DynConnection>, BoxError> {
        let inner = self
            .inner
            .connect_direct()
            .await?
            .with_unsupported_type_action(self.unsupported);
        Ok(Box::new(CopyOutConnection { inner }))
    }

    fn join_push_down(&self) -> JoinPushDown {
        self.inner.join_push_down()
    }
}

/// A pooled PostgreSQL connection; only `query_arrow` differs from the providers crate's.
struct CopyOutConnection {
    inner: PostgresConnection,
}

type Inner = dyn AsyncDbConnection<PooledConnection, Param>;

impl CopyOutConnection {
    fn inner(&self) -> &Inner {
        &self.inner
    }
}

impl DbConnection<PooledConnection, Param> for CopyOutConnection {
    fn as_any(&self) -> &dyn Any {
        &self.inner
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        &mut self.inner
    }

    fn as_async(&self) -> Option<&dyn AsyncDbConnection<PooledConnection, Param>> {
        Some(self)
    }
}

#[async_trait]
impl AsyncDbConnection<PooledConnection, Param> for CopyOutConnection {
    fn new(conn: PooledConnection) -> Self {
        Self {
            inner: <PostgresConnection as AsyncDbConnection<_, Param>>::new(conn),
        }
    }

    fn new_with_schemas(conn: PooledConnection, schemas: Arc<dbconnection::TableSchemas>) -> Self {
        Self {
            inner: <PostgresConnection as AsyncDbConnection<_, Param>>::new_with_schemas(
                conn, schemas,
            ),
        }
    }

    async fn tables(&self, schema: &str) -> Result<Vec<String>, dbconnection::Error> {
        self.inner().tables(schema).await
    }

    async fn schemas(&self) -> Result<Vec<String>, dbconnection::Error> {
        self.inner().schemas().await
    }

    async fn get_schema(
        &self,
        table_reference: &TableReference,
    ) -> Result<SchemaRef, dbconnection::Error> {
        self.inner().get_schema(table_reference).await
    }

    async fn query_arrow(
        &self,
        sql: &str,
        params: &[Param],
        projected_schema: Option<SchemaRef>,
    ) -> Result<SendableRecordBatchStream, BoxError> {
        let inner = self.inner();
        let client: &tokio_postgres::Client = &self.inner.conn;
        let (Some(schema), true) = (projected_schema.as_ref(), params.is_empty()) else {
            return inner.query_arrow(sql, params, projected_schema).await;
        };
        let statement = client.prepare(sql).await.map_err(|e| describe(&e))?;
        let types: Vec<Type> = statement
            .columns()
            .iter()
            .map(|c| c.type_().clone())
            .collect();
        drop(statement);
        let Some(decoder) = RowDecoder::new(&types, schema) else {
            return inner.query_arrow(sql, params, projected_schema).await;
        };
        let copy = format!("COPY ({sql}) TO STDOUT (FORMAT binary)");
        let stream = client
            .copy_out(copy.as_str())
            .await
            .map_err(|e| describe(&e))?;
        tracing::debug!(sql, "reading PostgreSQL by binary COPY");
        let mut builder = RecordBatchReceiverStreamBuilder::new(Arc::clone(schema), 2);
        let tx = builder.tx();
        builder.spawn(async move {
            let mut decoder = decoder;
            let mut pending: Vec<u8> = Vec::new();
            futures::pin_mut!(stream);
            while let Some(chunk) = stream.next().await {
                let chunk: Bytes = chunk.map_err(|e| copy_error(&describe(&e)))?;
                // A row may span messages: an incomplete tail waits in `pending`.
                if pending.is_empty() {
                    let used = decoder.parse(&chunk)?;
                    pending.extend_from_slice(&chunk[used..]);
                } else {
                    pending.extend_from_slice(&chunk);
                    let used = decoder.parse(&pending)?;
                    pending.drain(..used);
                }
                while let Some(batch) = decoder.take_full_batch()? {
                    if tx.send(Ok(batch)).await.is_err() {
                        // The consumer is gone (a LIMIT was met): stop reading.
                        return Ok(());
                    }
                }
            }
            if !decoder.finished || !pending.is_empty() {
                return Err(copy_error("the COPY stream ended in the middle of a row"));
            }
            if let Some(batch) = decoder.finish_batch()? {
                let _ = tx.send(Ok(batch)).await;
            }
            Ok(())
        });
        Ok(builder.build())
    }

    async fn execute(&self, sql: &str, params: &[Param]) -> Result<u64, BoxError> {
        self.inner().execute(sql, params).await
    }
}

/// A PostgreSQL error with the server's message (`db error` alone says nothing).
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        ),
        None => match std::error::Error::source(e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    }
}
