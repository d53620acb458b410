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
//!
//! Either way the returned stream keeps its pooled connection checked out until the stream
//! ends: the providers crate drops the connection as soon as `query_arrow` returns, which puts
//! a connection that is still streaming back in the pool. The next checkout of it then waits
//! behind the unread result (bb8's validity check queues after it), and when the checkout is
//! the very consumer of that result (an `INSERT` into the same database), it waits out the
//! pool's 30-second timeout.

use std::any::Any;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::TableReference;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::stream::{
    RecordBatchReceiverStreamBuilder, RecordBatchStreamAdapter,
};
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
        Ok(Box::new(CopyOutConnection {
            inner: Arc::new(inner),
            busy: StreamRunning,
        }))
    }

    fn join_push_down(&self) -> JoinPushDown {
        self.inner.join_push_down()
    }
}

/// A pooled PostgreSQL connection; only `query_arrow` differs from the providers crate's.
/// Shared with the streams it returns, so it goes back to the pool when the last one ends.
struct CopyOutConnection {
    inner: Arc<PostgresConnection>,
    /// What `as_any_mut` hands out while a stream still uses the connection.
    busy: StreamRunning,
}

/// Stands for a connection a running stream still uses (no exclusive access to it).
struct StreamRunning;

type Inner = dyn AsyncDbConnection<PooledConnection, Param>;

impl CopyOutConnection {
    fn inner(&self) -> &Inner {
        self.inner.as_ref()
    }
}

impl DbConnection<PooledConnection, Param> for CopyOutConnection {
    fn as_any(&self) -> &dyn Any {
        self.inner.as_ref()
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        // Exclusive access only while no stream of this connection is running.
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => inner,
            None => &mut self.busy,
        }
    }

    fn as_async(&self) -> Option<&dyn AsyncDbConnection<PooledConnection, Param>> {
        Some(self)
    }
}

#[async_trait]
impl AsyncDbConnection<PooledConnection, Param> for CopyOutConnection {
    fn new(conn: PooledConnection) -> Self {
        Self {
            inner: Arc::new(<PostgresConnection as AsyncDbConnection<_, Param>>::new(
                conn,
            )),
            busy: StreamRunning,
        }
    }

    fn new_with_schemas(conn: PooledConnection, schemas: Arc<dbconnection::TableSchemas>) -> Self {
        Self {
            inner: Arc::new(
                <PostgresConnection as AsyncDbConnection<_, Param>>::new_with_schemas(
                    conn, schemas,
                ),
            ),
            busy: StreamRunning,
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
            let stream = inner.query_arrow(sql, params, projected_schema).await?;
            return Ok(holding(stream, Arc::clone(&self.inner)));
        };
        let statement = client.prepare(sql).await.map_err(|e| describe(&e))?;
        let types: Vec<Type> = statement
            .columns()
            .iter()
            .map(|c| c.type_().clone())
            .collect();
        drop(statement);
        let Some(decoder) = RowDecoder::new(&types, schema) else {
            let stream = inner.query_arrow(sql, params, projected_schema).await?;
            return Ok(holding(stream, Arc::clone(&self.inner)));
        };
        let copy = format!("COPY ({sql}) TO STDOUT (FORMAT binary)");
        let stream = client
            .copy_out(copy.as_str())
            .await
            .map_err(|e| describe(&e))?;
        tracing::debug!(sql, "reading PostgreSQL by binary COPY");
        let mut builder = RecordBatchReceiverStreamBuilder::new(Arc::clone(schema), 2);
        let tx = builder.tx();
        let connection = Arc::clone(&self.inner);
        builder.spawn(async move {
            // Checked out until the COPY has been read to its end or abandoned.
            let _connection = connection;
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

/// `stream`, keeping `connection` checked out of the pool until the stream is dropped.
fn holding(
    stream: SendableRecordBatchStream,
    connection: Arc<PostgresConnection>,
) -> SendableRecordBatchStream {
    let schema = stream.schema();
    let held = stream.map(move |batch| {
        let _ = &connection;
        batch
    });
    Box::pin(RecordBatchStreamAdapter::new(schema, held))
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion_table_providers::util::secrets::to_secret_map;

    use super::*;

    /// Needs the PostgreSQL server on 127.0.0.1:5432 (trust auth, database `test`).
    #[tokio::test]
    async fn a_streaming_read_keeps_its_connection_until_it_ends() {
        let params: HashMap<String, String> = [
            ("host", "127.0.0.1"),
            ("port", "5432"),
            ("user", "postgres"),
            ("db", "test"),
            ("sslmode", "disable"),
            ("connection_pool_size", "2"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let pool = Arc::new(
            PostgresConnectionPool::new(to_secret_map(params))
                .await
                .expect("PostgreSQL on 127.0.0.1:5432"),
        );
        let copy = CopyOutPool::new(Arc::clone(&pool), UnsupportedTypeAction::Error);
        let schema = Arc::new(Schema::new(vec![Field::new("g", DataType::Int64, true)]));
        let conn = copy.connect().await.unwrap();
        let mut stream = conn
            .as_async()
            .unwrap()
            .query_arrow(
                "SELECT g::bigint AS g FROM generate_series(1, 3000000) g",
                &[],
                Some(schema),
            )
            .await
            .unwrap();
        // The caller lets go of the connection as soon as the stream exists (as SqlExec does).
        drop(conn);
        let mut rows = stream.next().await.unwrap().unwrap().num_rows();
        // While the COPY still streams, another checkout gets a usable connection at once
        // instead of the busy one (which would wait behind the unread rows).
        let other = tokio::time::timeout(Duration::from_secs(10), copy.connect())
            .await
            .expect("the checkout waited for a connection that is still streaming")
            .unwrap();
        other
            .as_async()
            .unwrap()
            .execute("SELECT 1", &[])
            .await
            .unwrap();
        while let Some(batch) = stream.next().await {
            rows += batch.unwrap().num_rows();
        }
        assert_eq!(rows, 3_000_000);
    }
}
