//! Consuming queue tables against the real brokers on this machine: RabbitMQ (127.0.0.1:5672,
//! guest/guest) and Redis streams (127.0.0.1:6379). For each: 100,000 messages (1% malformed)
//! through a `--follow` pipeline into Parquet that is SIGKILLed midway and restarted (every valid
//! message arrives, every malformed one is dead-lettered, the queue ends fully acknowledged);
//! peeks that consume nothing; failed runs that give their messages back; `INSERT INTO`
//! publishing with confirms; both feed PostgreSQL with an upsert key, exactly once; a slow sink
//! slows consumption with bounded memory; `serve --follow` reports pipeline metrics.

mod common;

use common::queues::*;
use common::*;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;

const AMQP: &str = "127.0.0.1:5672";
const REDIS: &str = "127.0.0.1:6379";

async fn rabbit() -> lapin::Channel {
    let connection = lapin::Connection::connect(
        &format!("amqp://guest:guest@{AMQP}/%2f"),
        lapin::ConnectionProperties::default(),
    )
    .await
    .expect("RabbitMQ on 127.0.0.1:5672, guest/guest (see .ci/run)");
    let channel = connection.create_channel().await.unwrap();
    // The channel keeps its connection open.
    std::mem::forget(connection);
    channel
}

/// A new durable queue.
async fn queue(channel: &lapin::Channel) -> String {
    let name = format!("fe_{}", unique());
    channel
        .queue_declare(
            name.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    name
}

/// Messages ready in `queue` (none may be held unacknowledged by anyone for this to be all).
async fn ready(channel: &lapin::Channel, queue: &str) -> u32 {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap()
        .message_count()
}

/// Wait until `queue` holds `n` ready messages: released messages return to a queue
/// asynchronously after their channel closed.
async fn await_ready(channel: &lapin::Channel, queue: &str, n: u32) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let now = ready(channel, queue).await;
        if now == n {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{now} messages ready in {queue}, expected {n}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// `queue` is empty and stays so: nothing was left unacknowledged to come back.
async fn assert_drained(channel: &lapin::Channel, queue: &str) {
    assert_eq!(ready(channel, queue).await, 0);
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert_eq!(
        ready(channel, queue).await,
        0,
        "messages came back to {queue}"
    );
}

/// Publish test messages `from..to` to `queue` with confirms; the ids of the good ones.
async fn publish_rabbit(channel: &lapin::Channel, queue: &str, from: u64, to: u64) -> Vec<u64> {
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut confirms = Vec::new();
    for id in from..to {
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                payload(id).0.as_bytes(),
                lapin::BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap();
        confirms.push(confirm);
        if confirms.len() >= 2000 {
            for c in confirms.drain(..) {
                assert!(c.await.unwrap().is_ack());
            }
        }
    }
    for c in confirms {
        assert!(c.await.unwrap().is_ack());
    }
    good_ids(from, to)
}

async fn redis_connection() -> redis::aio::MultiplexedConnection {
    redis::Client::open(format!("redis://{REDIS}/"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("Redis on 127.0.0.1:6379 (see .ci/run)")
}

/// Append test messages `from..to` to stream `key` (payload in field `data`).
async fn publish_redis(
    con: &mut redis::aio::MultiplexedConnection,
    key: &str,
    from: u64,
    to: u64,
) -> Vec<u64> {
    let ids: Vec<u64> = (from..to).collect();
    for chunk in ids.chunks(1000) {
        let mut pipe = redis::pipe();
        for id in chunk {
            pipe.cmd("XADD")
                .arg(key)
                .arg("*")
                .arg("data")
                .arg(payload(*id).0)
                .arg("source")
                .arg("test");
        }
        let _: Vec<String> = pipe.query_async(con).await.unwrap();
    }
    good_ids(from, to)
}

/// Pending (delivered, unacknowledged) entries of `group` on stream `key`.
async fn redis_pending(con: &mut redis::aio::MultiplexedConnection, key: &str, group: &str) -> u64 {
    let v: redis::Value = redis::cmd("XPENDING")
        .arg(key)
        .arg(group)
        .query_async(con)
        .await
        .unwrap();
    match v {
        redis::Value::Array(items) => match items.first() {
            Some(redis::Value::Int(n)) => *n as u64,
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rabbitmq_follow_survives_sigkill_and_acknowledges_everything() {
    let channel = rabbit().await;
    let q = queue(&channel).await;
    let expected = publish_rabbit(&channel, &q, 0, 100_000).await;
    let (dir, out) = workdir();
    let dead = dir.path().join("bad.jsonl");
    let table = format!(
        "CREATE EXTERNAL TABLE src (id BIGINT NOT NULL, name VARCHAR) STORED AS RABBITMQ
           LOCATION 'amqp://{AMQP}/{q}'
           OPTIONS ('max_messages' '7000', 'on_error' 'dead_letter', 'dead_letter_path' '{}');",
        dead.display()
    );
    let more = async {
        let channel = rabbit().await;
        publish_rabbit(&channel, &q, 100_000, 105_000).await
    };
    follow_kill_restart(&table, dir.path(), &out, expected, more).await;
    let (bad, _) = dead_ids(&dead);
    let want_bad: Vec<u64> = (0..105_000).filter(|i| i % 100 == 7).collect();
    assert_eq!(bad.into_iter().collect::<Vec<_>>(), want_bad);
    // Acknowledged, not merely read: nothing is left or comes back.
    assert_drained(&channel, &q).await;
    channel
        .queue_delete(q.as_str().into(), Default::default())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn rabbitmq_peek_failed_runs_and_publishing() {
    let channel = rabbit().await;
    let q = queue(&channel).await;
    let table = format!(
        "CREATE EXTERNAL TABLE t (id BIGINT, name VARCHAR) STORED AS RABBITMQ
           LOCATION 'amqp://{AMQP}/{q}' OPTIONS ('message_id' 'id', 'idle_timeout_ms' '2000');"
    );
    // INSERT publishes with confirms.
    stdout_ok(&sql(&format!(
        "{table} INSERT INTO t (id, name) SELECT value, 'row ' || value FROM range(5000)"
    )));
    await_ready(&channel, &q, 5000).await;
    // A peek returns the first messages, with their metadata, and consumes nothing.
    let text = stdout_ok(&sql(&format!(
        "{table} SELECT id, name, _routing_key, _message_id, _redelivered FROM t LIMIT 3"
    )));
    assert!(
        text.ends_with(&format!(
            "id,name,_routing_key,_message_id,_redelivered\n0,row 0,{q},0,false\n1,row 1,{q},1,false\n2,row 2,{q},2,false\n"
        )),
        "{text}"
    );
    await_ready(&channel, &q, 5000).await;
    // A run whose later statement fails gives its messages back.
    let dir = tempfile::tempdir().unwrap();
    let failing = write_pipeline(
        dir.path(),
        "failing.sql",
        &format!(
            "{table}
             COPY (SELECT id, name FROM t) TO '{out}/copy.parquet' STORED AS PARQUET;
             SELECT * FROM no_such_table;",
            out = dir.path().display()
        ),
    );
    let run = flowengine().arg("run").arg(&failing).output().unwrap();
    assert!(!run.status.success());
    await_ready(&channel, &q, 5000).await;
    // A run that commits consumes them; they were delivered before, so they say so.
    let ok = write_pipeline(
        dir.path(),
        "ok.sql",
        &format!(
            "{table}
             COPY (SELECT id, name, _redelivered FROM t) TO '{out}/all.parquet' STORED AS PARQUET;",
            out = dir.path().display()
        ),
    );
    let run = flowengine().arg("run").arg(&ok).output().unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let ids = parquet_ids(&dir.path().join("all.parquet"));
    assert_eq!(ids, (0..5000).collect::<Vec<u64>>());
    assert_drained(&channel, &q).await;
    // Publishing where no queue listens fails clearly instead of dropping the rows.
    let err = sql(&format!(
        "CREATE EXTERNAL TABLE o (id BIGINT) STORED AS RABBITMQ LOCATION 'amqp://{AMQP}/{q}'
           OPTIONS ('routing_key' 'nobody-{q}');
         INSERT INTO o (id) VALUES (1)"
    ));
    assert!(!err.status.success());
    let text = String::from_utf8_lossy(&err.stderr);
    assert!(
        text.contains("RabbitMQ table `o`") && text.contains("no queue is bound"),
        "{text}"
    );
    // A wrong password fails clearly, without showing it.
    let err = sql(&format!(
        "CREATE EXTERNAL TABLE w (id BIGINT) STORED AS RABBITMQ LOCATION 'amqp://{AMQP}/{q}'
           OPTIONS ('user' 'guest', 'password' 'Wr0ngSecret');
         SELECT * FROM w"
    ));
    let text = String::from_utf8_lossy(&err.stderr);
    assert!(
        !err.status.success() && text.contains("cannot connect"),
        "{text}"
    );
    assert!(!text.contains("Wr0ngSecret"), "{text}");
    channel
        .queue_delete(q.as_str().into(), Default::default())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn rabbitmq_follow_into_postgres_upserts_exactly_once() {
    let channel = rabbit().await;
    let q = queue(&channel).await;
    let expected = publish_rabbit(&channel, &q, 0, 30_000).await;
    let source = format!(
        "CREATE EXTERNAL TABLE src (id BIGINT NOT NULL, name VARCHAR) STORED AS RABBITMQ
           LOCATION 'amqp://{AMQP}/{q}' OPTIONS ('max_messages' '3000', 'on_error' 'skip');"
    );
    follow_into_postgres_exactly_once(&source, &expected).await;
    assert_drained(&channel, &q).await;
    channel
        .queue_delete(q.as_str().into(), Default::default())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_stream_follow_into_postgres_upserts_exactly_once() {
    let mut con = redis_connection().await;
    let key = format!("fe_{}", unique());
    let expected = publish_redis(&mut con, &key, 0, 30_000).await;
    let source = format!(
        "CREATE EXTERNAL TABLE src (id BIGINT NOT NULL, name VARCHAR) STORED AS REDIS_STREAM
           LOCATION 'redis://{REDIS}/{key}' OPTIONS ('max_messages' '3000', 'on_error' 'skip');"
    );
    follow_into_postgres_exactly_once(&source, &expected).await;
    assert_eq!(redis_pending(&mut con, &key, "flowengine").await, 0);
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut con)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_stream_follow_survives_sigkill_and_acknowledges_everything() {
    let mut con = redis_connection().await;
    let key = format!("fe_{}", unique());
    let expected = publish_redis(&mut con, &key, 0, 100_000).await;
    let (dir, out) = workdir();
    let dead = dir.path().join("bad.jsonl");
    let table = format!(
        "CREATE EXTERNAL TABLE src (id BIGINT NOT NULL, name VARCHAR) STORED AS REDIS_STREAM
           LOCATION 'redis://{REDIS}/{key}'
           OPTIONS ('group' 'etl', 'max_messages' '7000', 'on_error' 'dead_letter', 'dead_letter_path' '{}');",
        dead.display()
    );
    let more = async {
        let mut con = redis_connection().await;
        publish_redis(&mut con, &key, 100_000, 105_000).await
    };
    follow_kill_restart(&table, dir.path(), &out, expected, more).await;
    let (bad, _) = dead_ids(&dead);
    let want_bad: Vec<u64> = (0..105_000).filter(|i| i % 100 == 7).collect();
    assert_eq!(bad.into_iter().collect::<Vec<_>>(), want_bad);
    assert_eq!(redis_pending(&mut con, &key, "etl").await, 0);
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut con)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_stream_peek_pending_and_fields_format() {
    let mut con = redis_connection().await;
    let key = format!("fe_{}", unique());
    let table = format!(
        "CREATE EXTERNAL TABLE t (id BIGINT, name VARCHAR) STORED AS REDIS_STREAM
           LOCATION 'redis://{REDIS}/{key}' OPTIONS ('format' 'fields');"
    );
    // INSERT appends one entry per row, a field per column.
    stdout_ok(&sql(&format!(
        "{table} INSERT INTO t (id, name) SELECT value, 'row ' || value FROM range(3000)"
    )));
    let len: u64 = redis::cmd("XLEN")
        .arg(&key)
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(len, 3000);
    let first: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(&key)
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut con)
        .await
        .unwrap();
    let entry = &first.ids[0];
    assert_eq!(
        redis::from_redis_value::<String>(entry.map["name"].clone()).unwrap(),
        "row 0"
    );
    // A peek reads the next entries and changes nothing in the group.
    let text = stdout_ok(&sql(&format!(
        "{table} SELECT id, name, _stream, _redelivered FROM t LIMIT 2"
    )));
    assert!(
        text.ends_with(&format!(
            "id,name,_stream,_redelivered\n0,row 0,{key},false\n1,row 1,{key},false\n"
        )),
        "{text}"
    );
    let dir = tempfile::tempdir().unwrap();
    // A run that fails after reading leaves every entry it read pending ...
    let failing = write_pipeline(
        dir.path(),
        "failing.sql",
        &format!(
            "{table}
             COPY (SELECT id FROM t WHERE id < 1000) TO '{out}/part.parquet' STORED AS PARQUET;
             SELECT * FROM no_such_table;",
            out = dir.path().display()
        ),
    );
    let run = flowengine().arg("run").arg(&failing).output().unwrap();
    assert!(!run.status.success());
    assert_eq!(redis_pending(&mut con, &key, "flowengine").await, 3000);
    // ... and the next run reads them first (redelivered), then acknowledges all of them.
    let pipeline = write_pipeline(
        dir.path(),
        "all.sql",
        &format!(
            "{table}
             COPY (SELECT id, name, _redelivered, _id FROM t ORDER BY id)
               TO '{out}/all.parquet' STORED AS PARQUET;",
            out = dir.path().display()
        ),
    );
    let run = flowengine().arg("run").arg(&pipeline).output().unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(
        parquet_ids(&dir.path().join("all.parquet")),
        (0..3000).collect::<Vec<u64>>()
    );
    assert_eq!(redis_pending(&mut con, &key, "flowengine").await, 0);
    let redelivered = stdout_ok(&sql(&format!(
        "CREATE EXTERNAL TABLE a STORED AS PARQUET LOCATION '{}/all.parquet';
         SELECT count(*) FILTER (WHERE _redelivered) AS r, count(*) AS n FROM a",
        dir.path().display()
    )));
    assert!(redelivered.ends_with("r,n\n3000,3000\n"), "{redelivered}");
    // Nothing new: a peek finds nothing.
    let again = stdout_ok(&sql(&format!("{table} SELECT count(*) AS n FROM t")));
    assert!(again.ends_with("n\n0\n"), "{again}");
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut con)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn rabbitmq_example_publishes_and_consumes_the_paid_orders() {
    let channel = rabbit().await;
    let q = format!("fe_example_{}", unique());
    let out = tempfile::tempdir().unwrap();
    let run = flowengine()
        .args(["run", "sql-examples/rabbitmq_orders.sql", "--format", "csv"])
        .args(["--var", &format!("QUEUE={q}"), "--var"])
        .arg(format!("OUT_DIR={}", out.path().display()))
        .output()
        .unwrap();
    let stdout = stdout_ok(&run);
    let paid: usize = stdout
        .lines()
        .nth(1)
        .and_then(|l| l.parse().ok())
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(paid > 100, "{stdout}");
    let ids = parquet_ids_named(
        &out.path().join("rabbitmq_orders/paid_orders.parquet"),
        "order_id",
    );
    assert_eq!(ids.len(), paid);
    assert_drained(&channel, &q).await;
    channel
        .queue_delete(q.as_str().into(), Default::default())
        .await
        .unwrap();
}

/// `flowengine serve --follow` runs a pipeline beside the Flight SQL server, counts its
/// micro-batches at /metrics, and finishes the current one on SIGTERM.
#[tokio::test(flavor = "multi_thread")]
async fn serve_follows_a_pipeline_and_reports_its_metrics() {
    let mut con = redis_connection().await;
    let key = format!("fe_{}", unique());
    let (dir, out) = workdir();
    let pipeline = write_pipeline(
        dir.path(),
        "serve_follow.sql",
        &format!(
            "CREATE EXTERNAL TABLE src (id BIGINT NOT NULL, name VARCHAR) STORED AS REDIS_STREAM
               LOCATION 'redis://{REDIS}/{key}' OPTIONS ('on_error' 'skip');
             COPY (SELECT id, name FROM src) TO '{out}/batch_${{batch}}.parquet' STORED AS PARQUET;",
            out = out.display()
        ),
    );
    let state = dir.path().join("state");
    let server = common::server::ServerProcess::start_with_args(
        &[],
        "",
        &[("FLOWENGINE_STATE_DIR", state.to_str().unwrap())],
        &["--follow", pipeline.to_str().unwrap(), "--interval", "0.2"],
    );
    let expected = publish_redis(&mut con, &key, 0, 2000).await;
    wait_for(120, "the published entries in Parquet", || {
        all_ids(&out, "batch_").len() >= expected.len()
    })
    .await;
    let name = pipeline.display().to_string();
    let acked =
        format!("flowengine_pipeline_messages_acknowledged_total{{pipeline=\"{name}\"}} 2000");
    let mut metrics = String::new();
    wait_for(30, "the acknowledgements in /metrics", || {
        metrics = common::server::http_get(server.admin, "/metrics").1;
        metrics.contains(&acked)
    })
    .await;
    for needle in [
        format!("flowengine_pipeline_batches_total{{pipeline=\"{name}\",status=\"committed\"}}"),
        format!("flowengine_pipeline_bad_records_total{{pipeline=\"{name}\"}} 20"),
        format!("flowengine_pipeline_rows_written_total{{pipeline=\"{name}\"}} 1980"),
        format!("flowengine_pipeline_backlog_messages{{pipeline=\"{name}\"}} 0"),
        format!("flowengine_pipeline_batch_duration_seconds_count{{pipeline=\"{name}\"}}"),
    ] {
        assert!(metrics.contains(&needle), "{needle} in\n{metrics}");
    }
    assert_eq!(all_ids(&out, "batch_"), expected);
    assert_eq!(redis_pending(&mut con, &key, "flowengine").await, 0);
    server.terminate();
    let mut server = server;
    let status = server.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut con)
        .await
        .unwrap();
}

/// Peak resident memory of process `pid` (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Backpressure: behind a slow sink (a PostgreSQL trigger that sleeps 2 ms per row), a
/// `--follow` pipeline over a 50,000-message backlog consumes at the sink's pace. The backlog
/// stays in the broker (at most one micro-batch is held unacknowledged) and the process's peak
/// memory stays small.
#[tokio::test(flavor = "multi_thread")]
async fn rabbitmq_slow_sink_slows_consumption_with_bounded_memory() {
    let channel = rabbit().await;
    let q = queue(&channel).await;
    let total = publish_rabbit(&channel, &q, 0, 50_000).await.len();
    let table = format!("fe_slow_{}", unique());
    psql(&format!(
        "CREATE TABLE {table} (id bigint PRIMARY KEY, name text);
         CREATE FUNCTION {table}_slow() RETURNS trigger AS $$
           BEGIN PERFORM pg_sleep(0.002); RETURN NEW; END $$ LANGUAGE plpgsql;
         CREATE TRIGGER slow BEFORE INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION {table}_slow();"
    ));
    let dir = tempfile::tempdir().unwrap();
    let pipeline = write_pipeline(
        dir.path(),
        "slow.sql",
        &format!(
            "CREATE EXTERNAL TABLE src (id BIGINT NOT NULL, name VARCHAR) STORED AS RABBITMQ
               LOCATION 'amqp://{AMQP}/{q}' OPTIONS ('max_messages' '1000', 'on_error' 'skip');
             CREATE EXTERNAL TABLE dst STORED AS POSTGRES LOCATION '{table}'
               OPTIONS ('connection' 'postgresql://postgres@127.0.0.1:5432/test', 'on_conflict' 'upsert:id');
             INSERT INTO dst SELECT id, name FROM src;"
        ),
    );
    let count = || {
        psql(&format!("SELECT count(*) FROM {table}"))
            .parse::<usize>()
            .unwrap()
    };
    let mut child = follow(&pipeline, &dir.path().join("state"));
    wait_for(120, "three slow micro-batches", || count() >= 2_500).await;
    let mut peak = 0;
    for _ in 0..20 {
        peak = peak.max(peak_rss(child.id()));
        let (written, waiting) = (count(), ready(&channel, &q).await as usize);
        // Everything not yet written is still in the queue, but for the one micro-batch the
        // pipeline holds (1,000 messages, of which 990 are valid) and the next it may read.
        assert!(
            waiting + written + 2 * 1_000 >= total,
            "{written} written, {waiting} waiting of {total}: consumption ran ahead of the sink"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    let written = count();
    assert!(written < total, "the sink was not slow");
    eprintln!(
        "slow sink: {written} of {total} written, peak RSS {} MiB",
        peak >> 20
    );
    assert!(peak > 0 && peak < 400 << 20, "peak RSS {} MiB", peak >> 20);
    child.kill().unwrap();
    child.wait().unwrap();
    psql(&format!(
        "DROP TABLE {table}; DROP FUNCTION {table}_slow();"
    ));
    channel
        .queue_delete(q.as_str().into(), Default::default())
        .await
        .unwrap();
}
