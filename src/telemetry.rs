//! Logs and traces. Log lines go to stderr (filtered by `FLOWENGINE_LOG`). Spans (a pipeline,
//! each statement, each Flight call and query, each connector call) always get OpenTelemetry
//! trace ids, which the logs, audit records and Flight responses carry; when an OTLP endpoint is
//! configured (`otlp_endpoint`, `FLOWENGINE_OTLP_ENDPOINT` or the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT`) they are also exported there over OTLP/HTTP with JSON bodies,
//! in batches from a background thread.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Spans of these targets are traced (their events are logs, filtered separately).
const TRACED: &str = "flowengine";

/// Owns the tracer provider: flushes and stops the exporter when the process ends.
pub(crate) struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Export the spans still buffered (blocking: call outside the async runtime).
    pub(crate) fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            eprintln!("flowengine: exporting the last traces failed: {e}");
        }
    }
}

/// The OTLP/HTTP traces URL for a base endpoint (`http://collector:4318`).
fn traces_url(endpoint: &str) -> String {
    let base = endpoint.trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        base.to_string()
    } else {
        format!("{base}/v1/traces")
    }
}

/// The exporter's HTTP client: reqwest's blocking client, run on the batch processor's own
/// thread (so no async runtime is needed there, and no second reqwest version is built).
#[derive(Debug)]
struct BlockingClient(reqwest::blocking::Client);

#[async_trait::async_trait]
impl HttpClient for BlockingClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let (parts, body) = request.into_parts();
        let mut builder = self.0.request(parts.method, parts.uri.to_string());
        for (name, value) in &parts.headers {
            builder = builder.header(name, value);
        }
        let response = builder.body(body.to_vec()).send()?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.bytes()?;
        let mut out = Response::builder().status(status);
        for (name, value) in &headers {
            out = out.header(name, value);
        }
        Ok(out.body(body)?)
    }
}

/// Install logging and tracing for the process. `endpoint`: where to export spans, if anywhere.
pub(crate) fn init(filter: EnvFilter, json: bool, endpoint: Option<&str>) -> Telemetry {
    let mut builder = SdkTracerProvider::builder()
        .with_resource(Resource::builder().with_service_name("flowengine").build());
    let mut export_error = None;
    if let Some(endpoint) = endpoint {
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(10))
            .build();
        let exporter = client.map_err(|e| e.to_string()).and_then(|client| {
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpJson)
                .with_endpoint(traces_url(endpoint))
                .with_http_client(BlockingClient(client))
                .build()
                .map_err(|e| e.to_string())
        });
        match exporter {
            Ok(exporter) => builder = builder.with_batch_exporter(exporter),
            Err(e) => export_error = Some(format!("OTLP endpoint {endpoint}: {e}")),
        }
    }
    let provider = builder.build();
    let traced = Targets::new().with_target(TRACED, LevelFilter::INFO);
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("flowengine"))
        .with_filter(traced);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let logs = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed()
    };
    let _ = tracing_subscriber::registry()
        .with(logs)
        .with(otel)
        .try_init();
    if let Some(e) = export_error {
        tracing::error!("traces are not exported: {e}");
    }
    Telemetry { provider }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_get_the_traces_path_once() {
        assert_eq!(traces_url("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(
            traces_url("http://c:4318/v1/traces"),
            "http://c:4318/v1/traces"
        );
    }
}
