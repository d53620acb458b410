//! Flight SQL test helpers: a tuned arrow-rs client for a `ServerProcess`, fetching results,
//! and waiting for the server to go idle.

use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow_flight::FlightInfo;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::sql::client::FlightSqlServiceClient;
use futures::TryStreamExt;
use tonic::transport::Channel;

use super::server::{ServerProcess, http_get};

const LIMIT: usize = 256 * 1024 * 1024;

pub(crate) fn catalog() -> std::path::PathBuf {
    super::repo("sql-examples/serve_catalog.sql")
}

pub(crate) fn start() -> ServerProcess {
    ServerProcess::start(&[catalog().as_path()], "")
}

pub(crate) async fn client(server: &ServerProcess) -> FlightSqlServiceClient<Channel> {
    let channel = Channel::from_shared(server.uri())
        .unwrap()
        .connect()
        .await
        .expect("connect");
    let inner = FlightServiceClient::new(channel)
        .max_decoding_message_size(LIMIT)
        .max_encoding_message_size(LIMIT);
    FlightSqlServiceClient::new_from_inner(inner)
}

pub(crate) async fn fetch(
    client: &mut FlightSqlServiceClient<Channel>,
    info: FlightInfo,
) -> Result<Vec<RecordBatch>, tonic::Status> {
    let mut out = Vec::new();
    for endpoint in info.endpoint {
        let ticket = endpoint.ticket.expect("ticket");
        let stream = client.do_get(ticket).await.map_err(status)?;
        out.extend(stream.try_collect::<Vec<_>>().await.map_err(status)?);
    }
    Ok(out)
}

pub(crate) async fn query(
    client: &mut FlightSqlServiceClient<Channel>,
    sql: &str,
) -> Result<Vec<RecordBatch>, tonic::Status> {
    let info = client
        .execute(sql.to_string(), None)
        .await
        .map_err(status)?;
    fetch(client, info).await
}

pub(crate) fn status(e: arrow_flight::error::FlightError) -> tonic::Status {
    match e {
        arrow_flight::error::FlightError::Tonic(s) => *s,
        other => tonic::Status::unknown(other.to_string()),
    }
}

pub(crate) fn rows(batches: &[RecordBatch]) -> usize {
    batches.iter().map(|b| b.num_rows()).sum()
}

/// Wait until the server reports no active queries.
pub(crate) async fn wait_idle(server: &ServerProcess) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, metrics) = http_get(server.admin, "/metrics");
        if metrics.contains("flowengine_active_queries 0") {
            return;
        }
        assert!(Instant::now() < deadline, "query still active:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
