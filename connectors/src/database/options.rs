//! What database tables read from their `OPTIONS`, over the one option parser
//! ([`TableOptions`]): the connection's parts (a URL and the separate keys that win over it),
//! connect timeout, retries, pool size, sslmode and `on_conflict`. Every value may hold
//! `${secret:NAME}`; the password comes out as a [`Secret`].

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use datafusion::error::Result;
use datafusion_table_providers::util::on_conflict::OnConflict;
use engine::Secret;
use engine::secrets::redact_url;

use crate::options::TableOptions;
use crate::resilience::RetryPolicy;

/// Where a database is and who connects.
pub(super) struct Endpoint {
    pub host: String,
    pub port: u16,
    pub user: Option<String>,
    pub password: Option<Secret>,
    pub database: Option<String>,
    /// Query parameters of the URL (`sslmode=...`).
    pub params: BTreeMap<String, String>,
}

/// Host, port, user, password and database from `connection` (a URL) and the separate keys,
/// which win over the URL's parts.
pub(super) fn endpoint(o: &mut TableOptions<'_>, default_port: u16) -> Result<Endpoint> {
    let mut ep = Endpoint {
        host: "127.0.0.1".into(),
        port: default_port,
        user: None,
        password: None,
        database: None,
        params: BTreeMap::new(),
    };
    if let Some(conn) = o.string("connection")? {
        // Parse the URL with its `${secret:...}` references in place, then resolve each part:
        // a secret needs no URL escaping, and a bad URL is reported without it.
        let url = url::Url::parse(&conn).map_err(|e| {
            o.error(format!(
                "option `connection` `{}` is not a URL: {e}",
                redact_url(&conn)
            ))
        })?;
        let part = |s: &str| o.expand("connection", &decode(s));
        if let Some(h) = url.host_str() {
            ep.host = part(h.trim_start_matches('[').trim_end_matches(']'))?;
        }
        if let Some(p) = url.port() {
            ep.port = p;
        }
        if !url.username().is_empty() {
            ep.user = Some(part(url.username())?);
        }
        ep.password = url.password().map(part).transpose()?.map(Secret::new);
        let db = url.path().trim_start_matches('/');
        if !db.is_empty() {
            ep.database = Some(part(db)?);
        }
        ep.params = url.query_pairs().into_owned().collect();
    }
    if let Some(h) = o.expanded("host")? {
        ep.host = h;
    }
    if let Some(p) = number::<u16>(o, "port")? {
        ep.port = p;
    }
    if let Some(u) = o.expanded("user")? {
        ep.user = Some(u);
    }
    if let Some(p) = o.secret("password")? {
        ep.password = Some(p);
    }
    if let Some(d) = o.expanded("database")? {
        ep.database = Some(d);
    }
    Ok(ep)
}

/// `key` parsed as a number (its secret references expanded first).
pub(super) fn number<T: FromStr>(o: &mut TableOptions<'_>, key: &str) -> Result<Option<T>> {
    let Some(v) = o.expanded(key)? else {
        return Ok(None);
    };
    v.trim()
        .parse()
        .map(Some)
        .map_err(|_| o.error(format!("option `{key}`: `{v}` is not a valid number")))
}

/// `connect_timeout` in seconds (default 10).
pub(super) fn connect_timeout(o: &mut TableOptions<'_>) -> Result<Duration> {
    let secs: f64 = number(o, "connect_timeout")?.unwrap_or(10.0);
    if !(secs > 0.0 && secs.is_finite()) {
        return Err(o.error("option `connect_timeout` must be a positive number of seconds"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Retry and circuit-breaker settings: `retries` (default 3), `retry_backoff_ms` (200),
/// `circuit_failures` (5), `circuit_cooldown_secs` (30).
pub(super) fn retry_policy(o: &mut TableOptions<'_>) -> Result<RetryPolicy> {
    let d = RetryPolicy::default();
    let backoff_ms: u64 =
        number(o, "retry_backoff_ms")?.unwrap_or(d.initial_backoff.as_millis() as u64);
    let cooldown: f64 =
        number(o, "circuit_cooldown_secs")?.unwrap_or(d.circuit_cooldown.as_secs_f64());
    if !(cooldown >= 0.0 && cooldown.is_finite()) {
        return Err(o.error("option `circuit_cooldown_secs` must be a number of seconds"));
    }
    Ok(RetryPolicy {
        max_retries: number(o, "retries")?.unwrap_or(d.max_retries),
        initial_backoff: Duration::from_millis(backoff_ms),
        max_backoff: d.max_backoff.max(Duration::from_millis(backoff_ms)),
        circuit_failures: number(o, "circuit_failures")?.unwrap_or(d.circuit_failures),
        circuit_cooldown: Duration::from_secs_f64(cooldown),
    })
}

/// `pool_size`: connections to one database, shared by its tables (default 10, at least 1).
pub(super) fn pool_size(o: &mut TableOptions<'_>) -> Result<u32> {
    match number(o, "pool_size")?.unwrap_or(10) {
        0 => Err(o.error("option `pool_size` must be at least 1")),
        n => Ok(n),
    }
}

/// `statement_timeout` in milliseconds, when given (a positive number).
pub(super) fn statement_timeout(o: &mut TableOptions<'_>) -> Result<Option<Duration>> {
    let Some(ms) = o.expanded("statement_timeout")? else {
        return Ok(None);
    };
    match ms.trim().parse::<u64>() {
        Ok(ms) if ms > 0 => Ok(Some(Duration::from_millis(ms))),
        _ => Err(o.error(format!(
            "option `statement_timeout`: `{ms}` is not a positive number of milliseconds"
        ))),
    }
}

/// `sslmode`, else the URL's `sslmode` (or `alias`), else `default`.
pub(super) fn sslmode(
    o: &mut TableOptions<'_>,
    ep: &Endpoint,
    alias: Option<&str>,
    default: &str,
) -> Result<String> {
    Ok(match o.expanded("sslmode")? {
        Some(m) => m,
        None => ep
            .params
            .get("sslmode")
            .or_else(|| alias.and_then(|a| ep.params.get(a)))
            .cloned()
            .unwrap_or_else(|| default.into()),
    })
}

/// `on_conflict` of a sink: the text (for the providers crate's table creation) and its
/// parsed form.
#[derive(Debug, Clone)]
pub(super) struct Conflict {
    pub text: String,
    pub rule: OnConflict,
}

pub(super) fn on_conflict(o: &mut TableOptions<'_>) -> Result<Option<Conflict>> {
    let Some(text) = o.expanded("on_conflict")? else {
        return Ok(None);
    };
    let rule = OnConflict::try_from(text.as_str()).map_err(|e| {
        o.error(format!(
            "option `on_conflict` `{text}`: {e} (use upsert:col, upsert:(a,b) or do_nothing:col)"
        ))
    })?;
    Ok(Some(Conflict { text, rule }))
}

/// Percent-decoding of one URL part (`+` stays `+`).
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|_| s.to_string())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::execution::SessionStateBuilder;
    use datafusion::execution::session_state::SessionState;
    use datafusion::prelude::SessionConfig;
    use engine::SecretStore;

    use super::*;

    fn state() -> SessionState {
        let secrets = SecretStore::from_values([("PW".to_string(), "p@ss:w/rd".to_string())]);
        SessionStateBuilder::new()
            .with_config(SessionConfig::new().with_extension(Arc::new(secrets)))
            .build()
    }

    fn opts<'a>(state: &'a SessionState, pairs: &[(&str, &str)]) -> TableOptions<'a> {
        let map = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        TableOptions::from_map(
            "PostgreSQL",
            "t".into(),
            state,
            map,
            super::super::PARAMS.to_vec(),
        )
    }

    #[test]
    fn url_parts_secrets_and_overrides() {
        let state = state();
        let mut o = opts(
            &state,
            &[
                (
                    "connection",
                    "postgresql://app:${secret:PW}@db.local:6543/shop?sslmode=disable",
                ),
                ("user", "other"),
            ],
        );
        let ep = endpoint(&mut o, 5432).unwrap();
        assert_eq!(ep.host, "db.local");
        assert_eq!(ep.port, 6543);
        assert_eq!(ep.user.as_deref(), Some("other"));
        assert_eq!(ep.password.as_ref().map(Secret::expose), Some("p@ss:w/rd"));
        assert_eq!(ep.database.as_deref(), Some("shop"));
        assert_eq!(sslmode(&mut o, &ep, None, "prefer").unwrap(), "disable");
        o.finish().unwrap();
    }

    #[test]
    fn unknown_keys_are_named_with_the_table() {
        let state = state();
        let mut o = opts(&state, &[("conection", "x"), ("pool_size", "3")]);
        assert_eq!(pool_size(&mut o).unwrap(), 3);
        assert!(o.expanded("sslmode").unwrap().is_none());
        let err = o.finish().unwrap_err().to_string();
        assert!(err.contains("PostgreSQL table `t`"), "{err}");
        assert!(err.contains("conection"), "{err}");
        assert!(
            err.contains("connection"),
            "the known keys are listed: {err}"
        );
    }

    #[test]
    fn bad_values_are_named() {
        let state = state();
        let mut o = opts(&state, &[("pool_size", "0"), ("port", "http")]);
        let err = pool_size(&mut o).unwrap_err().to_string();
        assert!(err.contains("`pool_size` must be at least 1"), "{err}");
        let err = endpoint(&mut o, 5432).err().unwrap().to_string();
        assert!(err.contains("option `port`: `http`"), "{err}");
    }

    #[test]
    fn bad_url_does_not_print_password() {
        let state = state();
        let mut o = opts(
            &state,
            &[("connection", "postgresql://u:topsecret@bad host/db")],
        );
        let err = endpoint(&mut o, 5432).err().unwrap().to_string();
        assert!(!err.contains("topsecret"), "{err}");
    }
}
