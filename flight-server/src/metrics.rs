//! Prometheus metrics of the server (exposed by the admin endpoint at `/metrics`).

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct QueryLabels {
    /// `query`, `update`, `ingest`, `metadata`.
    pub(crate) kind: String,
    /// `ok`, `error`, `cancelled`, `timeout`, `rejected`.
    pub(crate) status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PipelineLabels {
    pipeline: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PipelineStatusLabels {
    pipeline: String,
    /// `committed`, `failed`.
    status: String,
}

/// What one committed micro-batch did.
#[derive(Debug, Clone, Copy, Default)]
pub struct BatchFigures {
    /// Queue messages acknowledged after it committed.
    pub acknowledged: u64,
    pub rows_written: u64,
    /// Undecodable messages skipped or dead-lettered.
    pub bad_records: u64,
    /// Messages left in its queue sources (the lag).
    pub backlog: u64,
}

/// Metrics of the continuous pipelines a server runs (`flowengine serve --follow`): micro-batches
/// by outcome, their latency, messages acknowledged and rows written. Cheap to clone.
#[derive(Clone, Debug)]
pub struct PipelineMetrics {
    batches: Family<PipelineStatusLabels, Counter>,
    latency: Family<PipelineLabels, Histogram>,
    acknowledged: Family<PipelineLabels, Counter>,
    rows_written: Family<PipelineLabels, Counter>,
    bad_records: Family<PipelineLabels, Counter>,
    backlog: Family<PipelineLabels, Gauge>,
    last_commit: Family<PipelineLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
}

impl PipelineMetrics {
    fn register(registry: &mut Registry) -> Self {
        let m = Self {
            batches: Family::default(),
            latency: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.01, 2.0, 16))
            }),
            acknowledged: Family::default(),
            rows_written: Family::default(),
            bad_records: Family::default(),
            backlog: Family::default(),
            last_commit: Family::default(),
        };
        registry.register(
            "pipeline_batches",
            "Micro-batches of continuous pipelines that read something, by outcome",
            m.batches.clone(),
        );
        registry.register(
            "pipeline_batch_duration_seconds",
            "Duration of committed micro-batches (read, write, commit)",
            m.latency.clone(),
        );
        registry.register(
            "pipeline_messages_acknowledged",
            "Queue messages acknowledged after their micro-batch committed",
            m.acknowledged.clone(),
        );
        registry.register(
            "pipeline_rows_written",
            "Rows written by committed micro-batches",
            m.rows_written.clone(),
        );
        registry.register(
            "pipeline_bad_records",
            "Bad input records (undecodable messages) skipped or dead-lettered by committed micro-batches",
            m.bad_records.clone(),
        );
        registry.register(
            "pipeline_backlog_messages",
            "Messages left in the pipeline's queue sources after its last committed micro-batch (its lag)",
            m.backlog.clone(),
        );
        registry.register(
            "pipeline_last_commit_timestamp_seconds",
            "When the pipeline last committed a micro-batch (Unix time); now minus this is its staleness",
            m.last_commit.clone(),
        );
        m
    }

    /// A micro-batch of `pipeline` committed.
    pub fn committed(&self, pipeline: &str, seconds: f64, figures: BatchFigures) {
        let p = PipelineLabels {
            pipeline: pipeline.into(),
        };
        self.batches
            .get_or_create(&PipelineStatusLabels {
                pipeline: pipeline.into(),
                status: "committed".into(),
            })
            .inc();
        self.latency.get_or_create(&p).observe(seconds);
        self.acknowledged
            .get_or_create(&p)
            .inc_by(figures.acknowledged);
        self.rows_written
            .get_or_create(&p)
            .inc_by(figures.rows_written);
        self.bad_records
            .get_or_create(&p)
            .inc_by(figures.bad_records);
        self.backlog
            .get_or_create(&p)
            .set(i64::try_from(figures.backlog).unwrap_or(i64::MAX));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default();
        self.last_commit.get_or_create(&p).set(now);
    }

    /// A micro-batch of `pipeline` failed (it is retried).
    pub fn failed(&self, pipeline: &str) {
        self.batches
            .get_or_create(&PipelineStatusLabels {
                pipeline: pipeline.into(),
                status: "failed".into(),
            })
            .inc();
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
    datafusion: String,
}

/// All server metrics; cheap to clone handles.
pub(crate) struct Metrics {
    registry: Registry,
    pub(crate) queries: Family<QueryLabels, Counter>,
    pub(crate) duration: Family<QueryLabels, Histogram>,
    pub(crate) rows_streamed: Counter,
    pub(crate) bytes_streamed: Counter,
    pub(crate) rows_ingested: Counter,
    pub(crate) active: Gauge,
    pub(crate) queued: Gauge,
    pub(crate) memory_reserved: Gauge<u64, AtomicU64>,
    pub(crate) memory_limit: Gauge<u64, AtomicU64>,
    /// Connector calls retried, breakers opened and calls refused by an open breaker; brought
    /// up to the session's [`engine::RemoteCallStats`] at each scrape.
    pub(crate) connector_retries: Counter,
    pub(crate) connector_circuits_opened: Counter,
    pub(crate) connector_fast_failures: Counter,
    pub(crate) pipelines: PipelineMetrics,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("flowengine");
        let queries = Family::<QueryLabels, Counter>::default();
        registry.register(
            "queries",
            "Statements handled, by kind and final status",
            queries.clone(),
        );
        let duration = Family::<QueryLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 20))
        });
        registry.register(
            "query_duration_seconds",
            "Statement duration from admission to the last batch",
            duration.clone(),
        );
        let rows_streamed = Counter::default();
        registry.register(
            "rows_streamed",
            "Rows sent to clients",
            rows_streamed.clone(),
        );
        let bytes_streamed = Counter::default();
        registry.register(
            "bytes_streamed",
            "Arrow buffer bytes of the batches sent to clients (the rows they hold, before IPC framing)",
            bytes_streamed.clone(),
        );
        let rows_ingested = Counter::default();
        registry.register(
            "rows_ingested",
            "Rows received by bulk ingest",
            rows_ingested.clone(),
        );
        let active = Gauge::default();
        registry.register("active_queries", "Queries executing now", active.clone());
        let queued = Gauge::default();
        registry.register(
            "queued_queries",
            "Queries waiting for an execution slot",
            queued.clone(),
        );
        let memory_reserved = Gauge::<u64, AtomicU64>::default();
        registry.register(
            "memory_pool_reserved_bytes",
            "Bytes reserved in the DataFusion memory pool",
            memory_reserved.clone(),
        );
        let memory_limit = Gauge::<u64, AtomicU64>::default();
        registry.register(
            "memory_pool_limit_bytes",
            "Size of the DataFusion memory pool",
            memory_limit.clone(),
        );
        let connector_retries = Counter::default();
        registry.register(
            "connector_retries",
            "Connector calls (database connections, HTTP requests) retried after a transient failure",
            connector_retries.clone(),
        );
        let connector_circuits_opened = Counter::default();
        registry.register(
            "connector_circuits_opened",
            "Circuit breakers opened after consecutive failures of one endpoint",
            connector_circuits_opened.clone(),
        );
        let connector_fast_failures = Counter::default();
        registry.register(
            "connector_fast_failures",
            "Connector calls refused at once by an open circuit breaker",
            connector_fast_failures.clone(),
        );
        let pipelines = PipelineMetrics::register(&mut registry);
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").into(),
                datafusion: datafusion::DATAFUSION_VERSION.into(),
            })
            .set(1);
        registry.register("build_info", "FlowEngine build information", build);
        Self {
            registry,
            queries,
            duration,
            rows_streamed,
            bytes_streamed,
            rows_ingested,
            active,
            queued,
            memory_reserved,
            memory_limit,
            connector_retries,
            connector_circuits_opened,
            connector_fast_failures,
            pipelines,
        }
    }

    /// Bring the connector counters up to `stats` (counted by the connectors themselves).
    pub(crate) fn sync_connectors(&self, stats: &engine::RemoteCallStats) {
        use std::sync::atomic::Ordering::Relaxed;
        for (counter, now) in [
            (&self.connector_retries, stats.retries.load(Relaxed)),
            (
                &self.connector_circuits_opened,
                stats.circuit_opened.load(Relaxed),
            ),
            (
                &self.connector_fast_failures,
                stats.fast_failures.load(Relaxed),
            ),
        ] {
            let seen = counter.get();
            if now > seen {
                counter.inc_by(now - seen);
            }
        }
    }

    /// Record a finished statement.
    pub(crate) fn record(&self, kind: &str, status: &str, seconds: f64) {
        let labels = QueryLabels {
            kind: kind.into(),
            status: status.into(),
        };
        self.queries.get_or_create(&labels).inc();
        self.duration.get_or_create(&labels).observe(seconds);
    }

    /// The text exposition (OpenMetrics, which Prometheus scrapes).
    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
