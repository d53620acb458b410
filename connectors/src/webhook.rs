//! Webhooks as sinks: `STORED AS WEBHOOK`. `INSERT INTO` POSTs the inserted rows as JSON, in
//! batches.
//!
//! ```sql
//! CREATE EXTERNAL TABLE alerts (id BIGINT, message TEXT) STORED AS WEBHOOK
//! LOCATION 'https://hooks.example.com/alerts'
//! OPTIONS ('batch_size' '500', 'header.authorization' 'Bearer ${secret:HOOK_TOKEN}');
//! INSERT INTO alerts SELECT id, message FROM events WHERE level = 'error';
//! ```
//!
//! Each request's body is a JSON array of row objects (`'body' 'array'`, the default), the same
//! wrapped in an object under `'records_key'`, or newline-delimited JSON (`'body' 'ndjson'`).
//! NULLs are sent as `null`. Every request carries an `Idempotency-Key` header, unique per
//! statement and batch and the same on each retry, so a receiver can drop a batch it already
//! took. Transient failures (connection errors, 429, 5xx) are retried with backoff under the
//! endpoint's circuit breaker.
//!
//! HTTP has no transactions: when a batch finally fails, the batches before it were delivered,
//! and the error says how many rows that was. A webhook table cannot be read.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::{Session, TableProvider, TableProviderFactory};
use datafusion::datasource::TableType;
use datafusion::datasource::sink::{DataSink, DataSinkExec};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{CreateExternalTable, Expr};
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan};
use futures::StreamExt;
use url::Url;

use crate::http::{RequestOptions, endpoint_of, http_error, send_error};
use crate::options::TableOptions;
use crate::resilience::{Resilience, RetryPolicy};

/// How rows are laid out in a request body.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Body {
    /// `[{...}, {...}]`
    Array,
    /// `{"<key>": [{...}, {...}]}`
    Wrapped(String),
    /// One JSON object per line.
    Ndjson,
}

/// `CREATE EXTERNAL TABLE ... STORED AS WEBHOOK`.
#[derive(Debug)]
pub(crate) struct WebhookFactory {
    pub(crate) resilience: Arc<Resilience>,
}

#[async_trait]
impl TableProviderFactory for WebhookFactory {
    async fn create(
        &self,
        state: &dyn Session,
        cmd: &CreateExternalTable,
    ) -> Result<Arc<dyn TableProvider>> {
        let plan = |m: String| DataFusionError::Plan(format!("WEBHOOK table `{}`: {m}", cmd.name));
        let [location] = cmd.locations.as_slice() else {
            return Err(plan("LOCATION names one URL".into()));
        };
        let url =
            Url::parse(location).map_err(|e| plan(format!("`{location}` is not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(plan(format!("`{location}` is not an http(s) URL")));
        }
        if cmd.schema.fields().is_empty() {
            return Err(plan(
                "declare the columns the webhook receives: CREATE EXTERNAL TABLE name (col TYPE, ...)"
                    .into(),
            ));
        }
        let mut opts = TableOptions::new("WEBHOOK", state, cmd, crate::http::PARAMS.to_vec());
        let batch_size = match opts.parsed::<usize>("batch_size")? {
            None => 1000,
            Some(n) if n > 0 => n,
            Some(_) => return Err(plan("option `batch_size` must be at least 1".into())),
        };
        let method = match opts.string("method")?.map(|m| m.to_ascii_uppercase()) {
            None => reqwest::Method::POST,
            Some(m) if m == "POST" => reqwest::Method::POST,
            Some(m) if m == "PUT" => reqwest::Method::PUT,
            Some(m) => return Err(plan(format!("option `method` `{m}`: expected POST or PUT"))),
        };
        let records_key = opts.string("records_key")?;
        let body = match (opts.string("body")?.as_deref(), records_key) {
            (None | Some("array"), None) => Body::Array,
            (None | Some("array"), Some(key)) => Body::Wrapped(key),
            (Some("ndjson"), None) => Body::Ndjson,
            (Some("ndjson"), Some(_)) => {
                return Err(plan(
                    "option `records_key` wraps an array body; it does not apply to ndjson".into(),
                ));
            }
            (Some(other), _) => {
                return Err(plan(format!(
                    "option `body` `{other}`: expected array or ndjson"
                )));
            }
        };
        let request = RequestOptions::take(&mut opts)?;
        opts.finish()?;
        // Deliveries carry the rows and the table's credentials: a redirect is an error, never
        // a new destination nobody checked.
        let client = reqwest::Client::builder()
            .timeout(request.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| plan(format!("HTTP client: {e}")))?;
        Ok(Arc::new(WebhookTable {
            name: cmd.name.to_string(),
            schema: Arc::new(cmd.schema.as_arrow().clone()),
            target: Arc::new(Target {
                endpoint: endpoint_of(&url),
                url,
                method,
                headers: request.headers,
                policy: request.policy,
                body,
                batch_size,
                client,
                resilience: Arc::clone(&self.resilience),
            }),
        }))
    }
}

/// Where and how rows are sent.
struct Target {
    url: Url,
    endpoint: String,
    method: reqwest::Method,
    headers: Vec<(String, engine::Secret)>,
    policy: RetryPolicy,
    body: Body,
    batch_size: usize,
    client: reqwest::Client,
    resilience: Arc<Resilience>,
}

impl std::fmt::Debug for Target {
    // Headers may hold credentials, the query string a token: neither is shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("url", &shown(&self.url))
            .field(
                "headers",
                &self.headers.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .field("body", &self.body)
            .field("batch_size", &self.batch_size)
            .finish()
    }
}

/// `url` without its query string, which may carry a token.
fn shown(url: &Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    u.to_string()
}

impl Target {
    fn encode(&self, batch: &RecordBatch) -> Result<(Vec<u8>, &'static str)> {
        let mut rows = Vec::with_capacity(batch.get_array_memory_size());
        if self.body == Body::Ndjson {
            let mut w = arrow_json::WriterBuilder::new()
                .with_explicit_nulls(true)
                .build::<_, arrow_json::writer::LineDelimited>(&mut rows);
            w.write(batch)?;
            w.finish()?;
            return Ok((rows, "application/x-ndjson"));
        }
        {
            let mut w = arrow_json::WriterBuilder::new()
                .with_explicit_nulls(true)
                .build::<_, arrow_json::writer::JsonArray>(&mut rows);
            w.write(batch)?;
            w.finish()?;
        }
        if rows.is_empty() {
            rows.extend_from_slice(b"[]");
        }
        let body = match &self.body {
            Body::Wrapped(key) => {
                // `{"<key>":[...]}`
                let mut wrapped = b"{".to_vec();
                wrapped.extend_from_slice(
                    &serde_json::to_vec(key).map_err(|e| DataFusionError::External(Box::new(e)))?,
                );
                wrapped.push(b':');
                wrapped.extend_from_slice(&rows);
                wrapped.push(b'}');
                wrapped
            }
            _ => rows,
        };
        Ok((body, "application/json"))
    }

    async fn send(&self, body: Vec<u8>, content_type: &str, key: &str) -> Result<()> {
        let body = bytes::Bytes::from(body);
        self.resilience
            .call(&self.endpoint, "webhook request", &self.policy, || {
                let mut req = self
                    .client
                    .request(self.method.clone(), self.url.clone())
                    .header("content-type", content_type)
                    .header("idempotency-key", key)
                    .body(body.clone());
                for (k, v) in &self.headers {
                    req = req.header(k.as_str(), v.expose());
                }
                async move {
                    let resp = req.send().await.map_err(|e| send_error(&self.url, e))?;
                    let status = resp.status();
                    if status.is_success() {
                        Ok(())
                    } else {
                        Err(http_error(
                            &self.url,
                            status.as_u16(),
                            status.canonical_reason().unwrap_or(""),
                        ))
                    }
                }
            })
            .await
    }
}

/// A webhook: write-only.
#[derive(Debug)]
struct WebhookTable {
    name: String,
    schema: SchemaRef,
    target: Arc<Target>,
}

#[async_trait]
impl TableProvider for WebhookTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        _projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Err(DataFusionError::Plan(format!(
            "WEBHOOK table `{}` is a sink: it can be written with INSERT INTO, not read",
            self.name
        )))
    }

    async fn insert_into(
        &self,
        _state: &dyn Session,
        input: Arc<dyn ExecutionPlan>,
        op: InsertOp,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if op != InsertOp::Append {
            return Err(DataFusionError::Plan(format!(
                "WEBHOOK table `{}`: only INSERT INTO appends (not {op:?})",
                self.name
            )));
        }
        Ok(Arc::new(DataSinkExec::new(
            input,
            Arc::new(WebhookSink {
                schema: Arc::clone(&self.schema),
                target: Arc::clone(&self.target),
            }),
            None,
        )))
    }
}

#[derive(Debug)]
struct WebhookSink {
    schema: SchemaRef,
    target: Arc<Target>,
}

impl WebhookSink {
    /// Send the rows of `batches` as batch number `batch_no` (counted from 0) and clear them.
    async fn deliver(
        &self,
        batches: &mut Vec<RecordBatch>,
        statement: uuid::Uuid,
        batch_no: &mut u64,
        delivered: &mut u64,
    ) -> Result<()> {
        let target = &self.target;
        let batch = concat_batches(&self.schema, batches.iter())?;
        batches.clear();
        let rows = batch.num_rows();
        let (body, content_type) = target.encode(&batch)?;
        let key = format!("{statement}-{batch_no}");
        target.send(body, content_type, &key).await.map_err(|e| {
            DataFusionError::Execution(format!(
                "webhook {}: batch {} ({rows} rows) failed after {delivered} rows were delivered: {e}",
                shown(&target.url),
                *batch_no + 1
            ))
        })?;
        *batch_no += 1;
        *delivered += rows as u64;
        Ok(())
    }
}

impl DisplayAs for WebhookSink {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "WebhookSink: url={} batch_size={}",
            shown(&self.target.url),
            self.target.batch_size
        )
    }
}

#[async_trait]
impl DataSink for WebhookSink {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    async fn write_all(
        &self,
        mut data: SendableRecordBatchStream,
        _context: &Arc<TaskContext>,
    ) -> Result<u64> {
        let target = &self.target;
        let statement = uuid::Uuid::new_v4();
        let mut pending: Vec<RecordBatch> = Vec::new();
        let mut pending_rows = 0usize;
        let mut delivered = 0u64;
        let mut batch_no = 0u64;
        while let Some(batch) = data.next().await {
            let batch = batch?;
            let mut offset = 0;
            while offset < batch.num_rows() {
                let take = (target.batch_size - pending_rows).min(batch.num_rows() - offset);
                pending.push(batch.slice(offset, take));
                pending_rows += take;
                offset += take;
                if pending_rows == target.batch_size {
                    self.deliver(&mut pending, statement, &mut batch_no, &mut delivered)
                        .await?;
                    pending_rows = 0;
                }
            }
        }
        if pending_rows > 0 {
            self.deliver(&mut pending, statement, &mut batch_no, &mut delivered)
                .await?;
        }
        Ok(delivered)
    }

    fn metrics(&self) -> Option<datafusion::physical_plan::metrics::MetricsSet> {
        None
    }
}
