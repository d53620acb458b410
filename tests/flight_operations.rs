//! Flight SQL server operations with a real client: streaming without materialising, admission
//! control under 32 concurrent clients, the admin endpoint and query log, graceful shutdown, query
//! timeouts and ticket expiry.

mod common;

use std::time::{Duration, Instant};

use common::flight::*;
use common::server::{ServerProcess, http_get};
use futures::{StreamExt, TryStreamExt};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_million_rows_stream_without_materialising() {
    let server = start();
    let mut c = client(&server).await;
    // ~1.3 GB of Arrow data; the server must stay far below that.
    let info = c
        .execute(
            "SELECT value, repeat('x', 120) AS pad FROM range(10000000)".into(),
            None,
        )
        .await
        .unwrap();
    let mut stream = c
        .do_get(info.endpoint[0].ticket.clone().unwrap())
        .await
        .unwrap();
    let mut n = 0usize;
    let mut max_rss = 0;
    while let Some(batch) = stream.next().await {
        n += batch.unwrap().num_rows();
        if n % 1_000_000 < 10_000 {
            max_rss = max_rss.max(server.rss_bytes());
        }
    }
    assert_eq!(n, 10_000_000);
    assert!(
        max_rss < 600 * 1024 * 1024,
        "server RSS reached {} MB while streaming",
        max_rss / 1024 / 1024
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_concurrent_clients_complete_or_are_refused() {
    let server = ServerProcess::start(
        &[catalog().as_path()],
        "memory_limit = \"512MiB\"\n[server]\nmax_concurrent_queries = 2\nmax_queued_queries = 8\n",
    );
    let mut tasks = Vec::new();
    for i in 0..32 {
        let mut c = client(&server).await;
        tasks.push(tokio::spawn(async move {
            let sql = match i % 4 {
                0 => "SELECT country, sum(revenue) FROM revenue_by_country GROUP BY country",
                1 => "SELECT count(*) FROM range(20000000) WHERE value % 5 = 1",
                2 => "SELECT o.order_id, c.name FROM orders o JOIN customers c USING (customer_id) ORDER BY 1",
                _ => "SELECT * FROM orders WHERE quantity > 2",
            };
            query(&mut c, sql).await.map(|b| rows(&b))
        }));
    }
    let mut ok = 0;
    let mut refused = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(n) => {
                assert!(n > 0);
                ok += 1;
            }
            Err(e) => {
                assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
                refused += 1;
            }
        }
    }
    assert_eq!(ok + refused, 32);
    assert!(ok >= 10, "ok={ok} refused={refused}");
    let (code, _) = http_get(server.admin, "/health");
    assert_eq!(code, 200);
    let (_, metrics) = http_get(server.admin, "/metrics");
    assert!(
        metrics.contains("status=\"rejected\"") || refused == 0,
        "{metrics}"
    );
    // The pool (512 MiB) bounded the queries; the process stayed within it plus overhead.
    assert!(
        server.rss_bytes() < 1024 * 1024 * 1024,
        "server RSS {} MB",
        server.rss_bytes() / 1024 / 1024
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoint_health_ready_metrics_and_query_log() {
    let server = start();
    let mut c = client(&server).await;
    assert_eq!(http_get(server.admin, "/health").0, 200);
    assert_eq!(http_get(server.admin, "/ready").0, 200);
    query(&mut c, "SELECT * FROM orders").await.unwrap();
    let _ = query(&mut c, "SELECT * FROM nope").await;
    // A database that refuses connections: the connector retries twice, then gives up; the
    // retries are counted.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let refused = query(
        &mut c,
        &format!(
            "CREATE EXTERNAL TABLE down STORED AS POSTGRES LOCATION 't' OPTIONS ('host' '127.0.0.1', 'port' '{closed}', 'retries' '2', 'retry_backoff_ms' '10')"
        ),
    )
    .await;
    assert!(refused.is_err(), "{refused:?}");
    let (code, metrics) = http_get(server.admin, "/metrics");
    assert_eq!(code, 200);
    for needle in [
        "flowengine_queries_total{kind=\"query\",status=\"ok\"}",
        "flowengine_queries_total{kind=\"query\",status=\"error\"}",
        "flowengine_query_duration_seconds_bucket",
        "flowengine_rows_streamed_total 1000",
        "flowengine_bytes_streamed_total",
        "flowengine_active_queries",
        "flowengine_queued_queries",
        "flowengine_memory_pool_reserved_bytes",
        "flowengine_memory_pool_limit_bytes",
        "flowengine_build_info",
        "flowengine_connector_retries_total 2",
        "flowengine_connector_circuits_opened_total 0",
        "flowengine_connector_fast_failures_total 0",
    ] {
        assert!(metrics.contains(needle), "missing {needle} in:\n{metrics}");
    }
    // Planning errors are counted too: "SELECT * FROM nope" never reached execution.
    let log = server.wait_for_log("statement finished");
    assert!(log.contains("statement finished"), "{log}");
    assert!(log.contains("query_id="), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_queries_finish_then_exits_zero() {
    let mut server = start();
    let mut c = client(&server).await;
    let info = c
        .execute(
            "SELECT count(*) FROM range(60000000) WHERE value % 11 = 1".into(),
            None,
        )
        .await
        .unwrap();
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let mut c2 = client(&server).await;
    let running = tokio::spawn(async move {
        let s = c2.do_get(ticket).await.map_err(status)?;
        s.try_collect::<Vec<_>>().await.map_err(status)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.terminate();
    let batches = running.await.unwrap().expect("in-flight query completes");
    assert_eq!(rows(&batches), 1);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = server.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "server did not exit");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_timeout_and_ticket_expiry() {
    let server = ServerProcess::start(
        &[catalog().as_path()],
        "[server]\nquery_timeout_secs = 1\nticket_ttl_secs = 1\n",
    );
    let mut c = client(&server).await;
    let err = query(
        &mut c,
        "SELECT count(*) FROM range(3000000000) WHERE value % 7 = 3",
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    // A ticket not redeemed within its lifetime is gone.
    let info = c.execute("SELECT 1".into(), None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let err = c
        .do_get(info.endpoint[0].ticket.clone().unwrap())
        .await
        .unwrap_err();
    assert_eq!(status(err).code(), Code::NotFound);
    let (_, metrics) = http_get(server.admin, "/metrics");
    assert!(
        metrics.contains("flowengine_queries_total{kind=\"query\",status=\"timeout\"} 1"),
        "{metrics}"
    );
}
