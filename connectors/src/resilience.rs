//! Retries with exponential backoff and jitter, and a circuit breaker per remote endpoint, for
//! the calls a connector makes itself (opening database connections). Object store requests
//! have their own retry layer in `object_store` (see [`crate::cloud`]).
//!
//! - Failures whose kind is retriable ([`crate::error::ErrorKind::is_retriable`]: the endpoint
//!   unreachable, a timeout, a busy server, a deadlock or serialization failure) are retried;
//!   others (authentication, unknown database or table, syntax) fail at once.
//! - After `circuit_failures` consecutive failed calls to one endpoint its breaker opens: calls
//!   fail fast for `circuit_cooldown`, then one probe is let through (half-open); its success
//!   closes the breaker, its failure opens it again.
//! - Every retry and every breaker transition is logged, and counted in [`ResilienceStats`] (the
//!   session's, exported by `flowengine serve` at `/metrics`).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use datafusion::error::{DataFusionError, Result};

use crate::error::is_retriable;

/// How often and how patiently one call is retried, and when its endpoint's breaker opens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (0: none).
    pub max_retries: usize,
    /// First backoff; doubles per retry, with jitter, up to `max_backoff`.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Consecutive failures that open the endpoint's breaker (0: never).
    pub circuit_failures: u32,
    /// How long an open breaker fails calls before letting a probe through.
    pub circuit_cooldown: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 3,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            circuit_failures: 5,
            circuit_cooldown: Duration::from_secs(30),
        }
    }
}

/// Counters since the session started (shared by the session's connectors).
pub type ResilienceStats = engine::RemoteCallStats;

#[derive(Debug, Default)]
struct Breaker {
    consecutive_failures: u32,
    open_until: Option<Instant>,
    probing: bool,
}

/// The breakers of one connector family, by endpoint (`host:port`, file path, URL).
#[derive(Debug, Default)]
pub struct Resilience {
    breakers: Mutex<HashMap<String, Breaker>>,
    pub stats: Arc<ResilienceStats>,
}

impl Resilience {
    pub fn new() -> Self {
        Self::default()
    }

    /// Breakers counting into the session's `stats`.
    pub fn with_stats(stats: Arc<ResilienceStats>) -> Self {
        Self {
            breakers: Mutex::default(),
            stats,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Breaker>> {
        // A poisoned lock means a panic elsewhere; the counters stay meaningful.
        self.breakers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a call to `endpoint` may go ahead now.
    fn admit(&self, endpoint: &str) -> Result<()> {
        let mut breakers = self.lock();
        let b = breakers.entry(endpoint.to_string()).or_default();
        match b.open_until {
            None => Ok(()),
            Some(until) if Instant::now() < until || b.probing => {
                self.stats.fast_failures.fetch_add(1, Ordering::Relaxed);
                let wait = until.saturating_duration_since(Instant::now());
                Err(DataFusionError::Execution(format!(
                    "circuit open for {endpoint}: {} consecutive failures; not trying again for {:.0?} (options circuit_failures, circuit_cooldown)",
                    b.consecutive_failures,
                    wait.max(Duration::from_millis(1))
                )))
            }
            Some(_) => {
                // Half-open: this call is the probe.
                b.probing = true;
                tracing::info!(endpoint, "circuit half-open: probing");
                Ok(())
            }
        }
    }

    fn success(&self, endpoint: &str) {
        let mut breakers = self.lock();
        if let Some(b) = breakers.get_mut(endpoint) {
            if b.open_until.is_some() {
                tracing::info!(endpoint, "circuit closed");
            }
            *b = Breaker::default();
        }
    }

    fn failure(&self, endpoint: &str, policy: &RetryPolicy) {
        let mut breakers = self.lock();
        let b = breakers.entry(endpoint.to_string()).or_default();
        b.consecutive_failures += 1;
        let reopen = b.probing;
        b.probing = false;
        if policy.circuit_failures > 0
            && (reopen || b.consecutive_failures >= policy.circuit_failures)
        {
            b.open_until = Some(Instant::now() + policy.circuit_cooldown);
            self.stats.circuit_opened.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                endpoint,
                failures = b.consecutive_failures,
                cooldown = ?policy.circuit_cooldown,
                "circuit opened"
            );
        }
    }

    /// Run `op` under `endpoint`'s breaker, retrying transient failures per `policy`.
    pub async fn call<T, F, Fut>(
        &self,
        endpoint: &str,
        what: &str,
        policy: &RetryPolicy,
        op: F,
    ) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let span =
            tracing::info_span!(target: "flowengine::connector", "connector call", endpoint, what);
        tracing::Instrument::instrument(self.attempts(endpoint, what, policy, op), span).await
    }

    async fn attempts<T, F, Fut>(
        &self,
        endpoint: &str,
        what: &str,
        policy: &RetryPolicy,
        mut op: F,
    ) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut backoff = ExponentialBuilder::new()
            .with_min_delay(policy.initial_backoff)
            .with_max_delay(policy.max_backoff)
            .with_max_times(policy.max_retries)
            .with_jitter()
            .build();
        let mut attempt = 1;
        let mut last: Option<DataFusionError> = None;
        loop {
            if let Err(open) = self.admit(endpoint) {
                return Err(match last {
                    // The breaker opened during this call's own retries: report the cause.
                    Some(e) => DataFusionError::Execution(format!(
                        "{what} failed after {} attempts: {e}; {open}",
                        attempt - 1
                    )),
                    None => open,
                });
            }
            match op().await {
                Ok(v) => {
                    self.success(endpoint);
                    return Ok(v);
                }
                Err(e) => {
                    self.failure(endpoint, policy);
                    let transient = is_retriable(&e);
                    match backoff.next() {
                        Some(delay) if transient => {
                            self.stats.retries.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(
                                endpoint,
                                attempt,
                                delay = ?delay,
                                error = %e,
                                "{what} failed transiently; retrying"
                            );
                            tokio::time::sleep(delay).await;
                            attempt += 1;
                            last = Some(e);
                        }
                        _ if transient && attempt > 1 => {
                            return Err(DataFusionError::Execution(format!(
                                "{what} failed after {attempt} attempts: {e}"
                            )));
                        }
                        _ => return Err(e),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_retries: 3,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
            circuit_failures: 6,
            circuit_cooldown: Duration::from_millis(200),
        }
    }

    fn refused() -> DataFusionError {
        DataFusionError::External(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )))
    }

    #[tokio::test]
    async fn transient_failures_are_retried_until_success() {
        let r = Resilience::new();
        let calls = Arc::new(AtomicUsize::new(0));
        let c = Arc::clone(&calls);
        let v = r
            .call("db:5432", "connect", &policy(), || {
                let c = Arc::clone(&c);
                async move {
                    if c.fetch_add(1, Ordering::SeqCst) < 2 {
                        Err(refused())
                    } else {
                        Ok(7)
                    }
                }
            })
            .await
            .unwrap();
        assert_eq!(v, 7);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(r.stats.retries.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn permanent_failures_are_not_retried() {
        let r = Resilience::new();
        let calls = AtomicUsize::new(0);
        let err = r
            .call("db:5432", "connect", &policy(), || {
                calls.fetch_add(1, Ordering::SeqCst);
                async {
                    Err::<(), _>(DataFusionError::from(crate::error::ConnectorError::new(
                        crate::error::ErrorKind::Denied,
                        "password authentication failed",
                    )))
                }
            })
            .await
            .unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(err.to_string().contains("password"));
    }

    #[tokio::test]
    async fn breaker_opens_fails_fast_and_half_opens() {
        let r = Resilience::new();
        let p = policy();
        // 4 attempts (1 + 3 retries), then 4 more: the 6th consecutive failure opens it.
        for _ in 0..2 {
            let _ = r
                .call("db:1", "connect", &p, || async { Err::<(), _>(refused()) })
                .await;
        }
        assert_eq!(r.stats.circuit_opened.load(Ordering::Relaxed), 1);
        let calls = AtomicUsize::new(0);
        let err = r
            .call("db:1", "connect", &p, || {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Ok(()) }
            })
            .await
            .unwrap_err();
        assert!(err.to_string().contains("circuit open for db:1"), "{err}");
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        // Other endpoints are unaffected.
        r.call("db:2", "connect", &p, || async { Ok(()) })
            .await
            .unwrap();
        // After the cooldown one probe goes through and closes the breaker.
        tokio::time::sleep(p.circuit_cooldown + Duration::from_millis(20)).await;
        r.call("db:1", "connect", &p, || async { Ok(()) })
            .await
            .unwrap();
        r.call("db:1", "connect", &p, || async { Ok(()) })
            .await
            .unwrap();
    }
}
