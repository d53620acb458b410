//! Message-queue tables against the real brokers on this machine. NATS JetStream
//! (127.0.0.1:4222): bounded reads into Parquet with 1% malformed messages dead-lettered,
//! incremental runs that take only new messages, peeking without consuming, and `INSERT INTO`
//! publishing with acknowledgements (and de-duplication by message id).

mod common;

use std::path::Path;

use async_nats::jetstream;
use common::queues::{all_ids, parquet_ids, unique};
use common::*;

const NATS: &str = "127.0.0.1:4222";

/// A fresh stream `FE_<id>` over subjects `fe.<id>.>` (each test deletes its own).
async fn stream() -> (jetstream::Context, String, String) {
    let client = async_nats::connect(NATS)
        .await
        .expect("NATS with JetStream on 127.0.0.1:4222 (see .ci/run)");
    let js = jetstream::new(client);
    let id = unique();
    let name = format!("FE_{id}");
    js.create_stream(jetstream::stream::Config {
        name: name.clone(),
        subjects: vec![format!("fe.{id}.>")],
        ..Default::default()
    })
    .await
    .unwrap();
    (js, name, format!("fe.{id}"))
}

/// Publish ids `from..to` to `subject`; every 100th is malformed (alternately not JSON and a
/// wrong type). Returns the ids of the good ones.
async fn publish(js: &jetstream::Context, subject: &str, from: u64, to: u64) -> Vec<u64> {
    let mut good = Vec::new();
    let mut acks = Vec::new();
    for id in from..to {
        let (payload, ok) = common::queues::payload(id);
        if ok {
            good.push(id);
        }
        acks.push(
            js.publish(subject.to_string(), payload.into())
                .await
                .unwrap(),
        );
        if acks.len() >= 2000 {
            for a in acks.drain(..) {
                a.await.unwrap();
            }
        }
    }
    for a in acks {
        a.await.unwrap();
    }
    good
}

fn run(pipeline: &Path, vars: &[(&str, &str)]) -> String {
    let mut cmd = flowengine();
    cmd.arg("run").arg(pipeline);
    for (k, v) in vars {
        cmd.args(["--var", &format!("{k}={v}")]);
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    stderr
}

#[tokio::test(flavor = "multi_thread")]
async fn nats_bounded_runs_take_new_messages_and_dead_letter_bad_ones() {
    let (js, name, prefix) = stream().await;
    let subject = format!("{prefix}.events");
    let dir = tempfile::tempdir().unwrap();
    let dead = dir.path().join("bad.jsonl");
    let expected = publish(&js, &subject, 0, 100_000).await;
    let pipeline = write_pipeline(
        dir.path(),
        "events.sql",
        &format!(
            "CREATE EXTERNAL TABLE events (id BIGINT NOT NULL, name VARCHAR) STORED AS NATS
               LOCATION 'nats://{NATS}/{subject}'
               OPTIONS ('on_error' 'dead_letter', 'dead_letter_path' '{dead}');
             CREATE INCREMENTAL VIEW new_events ON events BY _sequence;
             COPY (SELECT id, name, _sequence, _subject FROM new_events)
               TO '{out}/run_${{run}}.parquet' STORED AS PARQUET;",
            dead = dead.display(),
            out = dir.path().display()
        ),
    );
    let stderr = run(&pipeline, &[("run", "1")]);
    let first = parquet_ids(&dir.path().join("run_1.parquet"));
    assert_eq!(first.len(), 99_000, "{stderr}");
    assert_eq!(first, expected);
    let dead_lines = std::fs::read_to_string(&dead).unwrap();
    assert_eq!(dead_lines.lines().count(), 1000);
    assert!(
        dead_lines
            .lines()
            .all(|l| l.contains("\"reason\"") && l.contains(&subject))
    );

    // Peeking consumes nothing: the next run still sees exactly the new messages.
    let peek = flowengine()
        .args(["sql", "--format", "csv", "-c"])
        .arg(format!(
            "CREATE EXTERNAL TABLE e (id BIGINT, name VARCHAR) STORED AS NATS LOCATION 'nats://{NATS}/{subject}'
               OPTIONS ('on_error' 'skip');
             SELECT id, _sequence FROM e ORDER BY _sequence LIMIT 3"
        ))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&peek.stdout);
    assert!(
        peek.status.success(),
        "{}",
        String::from_utf8_lossy(&peek.stderr)
    );
    assert!(text.ends_with("id,_sequence\n0,1\n1,2\n2,3\n"), "{text}");

    // New messages (1% bad again): the second run takes only those.
    let more = publish(&js, &subject, 100_000, 101_000).await;
    run(&pipeline, &[("run", "2")]);
    let second = parquet_ids(&dir.path().join("run_2.parquet"));
    assert_eq!(second, more);
    let dead_lines = std::fs::read_to_string(&dead).unwrap();
    assert_eq!(dead_lines.lines().count(), 1010);
    // Nothing new: an empty third run.
    run(&pipeline, &[("run", "3")]);
    assert!(parquet_ids(&dir.path().join("run_3.parquet")).is_empty());
    js.delete_stream(&name).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn nats_insert_publishes_acknowledged_messages_once_per_id() {
    let (js, name, prefix) = stream().await;
    let subject = format!("{prefix}.out");
    let table = format!(
        "CREATE EXTERNAL TABLE out_t (id BIGINT, name VARCHAR) STORED AS NATS
           LOCATION 'nats://{NATS}/{subject}' OPTIONS ('message_id' 'id');"
    );
    let insert = format!(
        "{table} INSERT INTO out_t (id, name) SELECT value, 'row ' || value FROM range(5000)"
    );
    for _ in 0..2 {
        let out = flowengine()
            .args(["sql", "--format", "csv", "-c", &insert])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // JetStream acknowledged all 5000, and dropped the second statement's duplicates.
    let mut s = js.get_stream(&name).await.unwrap();
    assert_eq!(s.info().await.unwrap().state.messages, 5000);
    let read = flowengine()
        .args(["sql", "--format", "csv", "-c"])
        .arg(format!(
            "{table} SELECT count(*) AS n, count(DISTINCT id) AS d, max(name) AS m FROM out_t"
        ))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&read.stdout);
    assert!(
        text.ends_with("n,d,m\n5000,5000,row 999\n"),
        "{text}{}",
        String::from_utf8_lossy(&read.stderr)
    );

    // Publishing to a subject no stream captures fails clearly.
    let orphan = flowengine()
        .args(["sql", "-c"])
        .arg(format!(
            "CREATE EXTERNAL TABLE o (id BIGINT) STORED AS NATS LOCATION 'nats://{NATS}/nobody.listens.{prefix}';
             INSERT INTO o (id) VALUES (1)"
        ))
        .output()
        .unwrap();
    assert!(!orphan.status.success());
    let err = String::from_utf8_lossy(&orphan.stderr);
    assert!(err.contains("NATS table `o`"), "{err}");
    js.delete_stream(&name).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn nats_follow_survives_sigkill_without_losing_messages() {
    let (js, name, prefix) = stream().await;
    let subject = format!("{prefix}.live");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let dead = dir.path().join("bad.jsonl");
    let expected = publish(&js, &subject, 0, 100_000).await;
    let pipeline = write_pipeline(
        dir.path(),
        "live.sql",
        &format!(
            "CREATE EXTERNAL TABLE live (id BIGINT NOT NULL, name VARCHAR) STORED AS NATS
               LOCATION 'nats://{NATS}/{subject}'
               OPTIONS ('max_messages' '7000', 'on_error' 'dead_letter', 'dead_letter_path' '{dead}');
             CREATE INCREMENTAL VIEW new_live ON live BY _sequence;
             COPY (SELECT id, name FROM new_live) TO '{out}/batch_${{batch}}.parquet' STORED AS PARQUET;",
            dead = dead.display(),
            out = out.display()
        ),
    );
    let start = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_flowengine"))
            .args(["run", "--follow", "--interval", "0.2"])
            .arg(&pipeline)
            .env(
                "FLOWENGINE_STATE_DIR",
                dir.path().join("state").to_str().unwrap(),
            )
            .env_remove("FLOWENGINE_CONFIG")
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    // Kill the first process once a few micro-batches committed, mid-way through the stream.
    let mut first = start();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while all_ids(&out, "batch_").len() < 20_000 {
        assert!(std::time::Instant::now() < deadline, "no progress");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    let at_kill = all_ids(&out, "batch_").len();
    assert!(
        at_kill < expected.len(),
        "finished before the kill: {at_kill}"
    );
    // Messages published while it is down arrive too.
    let more = publish(&js, &subject, 100_000, 105_000).await;
    let mut second = start();
    let total = expected.len() + more.len();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
    loop {
        let mut ids = all_ids(&out, "batch_");
        ids.dedup();
        if ids.len() >= total {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "only {} of {total} distinct ids arrived",
            ids.len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // SIGTERM: stops after the current micro-batch, exit 0.
    let pid = second.id().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let status = second.wait().unwrap();
    assert!(status.success(), "{status:?}");
    // Every valid message at least once, nothing else; no unfinished file looks complete.
    let mut ids = all_ids(&out, "batch_");
    ids.dedup();
    let mut want = expected.clone();
    want.extend(more);
    assert_eq!(ids, want);
    for e in std::fs::read_dir(&out).unwrap().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        assert!(
            n.starts_with("batch_") && n.ends_with(".parquet"),
            "stray file {n}"
        );
    }
    // Every malformed message is in the dead-letter file (at least once).
    let dead_text = std::fs::read_to_string(&dead).unwrap();
    let bad: std::collections::BTreeSet<u64> = dead_text
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["offset"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(bad.len(), 1050, "distinct dead-lettered sequences");
    // Idle polls are not recorded: every succeeded run in the journal wrote one file (the killed
    // run may have written one before it could record its end).
    let runs = flowengine()
        .args(["runs", "--limit", "100000", "--format", "csv"])
        .arg(&pipeline)
        .env("FLOWENGINE_STATE_DIR", dir.path().join("state"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&runs.stdout);
    let succeeded = text.lines().filter(|l| l.contains("succeeded")).count();
    let files = std::fs::read_dir(&out).unwrap().count();
    assert!(
        succeeded > 0 && (succeeded..=succeeded + 1).contains(&files),
        "{files} files:\n{text}"
    );
    js.delete_stream(&name).await.unwrap();
}

/// Into PostgreSQL with an upsert key, a killed and restarted `--follow` pipeline delivers each
/// message exactly once: replayed messages overwrite their own rows.
#[tokio::test(flavor = "multi_thread")]
async fn nats_follow_into_postgres_upserts_exactly_once() {
    let (js, name, prefix) = stream().await;
    let subject = format!("{prefix}.pg");
    let table = format!("fe_nats_{}", unique());
    psql(&format!(
        "CREATE TABLE {table} (id bigint PRIMARY KEY, name text, seq bigint NOT NULL)"
    ));
    let dir = tempfile::tempdir().unwrap();
    let expected = publish(&js, &subject, 0, 30_000).await;
    let pipeline = write_pipeline(
        dir.path(),
        "pg.sql",
        &format!(
            "CREATE EXTERNAL TABLE src (id BIGINT NOT NULL, name VARCHAR) STORED AS NATS
               LOCATION 'nats://{NATS}/{subject}' OPTIONS ('max_messages' '3000', 'on_error' 'skip');
             CREATE INCREMENTAL VIEW new_src ON src BY _sequence;
             CREATE EXTERNAL TABLE dst STORED AS POSTGRES LOCATION '{table}'
               OPTIONS ('connection' 'postgresql://postgres@127.0.0.1:5432/test', 'on_conflict' 'upsert:id');
             INSERT INTO dst SELECT id, name, CAST(_sequence AS BIGINT) AS seq FROM new_src;"
        ),
    );
    let start = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_flowengine"))
            .args(["run", "--follow", "--interval", "0.2"])
            .arg(&pipeline)
            .env("FLOWENGINE_STATE_DIR", dir.path().join("state"))
            .env_remove("FLOWENGINE_CONFIG")
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let count = || {
        psql(&format!("SELECT count(*) FROM {table}"))
            .parse::<usize>()
            .unwrap()
    };
    let mut first = start();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while count() < 6_000 {
        assert!(std::time::Instant::now() < deadline, "no progress");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(count() < expected.len(), "finished before the kill");
    let mut second = start();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
    while count() < expected.len() {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} rows",
            count()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let pid = second.id().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(second.wait().unwrap().success());
    assert_eq!(
        psql(&format!(
            "SELECT count(*), count(DISTINCT id), min(id), max(id), sum(id) FROM {table}"
        )),
        format!(
            "{n}|{n}|0|29999|{sum}",
            n = expected.len(),
            sum = expected.iter().sum::<u64>()
        )
    );
    psql(&format!("DROP TABLE {table}"));
    js.delete_stream(&name).await.unwrap();
}

#[test]
fn follow_without_an_incremental_view_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_pipeline(
        dir.path(),
        "plain.sql",
        "CREATE TABLE t AS VALUES (1); SELECT * FROM t;",
    );
    let started = std::time::Instant::now();
    let out = flowengine()
        .args(["run", "--follow"])
        .arg(&p)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--follow needs a CREATE INCREMENTAL VIEW"),
        "{err}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
}
