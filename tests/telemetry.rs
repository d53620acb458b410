//! Tracing: spans of pipelines, statements, connector calls, Flight calls and queries are
//! exported over OTLP/HTTP to a collector (here a stand-in that records what it receives), and
//! a request's trace id is the same in the spans, the Flight response metadata, the log line
//! and the audit record; a caller's W3C `traceparent` is continued.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow_flight::FlightDescriptor;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::sql::{CommandStatementQuery, ProstMessageExt};
use common::server::ServerProcess;
use prost::Message;

/// A stand-in OTLP/HTTP collector: records the JSON body of every POST to /v1/traces.
struct Collector {
    port: u16,
    bodies: Arc<Mutex<Vec<String>>>,
}

impl Collector {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let store = Arc::clone(&bodies);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let store = Arc::clone(&store);
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut stream = stream;
                    // Keep-alive: several requests per connection.
                    loop {
                        let mut request_line = String::new();
                        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                            return;
                        }
                        let mut length = 0usize;
                        loop {
                            let mut header = String::new();
                            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                                return;
                            }
                            let header = header.trim_end();
                            if header.is_empty() {
                                break;
                            }
                            if let Some((name, value)) = header.split_once(':')
                                && name.eq_ignore_ascii_case("content-length")
                            {
                                length = value.trim().parse().unwrap_or(0);
                            }
                        }
                        let mut body = vec![0; length];
                        if reader.read_exact(&mut body).is_err() {
                            return;
                        }
                        if request_line.starts_with("POST /v1/traces") {
                            store
                                .lock()
                                .unwrap()
                                .push(String::from_utf8_lossy(&body).into_owned());
                        }
                        let reply = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
                        if stream.write_all(reply.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Collector { port, bodies }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every span received so far: (trace id, span id, parent span id, name).
    fn spans(&self) -> Vec<(String, String, String, String)> {
        let mut out = Vec::new();
        for body in self.bodies.lock().unwrap().iter() {
            let value: serde_json::Value = serde_json::from_str(body).unwrap();
            for rs in value["resourceSpans"].as_array().into_iter().flatten() {
                for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                    for span in ss["spans"].as_array().into_iter().flatten() {
                        let text = |k: &str| span[k].as_str().unwrap_or("").to_string();
                        out.push((
                            text("traceId"),
                            text("spanId"),
                            text("parentSpanId"),
                            text("name"),
                        ));
                    }
                }
            }
        }
        out
    }

    fn wait_for(&self, name: &str) -> Vec<(String, String, String, String)> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let spans = self.spans();
            if spans.iter().any(|s| s.3 == name) || Instant::now() > deadline {
                return spans;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn a_pipeline_run_exports_its_pipeline_statement_and_connector_spans() {
    let collector = Collector::start();
    let dir = tempfile::tempdir().unwrap();
    let table = format!("fe_trace_{}", std::process::id());
    common::psql(&format!(
        "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id int); INSERT INTO {table} VALUES (1), (2);"
    ));
    let pipeline = common::write_pipeline(
        dir.path(),
        "traced.sql",
        &format!(
            "CREATE EXTERNAL TABLE src STORED AS POSTGRES LOCATION '{table}' \
             OPTIONS ('connection' 'postgresql://postgres@127.0.0.1:5432/test');\n\
             SELECT count(*) AS n FROM src;\n"
        ),
    );
    let out = common::flowengine()
        .arg("run")
        .arg(&pipeline)
        .env("FLOWENGINE_OTLP_ENDPOINT", collector.endpoint())
        .env("FLOWENGINE_LOG", "flowengine=info")
        .output()
        .unwrap();
    common::psql(&format!("DROP TABLE IF EXISTS {table};"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // The exporter flushed before the process exited.
    let spans = collector.spans();
    let names: BTreeSet<&str> = spans.iter().map(|s| s.3.as_str()).collect();
    for name in ["pipeline", "statement", "connector call"] {
        assert!(names.contains(name), "no `{name}` span in {spans:?}");
    }
    let pipeline_span = spans.iter().find(|s| s.3 == "pipeline").unwrap();
    let statements: Vec<_> = spans.iter().filter(|s| s.3 == "statement").collect();
    assert_eq!(statements.len(), 2, "{spans:?}");
    for s in &statements {
        assert_eq!(s.0, pipeline_span.0, "one trace per run");
        assert_eq!(
            s.2, pipeline_span.1,
            "statements are children of the pipeline"
        );
    }
    // The run's log names the same trace.
    assert!(
        stderr.contains(&format!("trace_id=\"{}\"", pipeline_span.0))
            || stderr.contains(&format!("trace_id={}", pipeline_span.0)),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flight_query_continues_the_callers_trace_in_metadata_logs_audit_and_spans() {
    let collector = Collector::start();
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let (key, sha) = common::api_key();
    let server = ServerProcess::start_with_env(
        &[common::flight::catalog().as_path()],
        &format!(
            "[security]\naudit_file = \"{}\"\n\n[[security.api_keys]]\nname = \"ops\"\n\
             key_sha256 = \"{sha}\"\nroles = [\"admin\"]\n",
            audit.display()
        ),
        &[
            ("FLOWENGINE_OTLP_ENDPOINT", collector.endpoint().as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ],
    );
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{trace}-00f067aa0ba902b7-01");
    let channel = tonic::transport::Channel::from_shared(server.uri())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = FlightServiceClient::new(channel);
    fn request<T>(message: T, key: &str, traceparent: &str) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
        request
            .metadata_mut()
            .insert("traceparent", traceparent.parse().unwrap());
        request
    }
    let command = CommandStatementQuery {
        query: "SELECT count(*) FROM orders".into(),
        transaction_id: None,
    };
    let descriptor = FlightDescriptor::new_cmd(command.as_any().encode_to_vec());
    let info = client
        .get_flight_info(request(descriptor, &key, &traceparent))
        .await
        .unwrap();
    assert_eq!(
        info.metadata()
            .get("x-flowengine-trace-id")
            .and_then(|v| v.to_str().ok()),
        Some(trace),
        "GetFlightInfo continues the caller's trace"
    );
    let ticket = info.into_inner().endpoint[0].ticket.clone().unwrap();
    let response = client
        .do_get(request(ticket, &key, &traceparent))
        .await
        .unwrap();
    assert_eq!(
        response
            .metadata()
            .get("x-flowengine-trace-id")
            .and_then(|v| v.to_str().ok()),
        Some(trace)
    );
    let mut stream = response.into_inner();
    while let Some(item) = futures::StreamExt::next(&mut stream).await {
        item.unwrap();
    }
    // The statement's log line and audit record carry the trace id.
    let log = server.wait_for_log("statement finished");
    assert!(log.contains(trace), "{log}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let record = loop {
        let text = std::fs::read_to_string(&audit).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains("\"rows\"")) {
            break line.to_string();
        }
        assert!(Instant::now() < deadline, "no statement record in {text}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        record.contains(&format!("\"trace_id\":\"{trace}\"")),
        "{record}"
    );
    // The spans reach the collector, in the caller's trace.
    let spans = collector.wait_for("query");
    let query = spans
        .iter()
        .find(|s| s.3 == "query")
        .unwrap_or_else(|| panic!("no query span in {spans:?}"));
    assert_eq!(query.0, trace);
    let calls: Vec<_> = spans.iter().filter(|s| s.3 == "flight call").collect();
    assert!(
        calls.iter().any(|c| c.1 == query.2),
        "the query runs inside its Flight call"
    );
    assert!(calls.iter().all(|c| c.0 == trace), "{calls:?}");
}
