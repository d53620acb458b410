//! REST APIs as tables: `STORED AS HTTP_JSON` (sources; this module) and `STORED AS WEBHOOK`
//! (sinks; [`crate::webhook`]).
//!
//! ```sql
//! CREATE EXTERNAL TABLE issues STORED AS HTTP_JSON LOCATION 'https://api.example.com/issues'
//! OPTIONS ('records_path' 'data.items', 'pagination' 'next_link', 'next_link_path' 'links.next',
//!          'header.authorization' 'Bearer ${secret:API_TOKEN}');
//! ```
//!
//! Every scan fetches the pages (with `reqwest`), takes the records at `records_path`, and
//! decodes them with arrow-json into the declared schema, or the schema inferred from the
//! first page when no columns are declared. Pagination: `next_link` (a URL in the body at
//! `next_link_path`, or the `Link: <...>; rel="next"` header), `cursor` (the value at
//! `cursor_path` sent back as the `cursor_param` query parameter) and `page` (the `page_param`
//! counting up from `page_start` until a page has no records). Transient failures (connection
//! errors, 429, 5xx) are retried with backoff under the endpoint's circuit breaker.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::{Session, TableProvider, TableProviderFactory};
use datafusion::datasource::TableType;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::SessionStateBuilder;
use datafusion::logical_expr::{CreateExternalTable, Expr};
use datafusion::physical_plan::ExecutionPlan;
use engine::security::gate::CallerGate;
use engine::{Connector, ParamKind, ParamSpec, Secret};
use serde_json::Value;
use url::Url;

use crate::error::{ConnectorError, ErrorKind, http_status_kind};
use crate::options::TableOptions;
use crate::resilience::{Resilience, RetryPolicy};

/// REST JSON sources.
#[derive(Debug, Default)]
pub struct HttpConnector;

pub(crate) const PARAMS: &[ParamSpec] = &[
    ParamSpec {
        name: "records_path",
        description: "dot path to the array of records in each response (default: the body itself)",
        kind: ParamKind::Plain,
    },
    ParamSpec {
        name: "pagination",
        description: "none (default), next_link, cursor or page",
        kind: ParamKind::Plain,
    },
    ParamSpec {
        name: "next_link_path / cursor_path / cursor_param / page_param / page_start / max_pages",
        description: "where the next link or cursor is, which query parameter carries the cursor or page number, the first page number (1), a page limit (1000)",
        kind: ParamKind::Plain,
    },
    ParamSpec {
        name: "header.<name>",
        description: "request header, e.g. 'header.authorization' 'Bearer ${secret:TOKEN}'",
        kind: ParamKind::Secret,
    },
    ParamSpec {
        name: "timeout_secs / retries / retry_backoff_ms / circuit_failures / circuit_cooldown_secs",
        description: "request timeout (30) and retry/breaker settings as for databases",
        kind: ParamKind::Plain,
    },
    ParamSpec {
        name: "batch_size / body / records_key / method (WEBHOOK)",
        description: "rows per request (1000); `array` (default) or `ndjson` bodies; wrap the array in an object under this key; POST (default) or PUT",
        kind: ParamKind::Plain,
    },
];

impl Connector for HttpConnector {
    fn name(&self) -> &'static str {
        "http"
    }

    fn params(&self) -> Vec<ParamSpec> {
        PARAMS.to_vec()
    }

    fn table_types(&self) -> Vec<engine::TableType> {
        vec![
            engine::TableType::new("HTTP_JSON").distributable(),
            engine::TableType::new("WEBHOOK").sink_only(),
        ]
    }

    fn register(&self, mut builder: SessionStateBuilder) -> Result<SessionStateBuilder> {
        let resilience = Arc::new(Resilience::with_stats(engine::RemoteCallStats::of(
            &mut builder,
        )));
        builder
            .table_factories()
            .get_or_insert_with(Default::default)
            .insert(
                "HTTP_JSON".into(),
                Arc::new(HttpJsonFactory {
                    resilience: Arc::clone(&resilience),
                }),
            );
        builder
            .table_factories()
            .get_or_insert_with(Default::default)
            .insert(
                "WEBHOOK".into(),
                Arc::new(crate::webhook::WebhookFactory { resilience }),
            );
        Ok(builder)
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Pagination {
    None,
    NextLink(Option<String>),
    Cursor { path: String, param: String },
    Page { param: String, start: u64 },
}

/// One REST source, as declared.
#[derive(Clone)]
struct Source {
    url: Url,
    headers: Vec<(String, Secret)>,
    records_path: Vec<String>,
    pagination: Pagination,
    max_pages: u64,
    timeout: Duration,
    policy: RetryPolicy,
    resilience: Arc<Resilience>,
    /// The gate of the caller who created the table: every redirect and next-page link is
    /// checked against it, since the table's headers (credentials) go with every request.
    gate: Option<Arc<CallerGate>>,
}

/// Redirects followed per request, each one checked by the gate.
const MAX_REDIRECTS: usize = 10;

impl std::fmt::Debug for Source {
    // Headers may hold credentials: only their names are shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source")
            .field("url", &self.url.as_str())
            .field(
                "headers",
                &self.headers.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .field("pagination", &self.pagination)
            .finish()
    }
}

#[derive(Debug)]
struct HttpJsonFactory {
    resilience: Arc<Resilience>,
}

#[async_trait]
impl TableProviderFactory for HttpJsonFactory {
    async fn create(
        &self,
        state: &dyn Session,
        cmd: &CreateExternalTable,
    ) -> Result<Arc<dyn TableProvider>> {
        let plan =
            |m: String| DataFusionError::Plan(format!("HTTP_JSON table `{}`: {m}", cmd.name));
        let [location] = cmd.locations.as_slice() else {
            return Err(plan("LOCATION names one URL".into()));
        };
        let url =
            Url::parse(location).map_err(|e| plan(format!("`{location}` is not a URL: {e}")))?;
        let mut opts = TableOptions::new("HTTP_JSON", state, cmd, PARAMS.to_vec());
        let records_path = opts
            .string("records_path")?
            .map(|p| {
                p.split('.')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        let pagination = match opts.string("pagination")?.as_deref() {
            None | Some("none") => Pagination::None,
            Some("next_link") => Pagination::NextLink(opts.string("next_link_path")?),
            Some("cursor") => Pagination::Cursor {
                path: opts
                    .string("cursor_path")?
                    .ok_or_else(|| plan("pagination cursor needs option `cursor_path`".into()))?,
                param: opts
                    .string("cursor_param")?
                    .unwrap_or_else(|| "cursor".into()),
            },
            Some("page") => Pagination::Page {
                param: opts.string("page_param")?.unwrap_or_else(|| "page".into()),
                start: opts.parsed("page_start")?.unwrap_or(1),
            },
            Some(other) => {
                return Err(plan(format!(
                    "option `pagination` `{other}`: expected none, next_link, cursor or page"
                )));
            }
        };
        let max_pages = opts.parsed("max_pages")?.unwrap_or(1000);
        let RequestOptions {
            headers,
            timeout,
            policy,
        } = RequestOptions::take(&mut opts)?;
        opts.finish()?;
        let source = Source {
            url,
            headers,
            records_path,
            pagination,
            max_pages,
            timeout,
            policy,
            resilience: Arc::clone(&self.resilience),
            gate: state.config().get_extension::<CallerGate>(),
        };
        let schema: SchemaRef = if cmd.schema.fields().is_empty() {
            let first = source.fetch(Some(1)).await?;
            let inferred = arrow_json::reader::infer_json_schema_from_iterator(
                first
                    .iter()
                    .map(Ok::<_, datafusion::arrow::error::ArrowError>),
            )
            .map_err(|e| plan(format!("cannot infer a schema from the first page: {e}")))?;
            if inferred.fields().is_empty() {
                return Err(plan(
                    "the first page has no records to infer columns from; declare the columns"
                        .into(),
                ));
            }
            Arc::new(inferred)
        } else {
            Arc::new(cmd.schema.as_arrow().clone())
        };
        Ok(Arc::new(HttpJsonTable { source, schema }))
    }
}

/// What every HTTP table says about its requests: headers (values may hold secrets), the
/// timeout, and retries and the circuit breaker.
pub(crate) struct RequestOptions {
    pub(crate) headers: Vec<(String, Secret)>,
    pub(crate) timeout: Duration,
    pub(crate) policy: RetryPolicy,
}

impl RequestOptions {
    /// Take `header.*`, `timeout_secs`, `retries`, `retry_backoff_ms`, `circuit_failures` and
    /// `circuit_cooldown_secs` out of `opts`.
    pub(crate) fn take(opts: &mut TableOptions<'_>) -> Result<Self> {
        let d = RetryPolicy::default();
        let timeout = Duration::from_secs(opts.parsed("timeout_secs")?.unwrap_or(30));
        let policy = RetryPolicy {
            max_retries: opts.parsed("retries")?.unwrap_or(d.max_retries),
            initial_backoff: opts
                .parsed("retry_backoff_ms")?
                .map_or(d.initial_backoff, Duration::from_millis),
            max_backoff: d.max_backoff,
            circuit_failures: opts
                .parsed("circuit_failures")?
                .unwrap_or(d.circuit_failures),
            circuit_cooldown: opts
                .parsed("circuit_cooldown_secs")?
                .map_or(d.circuit_cooldown, Duration::from_secs),
        };
        let headers = opts.prefixed("header.")?;
        Ok(Self {
            headers,
            timeout,
            policy,
        })
    }
}

/// Name resolution through the caller's gate: the addresses a name resolves to when a
/// connection is made are checked again ([`CallerGate::admits_address`]), so a name that
/// pointed outside when the statement was checked cannot be re-pointed inside the machine or
/// its network before the request (DNS rebinding).
struct GatedResolver(Arc<CallerGate>);

impl reqwest::dns::Resolve for GatedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let gate = Arc::clone(&self.0);
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<std::net::SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let admitted: Vec<_> = addrs
                .iter()
                .copied()
                .filter(|a| gate.admits_address(&host, a.ip()))
                .collect();
            if admitted.is_empty() && !addrs.is_empty() {
                return Err(format!(
                    "host {host} now resolves to the internal address {}, which \
                     security.egress does not name",
                    addrs[0].ip()
                )
                .into());
            }
            Ok(Box::new(admitted.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// `scheme://host:port` of `url`: the circuit breaker's key.
pub(crate) fn endpoint_of(url: &Url) -> String {
    format!(
        "{}://{}",
        url.scheme(),
        &url[url::Position::BeforeHost..url::Position::AfterPort]
    )
}

impl Source {
    /// The records of every page (or the first `limit_pages`).
    async fn fetch(&self, limit_pages: Option<u64>) -> Result<Vec<Value>> {
        // Redirects are followed by `get`, one checked hop at a time; for a caller with a
        // gate, names are resolved through it as each connection is made.
        let mut builder = reqwest::Client::builder()
            .timeout(self.timeout)
            .redirect(reqwest::redirect::Policy::none());
        if let Some(gate) = self.gate.as_ref().filter(|g| !g.is_admin()) {
            builder = builder.dns_resolver(Arc::new(GatedResolver(Arc::clone(gate))));
        }
        let client = builder
            .build()
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let endpoint = endpoint_of(&self.url);
        let max = limit_pages.unwrap_or(self.max_pages);
        let mut records = Vec::new();
        let mut next = Some(self.url.clone());
        let mut page_no = match &self.pagination {
            Pagination::Page { start, .. } => *start,
            _ => 0,
        };
        if let (Pagination::Page { param, .. }, Some(u)) = (&self.pagination, next.as_mut()) {
            set_query(u, param, &page_no.to_string());
        }
        let mut pages = 0;
        while let Some(url) = next.take() {
            if pages >= max {
                if limit_pages.is_none() {
                    return Err(DataFusionError::Execution(format!(
                        "{}: more than max_pages = {} pages",
                        self.url, self.max_pages
                    )));
                }
                break;
            }
            pages += 1;
            let (body, link_next) = self
                .resilience
                .call(&endpoint, "HTTP request", &self.policy, || {
                    self.get(&client, url.clone())
                })
                .await?;
            let page = at_path(&body, &self.records_path).ok_or_else(|| {
                DataFusionError::Execution(format!(
                    "{url}: no array of records at `{}`",
                    self.records_path.join(".")
                ))
            })?;
            let empty = page.is_empty();
            records.extend(page.iter().cloned());
            next = match &self.pagination {
                Pagination::None => None,
                Pagination::NextLink(path) => {
                    let link = match path {
                        Some(p) => at_path_str(&body, p),
                        None => link_next,
                    };
                    match link {
                        Some(l) => {
                            let next = url.join(&l).map_err(|e| {
                                DataFusionError::Execution(format!("{url}: next link `{l}`: {e}"))
                            })?;
                            self.check_hop(&next).await?;
                            Some(next)
                        }
                        None => None,
                    }
                }
                Pagination::Cursor { path, param } => at_path_str(&body, path).map(|c| {
                    let mut u = self.url.clone();
                    set_query(&mut u, param, &c);
                    u
                }),
                Pagination::Page { param, .. } if !empty => {
                    page_no += 1;
                    let mut u = self.url.clone();
                    set_query(&mut u, param, &page_no.to_string());
                    Some(u)
                }
                Pagination::Page { .. } => None,
            };
        }
        Ok(records)
    }

    /// Refuse a hop the caller's gate does not allow.
    async fn check_hop(&self, url: &Url) -> Result<()> {
        match &self.gate {
            Some(gate) => gate
                .check_hop(url)
                .await
                .map_err(|e| DataFusionError::Execution(format!("HTTP_JSON table: {e}"))),
            None => Ok(()),
        }
    }

    async fn get(&self, client: &reqwest::Client, url: Url) -> Result<(Value, Option<String>)> {
        let mut url = url;
        let mut redirects = 0;
        let resp = loop {
            let mut req = client.get(url.clone()).header("accept", "application/json");
            // The table's headers (credentials) go to the table's own origin only, never to
            // where a redirect or a next link points elsewhere.
            if same_origin(&url, &self.url) {
                for (k, v) in &self.headers {
                    req = req.header(k.as_str(), v.expose());
                }
            }
            let resp = req.send().await.map_err(|e| send_error(&url, e))?;
            if !resp.status().is_redirection() {
                break resp;
            }
            let Some(location) = resp.headers().get("location").and_then(|l| l.to_str().ok())
            else {
                break resp;
            };
            redirects += 1;
            if redirects > MAX_REDIRECTS {
                return Err(ConnectorError::new(
                    ErrorKind::Invalid,
                    format!("{}: more than {MAX_REDIRECTS} redirects", shown(&url)),
                )
                .into());
            }
            let next = url.join(location).map_err(|e| {
                DataFusionError::Execution(format!("{url}: redirect to `{location}`: {e}"))
            })?;
            self.check_hop(&next).await?;
            url = next;
        };
        let status = resp.status();
        if !status.is_success() {
            return Err(http_error(
                &url,
                status.as_u16(),
                status.canonical_reason().unwrap_or(""),
            ));
        }
        let link_next = resp
            .headers()
            .get_all("link")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .find(|part| part.contains("rel=\"next\"") || part.contains("rel=next"))
            .and_then(|part| {
                let start = part.find('<')? + 1;
                let end = part.find('>')?;
                Some(part[start..end].to_string())
            });
        let bytes = resp.bytes().await.map_err(|e| send_error(&url, e))?;
        let body: Value = serde_json::from_slice(&bytes)
            .map_err(|e| DataFusionError::Execution(format!("{url}: response is not JSON: {e}")))?;
        Ok((body, link_next))
    }
}

/// Same scheme, host and port.
fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host() == b.host()
        && a.port_or_known_default() == b.port_or_known_default()
}

/// An HTTP status other than success, as a typed error (see [`crate::error`]: 429, 408 and
/// 5xx are retried, other statuses are not).
pub(crate) fn http_error(url: &Url, status: u16, reason: &str) -> DataFusionError {
    ConnectorError::new(
        http_status_kind(status),
        format!("HTTP {status} {reason} from {}", shown(url)),
    )
    .into()
}

/// A request that got no answer: the connection failed or timed out (retried).
pub(crate) fn send_error(url: &Url, e: reqwest::Error) -> DataFusionError {
    let kind = if e.is_timeout() {
        ErrorKind::Timeout
    } else {
        ErrorKind::Unavailable
    };
    // reqwest's message names the URL with its query string, which may carry a token.
    let e = e.without_url();
    ConnectorError::new(kind, format!("HTTP request to {} failed: {e}", shown(url))).into()
}

/// `url` without its query string: it may carry a token.
fn shown(url: &Url) -> Url {
    let mut shown = url.clone();
    shown.set_query(None);
    shown
}

fn set_query(url: &mut Url, key: &str, value: &str) {
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| k != key)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    url.query_pairs_mut()
        .clear()
        .extend_pairs(pairs)
        .append_pair(key, value);
}

fn at_path<'a>(body: &'a Value, path: &[String]) -> Option<&'a Vec<Value>> {
    let mut v = body;
    for p in path {
        v = v.get(p)?;
    }
    v.as_array()
}

fn at_path_str(body: &Value, path: &str) -> Option<String> {
    let mut v = body;
    for p in path.split('.').filter(|s| !s.is_empty()) {
        v = v.get(p)?;
    }
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A REST source: every scan fetches the pages.
#[derive(Debug)]
struct HttpJsonTable {
    source: Source,
    schema: SchemaRef,
}

#[async_trait]
impl TableProvider for HttpJsonTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let records = self.source.fetch(None).await?;
        let batches = decode(&records, &self.schema)?;
        Ok(MemorySourceConfig::try_new_exec(
            &[batches],
            Arc::clone(&self.schema),
            projection.cloned(),
        )?)
    }
}

fn decode(records: &[Value], schema: &SchemaRef) -> Result<Vec<RecordBatch>> {
    let mut decoder = arrow_json::ReaderBuilder::new(Arc::clone(schema))
        .with_batch_size(8192)
        .build_decoder()?;
    let mut out = Vec::new();
    for chunk in records.chunks(8192) {
        decoder.serialize(chunk)?;
        if let Some(batch) = decoder.flush()? {
            out.push(batch);
        }
    }
    if out.is_empty() {
        out.push(RecordBatch::new_empty(Arc::new(Schema::new(
            schema.fields().clone(),
        ))));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::is_retriable;

    #[test]
    fn paths_queries_and_retry_classes() {
        let body: Value = serde_json::json!({"data": {"items": [{"a": 1}]}, "next": "x", "n": 3});
        assert_eq!(
            at_path(&body, &["data".into(), "items".into()]).map(Vec::len),
            Some(1)
        );
        assert_eq!(at_path_str(&body, "next").as_deref(), Some("x"));
        assert_eq!(at_path_str(&body, "n").as_deref(), Some("3"));
        let mut u = Url::parse("http://h/p?page=1&q=z").unwrap();
        set_query(&mut u, "page", "2");
        assert_eq!(u.as_str(), "http://h/p?q=z&page=2");
        let url = Url::parse("http://h/p?token=secret").unwrap();
        assert!(is_retriable(&http_error(&url, 503, "Service Unavailable")));
        assert!(is_retriable(&http_error(&url, 429, "Too Many Requests")));
        assert!(!is_retriable(&http_error(&url, 404, "Not Found")));
        assert!(!http_error(&url, 401, "").to_string().contains("secret"));
    }
}
