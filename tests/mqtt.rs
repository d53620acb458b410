//! MQTT tables against real Mosquitto brokers: the machine's (127.0.0.1:1883) for peeks,
//! publishing and failed runs; for the 100,000-message runs, a private Mosquitto on a free port
//! whose `max_queued_messages` holds the whole backlog (the default 1000 would make the broker
//! itself drop messages queued for a session while its pipeline is down). Its
//! `max_inflight_messages` stays at the default 20: the spool is what lets a micro-batch hold
//! thousands of messages.
//!
//! For each: a `--follow` pipeline into Parquet (and one into PostgreSQL with an upsert key)
//! is SIGKILLed midway and restarted; every valid message arrives (exactly once in PostgreSQL)
//! and every malformed one is dead-lettered.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::queues::*;
use common::*;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

const SYSTEM_BROKER: u16 = 1883;

/// A private Mosquitto on a free loopback port, stopped when dropped.
struct Mosquitto {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    fn start() -> Mosquitto {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 0\n"
            ),
        )
        .unwrap();
        let binary = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("mosquitto");
        let child = Command::new(binary)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto (Debian package mosquitto; see .ci/run)");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "mosquitto did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Mosquitto {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Publish test messages `from..to` (1% malformed) to `topic` at QoS 1, awaiting every PUBACK;
/// the ids of the good ones.
async fn publish(port: u16, topic: &str, from: u64, to: u64) -> Vec<u64> {
    let mut options = MqttOptions::new(format!("fe-test-{}", unique()), "127.0.0.1", port);
    options
        .set_inflight(500)
        .set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut events) = AsyncClient::new(options, 1000);
    let total = to - from;
    let driver = tokio::spawn(async move {
        let mut acked = 0;
        while acked < total {
            match events.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                Ok(_) => {}
                Err(e) => panic!("publishing to the broker: {e}"),
            }
        }
    });
    for id in from..to {
        client
            .publish(topic, QoS::AtLeastOnce, false, payload(id).0)
            .await
            .unwrap();
    }
    tokio::time::timeout(Duration::from_secs(120), driver)
        .await
        .expect("every PUBACK")
        .unwrap();
    good_ids(from, to)
}

/// Run `pipeline` once; its stderr.
fn run_ok(pipeline: &Path) -> String {
    let out = flowengine().arg("run").arg(pipeline).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A table over `topic` on `port` with its own session and spool under `dir`.
fn table(name: &str, port: u16, topic: &str, dir: &Path, extra: &str) -> String {
    format!(
        "CREATE EXTERNAL TABLE {name} (id BIGINT NOT NULL, name VARCHAR) STORED AS MQTT
           LOCATION 'mqtt://127.0.0.1:{port}/{topic}'
           OPTIONS ('client_id' 'fe-{id}', 'spool_dir' '{spool}', 'idle_timeout_ms' '1500'{extra});",
        id = &unique()[..12],
        spool = dir.join("spool").display(),
    )
}

/// Create the table's broker session (a session only receives what is published after it
/// subscribed): one peek, which finds nothing.
fn open_session(table: &str, name: &str) {
    let text = stdout_ok(&sql(&format!("{table} SELECT count(*) AS n FROM {name}")));
    assert!(text.ends_with("n\n0\n"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn mqtt_follow_survives_sigkill_with_the_default_inflight_window() {
    let broker = Mosquitto::start();
    let topic = format!("fe/{}/orders", unique());
    let (dir, out) = workdir();
    let dead = dir.path().join("bad.jsonl");
    let src = table(
        "src",
        broker.port,
        &topic,
        dir.path(),
        &format!(
            ", 'max_messages' '7000', 'on_error' 'dead_letter', 'dead_letter_path' '{}'",
            dead.display()
        ),
    );
    open_session(&src, "src");
    let expected = publish(broker.port, &topic, 0, 100_000).await;
    let more = publish(broker.port, &topic, 100_000, 105_000);
    follow_kill_restart(&src, dir.path(), &out, expected, more).await;
    let (bad, _) = dead_ids(&dead);
    let want_bad: Vec<u64> = (0..105_000).filter(|i| i % 100 == 7).collect();
    assert_eq!(bad.into_iter().collect::<Vec<_>>(), want_bad);
    // The spool kept nothing back: a peek finds no message left.
    let left = stdout_ok(&sql(&format!("{src} SELECT count(*) AS n FROM src")));
    assert!(left.ends_with("n\n0\n"), "{left}");
}

#[tokio::test(flavor = "multi_thread")]
async fn mqtt_follow_into_postgres_upserts_exactly_once() {
    let broker = Mosquitto::start();
    let topic = format!("fe/{}/pg", unique());
    let dir = tempfile::tempdir().unwrap();
    let src = table(
        "src",
        broker.port,
        &topic,
        dir.path(),
        ", 'max_messages' '3000', 'on_error' 'skip'",
    );
    open_session(&src, "src");
    let expected = publish(broker.port, &topic, 0, 30_000).await;
    follow_into_postgres_exactly_once(&src, &expected).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mqtt_peek_failed_runs_and_publishing_on_the_system_broker() {
    let topic = format!("fe/{}/t", unique());
    let dir = tempfile::tempdir().unwrap();
    let t = table("t", SYSTEM_BROKER, &topic, dir.path(), "");
    open_session(&t, "t");
    // INSERT publishes at QoS 1, done once the broker acknowledged every message (all 500
    // are consumed below).
    stdout_ok(&sql(&format!(
        "{t} INSERT INTO t (id, name) SELECT value, 'row ' || value FROM range(500)"
    )));
    // A peek with a LIMIT takes just that many into the spool, consuming nothing.
    let text = stdout_ok(&sql(&format!(
        "{t} SELECT id, name, _topic, _spool_seq, _properties, _redelivered FROM t LIMIT 3"
    )));
    assert!(
        text.ends_with(&format!(
            "id,name,_topic,_spool_seq,_properties,_redelivered\n\
             0,row 0,{topic},1,\"{{\"\"qos\"\":1,\"\"retain\"\":false}}\",false\n\
             1,row 1,{topic},2,\"{{\"\"qos\"\":1,\"\"retain\"\":false}}\",false\n\
             2,row 2,{topic},3,\"{{\"\"qos\"\":1,\"\"retain\"\":false}}\",false\n"
        )),
        "{text}"
    );
    // A run whose later statement fails keeps every message it read.
    let failing = write_pipeline(
        dir.path(),
        "failing.sql",
        &format!(
            "{t}
             COPY (SELECT id, name FROM t) TO '{out}/copy.parquet' STORED AS PARQUET;
             SELECT * FROM no_such_table;",
            out = dir.path().display()
        ),
    );
    let run = flowengine().arg("run").arg(&failing).output().unwrap();
    assert!(!run.status.success());
    // A run that commits consumes them all; those read before say so.
    let ok = write_pipeline(
        dir.path(),
        "ok.sql",
        &format!(
            "{t}
             COPY (SELECT id, name, _redelivered FROM t) TO '{out}/all.parquet' STORED AS PARQUET;",
            out = dir.path().display()
        ),
    );
    run_ok(&ok);
    assert_eq!(
        parquet_ids(&dir.path().join("all.parquet")),
        (0..500).collect::<Vec<u64>>()
    );
    let redelivered = stdout_ok(&sql(&format!(
        "CREATE EXTERNAL TABLE a STORED AS PARQUET LOCATION '{}/all.parquet';
         SELECT count(*) FILTER (WHERE _redelivered) AS r, count(*) AS n FROM a",
        dir.path().display()
    )));
    assert!(redelivered.ends_with("r,n\n500,500\n"), "{redelivered}");
    let again = stdout_ok(&sql(&format!("{t} SELECT count(*) AS n FROM t")));
    assert!(again.ends_with("n\n0\n"), "{again}");
    // Clear errors: publishing to a topic filter, and a broker that is not there.
    let err = sql(&format!(
        "CREATE EXTERNAL TABLE w (id BIGINT) STORED AS MQTT LOCATION 'mqtt://127.0.0.1:{SYSTEM_BROKER}/fe/+/x';
         INSERT INTO w (id) VALUES (1)"
    ));
    let text = String::from_utf8_lossy(&err.stderr);
    assert!(
        !err.status.success() && text.contains("has wildcards"),
        "{text}"
    );
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = sql(&format!(
        "CREATE EXTERNAL TABLE d (id BIGINT) STORED AS MQTT LOCATION 'mqtt://127.0.0.1:{closed}/x'
           OPTIONS ('spool_dir' '{}', 'password' 'S3cretPw', 'user' 'u');
         SELECT * FROM d",
        dir.path().join("d").display()
    ));
    let text = String::from_utf8_lossy(&err.stderr);
    assert!(
        !err.status.success() && text.contains("MQTT table `d`") && text.contains("cannot connect"),
        "{text}"
    );
    assert!(!text.contains("S3cretPw"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn mqtt_example_publishes_and_consumes_the_orders() {
    let out = tempfile::tempdir().unwrap();
    let run = flowengine()
        .args(["run", "sql-examples/mqtt_orders.sql", "--format", "csv"])
        .args(["--var", &format!("TOPIC=fe/{}/orders", unique())])
        .args(["--var", &format!("CLIENT_ID=fe-ex-{}", &unique()[..10])])
        .arg("--var")
        .arg(format!("OUT_DIR={}", out.path().display()))
        .output()
        .unwrap();
    let stdout = stdout_ok(&run);
    let orders: usize = stdout
        .lines()
        .nth(1)
        .and_then(|l| l.parse().ok())
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(orders > 100, "{stdout}");
    let ids = parquet_ids_named(
        &out.path().join("mqtt_orders/order_events.parquet"),
        "order_id",
    );
    assert_eq!(ids.len(), orders, "each order once");
}
