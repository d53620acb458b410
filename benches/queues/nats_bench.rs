//! The baseline of `benches/queues.py`: publishes the benchmark's messages, and consumes them
//! with a bare async-nats loop that only acknowledges (a durable pull consumer, explicit ack per
//! message), so the harness can set FlowEngine's NATS -> Parquet rate against it.
//!
//! ```text
//! nats_bench publish SERVER STREAM SUBJECT COUNT   # a new stream of 200-byte JSON messages
//! nats_bench consume SERVER STREAM SUBJECT COUNT   # prints seconds taken for COUNT messages
//! nats_bench delete SERVER STREAM
//! ```

use std::time::Instant;

use async_nats::jetstream;
use async_nats::jetstream::consumer::{AckPolicy, pull};
use futures::StreamExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("publish") if args.len() == 6 => {
            publish(&args[2], &args[3], &args[4], args[5].parse()?).await
        }
        Some("consume") if args.len() == 6 => {
            consume(&args[2], &args[3], &args[4], args[5].parse()?).await
        }
        Some("delete") if args.len() == 4 => {
            let js = jetstream::new(async_nats::connect(&args[2]).await?);
            js.delete_stream(&args[3]).await?;
            Ok(())
        }
        _ => Err("usage: nats_bench publish SERVER STREAM SUBJECT COUNT | consume SERVER STREAM SUBJECT COUNT | delete SERVER STREAM".into()),
    }
}

/// A 200-byte JSON message (id, name, amount and padding).
fn message(id: u64) -> Vec<u8> {
    let head = format!(
        "{{\"id\":{id},\"name\":\"customer {}\",\"amount\":{}.{:02},\"pad\":\"",
        id % 10_000,
        id % 977,
        id % 100
    );
    let mut m = head.into_bytes();
    while m.len() < 198 {
        m.push(b'x');
    }
    m.extend_from_slice(b"\"}");
    m
}

async fn publish(
    server: &str,
    stream: &str,
    subject: &str,
    count: u64,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let js = jetstream::new(async_nats::connect(server).await?);
    let _ = js.delete_stream(stream).await;
    js.create_stream(jetstream::stream::Config {
        name: stream.to_string(),
        subjects: vec![subject.to_string()],
        ..Default::default()
    })
    .await?;
    let mut acks = Vec::with_capacity(4096);
    for id in 0..count {
        acks.push(js.publish(subject.to_string(), message(id).into()).await?);
        if acks.len() == 4096 {
            for a in acks.drain(..) {
                a.await?;
            }
        }
    }
    for a in acks {
        a.await?;
    }
    Ok(())
}

async fn consume(
    server: &str,
    stream: &str,
    subject: &str,
    count: u64,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let js = jetstream::new(async_nats::connect(server).await?);
    let stream = js.get_stream(stream).await?;
    let name = format!("bare_{}", std::process::id());
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some(name.clone()),
            filter_subject: subject.to_string(),
            ack_policy: AckPolicy::Explicit,
            ..Default::default()
        })
        .await?;
    let started = Instant::now();
    let mut messages = consumer.messages().await?;
    let mut seen = 0u64;
    while seen < count {
        let Some(m) = messages.next().await else {
            break;
        };
        m?.ack().await?;
        seen += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    stream.delete_consumer(&name).await?;
    println!("{{\"messages\": {seen}, \"seconds\": {secs}}}");
    Ok(())
}
