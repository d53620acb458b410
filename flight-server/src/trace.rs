//! Tracing of Flight calls: every gRPC call runs in a span (`flight call`, with the method),
//! continuing the caller's trace when it sends a W3C `traceparent` header, and every response
//! carries the trace id back in `x-flowengine-trace-id` metadata. The same id is written to the
//! statement's log line and audit record, so one request can be followed end to end. Spans
//! reach an OpenTelemetry collector when the binary installs an exporter.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Response metadata key carrying the trace id.
pub const TRACE_ID_HEADER: &str = "x-flowengine-trace-id";

/// The trace id of `span`, as 32 hex digits (none when spans are not recorded).
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

/// The remote parent a W3C `traceparent` header names (`00-<trace>-<span>-<flags>`).
fn parent(traceparent: &str) -> Option<opentelemetry::Context> {
    let mut parts = traceparent.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version != "00" || trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_hex(span).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let context = SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags),
        true,
        TraceState::default(),
    );
    context
        .is_valid()
        .then(|| opentelemetry::Context::new().with_remote_span_context(context))
}

/// A tower layer putting every call in a span and its trace id in the response.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TraceLayer;

impl<S> tower::Layer<S> for TraceLayer {
    type Service = Traced<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Traced { inner }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Traced<S> {
    inner: S,
}

impl<S, B, R> tower::Service<http::Request<B>> for Traced<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = request
            .uri()
            .path()
            .rsplit('/')
            .next()
            .unwrap_or("")
            .to_string();
        let span = tracing::info_span!(target: "flowengine::flight", "flight call", rpc = %method);
        if let Some(cx) = request
            .headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(parent)
        {
            // A span the subscriber does not record cannot take a parent: nothing to do then.
            let _ = span.set_parent(cx);
        }
        let id = trace_id(&span);
        let response = self.inner.call(request).instrument(span);
        Box::pin(async move {
            let mut response = response.await?;
            if let Some(value) = id.and_then(|id| http::HeaderValue::from_str(&id).ok()) {
                response.headers_mut().insert(TRACE_ID_HEADER, value);
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_headers_are_parsed_strictly() {
        let cx = parent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(
            cx.span().span_context().trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(cx.span().span_context().is_remote());
        assert!(parent("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none());
        assert!(parent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").is_none());
        assert!(parent("garbage").is_none());
    }
}
