//! Message acknowledgements held back until a run has committed what it wrote.
//!
//! Queue tables that consume (RabbitMQ queues, Redis consumer groups, MQTT sessions) do not
//! acknowledge the messages a scan reads. Each finished scan hands the ledger a [`PendingAck`];
//! the runner decides what becomes of it:
//!
//! * the statement that read it wrote somewhere (`INSERT`, `COPY`, `CREATE TABLE AS`): the ack
//!   is staged, and committed only after the whole run (every sink and the watermarks) has
//!   committed ([`AckLedger::commit`]): at-least-once, since a crash between the two repeats the
//!   messages, never loses them;
//! * it only queried (a peek such as `SELECT ... LIMIT 10`), or the run failed: the messages
//!   are released, so the broker delivers them again.
//!
//! A session whose ledger is not [`enabled`](AckLedger::enable) (the Flight SQL server, `flowengine
//! sql`) releases every ack at once: queries there are always peeks.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use async_trait::async_trait;

/// Messages one scan read and has not acknowledged.
#[async_trait]
pub trait PendingAck: Send + Sync {
    /// What the messages came from, for messages ("RabbitMQ queue `orders`").
    fn source(&self) -> String;
    /// How many messages acknowledging would consume.
    fn messages(&self) -> u64;
    /// Acknowledge every message: the broker may forget them.
    async fn commit(self: Box<Self>) -> Result<(), String>;
    /// Give the messages back: the broker delivers them again (also what dropping does, once
    /// the connection closes).
    async fn release(self: Box<Self>);
}

/// The acknowledgements of one session's scans (a session config extension).
#[derive(Default)]
pub struct AckLedger {
    enabled: AtomicBool,
    /// Scans of the running statement.
    pending: Mutex<Vec<Box<dyn PendingAck>>>,
    /// Scans of statements that wrote: committed with the run.
    staged: Mutex<Vec<Box<dyn PendingAck>>>,
    /// Whether any consuming scan ran in this session.
    consumed_from: AtomicU64,
    /// Messages left in the sources after this session's scans (the lag), per source.
    backlog: Mutex<std::collections::BTreeMap<String, u64>>,
}

impl std::fmt::Debug for AckLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AckLedger")
            .field("enabled", &self.enabled.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl AckLedger {
    /// Hold acks for the runner to settle (a pipeline run); otherwise every ack is released.
    pub fn enable(&self) {
        self.enabled.store(true, Ordering::Release);
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    /// A scan finished reading: hold its ack, or release it when acks are not held.
    pub async fn push(&self, ack: Box<dyn PendingAck>) {
        self.consumed_from.fetch_add(1, Ordering::Relaxed);
        if !self.is_enabled() {
            ack.release().await;
            return;
        }
        lock(&self.pending).push(ack);
    }

    /// How many consuming scans ran in this session.
    pub fn scans(&self) -> u64 {
        self.consumed_from.load(Ordering::Relaxed)
    }

    /// The running statement finished. When it `wrote`, its scans' acks wait for the run to
    /// commit; otherwise (a query, a failure) their messages are released.
    pub async fn statement_done(&self, wrote: bool) {
        let pending = std::mem::take(&mut *lock(&self.pending));
        if wrote {
            lock(&self.staged).extend(pending);
        } else {
            for ack in pending {
                ack.release().await;
            }
        }
    }

    /// The run committed: acknowledge every staged message. Returns how many were
    /// acknowledged; stops at the first failure (the rest are released and delivered again).
    pub async fn commit(&self) -> Result<u64, String> {
        let staged = std::mem::take(&mut *lock(&self.staged));
        let mut acked = 0;
        let mut staged = staged.into_iter();
        for ack in staged.by_ref() {
            let (source, n) = (ack.source(), ack.messages());
            if let Err(e) = ack.commit().await {
                for rest in staged {
                    rest.release().await;
                }
                return Err(format!(
                    "acknowledging {n} message(s) of {source} failed: {e}; they will be delivered again"
                ));
            }
            acked += n;
        }
        Ok(acked)
    }

    /// The run failed: release every held message.
    pub async fn release_all(&self) {
        let mut all = std::mem::take(&mut *lock(&self.pending));
        all.extend(std::mem::take(&mut *lock(&self.staged)));
        for ack in all {
            ack.release().await;
        }
    }

    /// A scan of `source` saw `messages` left behind it (read no further): the source's lag.
    /// Any queue table reports it, consuming or not.
    pub fn note_backlog(&self, source: &str, messages: u64) {
        lock(&self.backlog).insert(source.to_string(), messages);
    }

    /// Messages the session's scans left in their sources, summed over sources.
    pub fn backlog(&self) -> u64 {
        lock(&self.backlog).values().sum()
    }

    /// Messages staged for the run's commit.
    pub fn staged_messages(&self) -> u64 {
        lock(&self.staged).iter().map(|a| a.messages()).sum()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    struct Probe {
        n: u64,
        log: Arc<Mutex<Vec<String>>>,
    }

    #[async_trait]
    impl PendingAck for Probe {
        fn source(&self) -> String {
            format!("probe{}", self.n)
        }
        fn messages(&self) -> u64 {
            self.n
        }
        async fn commit(self: Box<Self>) -> Result<(), String> {
            lock(&self.log).push(format!("commit {}", self.n));
            Ok(())
        }
        async fn release(self: Box<Self>) {
            lock(&self.log).push(format!("release {}", self.n));
        }
    }

    #[tokio::test]
    async fn writes_commit_with_the_run_and_queries_release() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let probe = |n| {
            Box::new(Probe {
                n,
                log: Arc::clone(&log),
            })
        };
        let ledger = AckLedger::default();
        ledger.push(probe(1)).await; // not enabled: released at once
        ledger.enable();
        ledger.push(probe(2)).await;
        ledger.statement_done(true).await;
        ledger.push(probe(3)).await;
        ledger.statement_done(false).await;
        assert_eq!(ledger.staged_messages(), 2);
        assert_eq!(ledger.commit().await, Ok(2));
        ledger.push(probe(4)).await;
        ledger.statement_done(true).await;
        ledger.release_all().await;
        assert_eq!(
            *lock(&log),
            ["release 1", "release 3", "commit 2", "release 4"]
        );
        assert_eq!(ledger.scans(), 4);
    }
}
