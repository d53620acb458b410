//! The option vocabulary of database tables: read once from `CREATE EXTERNAL TABLE ... OPTIONS`,
//! secrets resolved, connection URLs split into parts, and unknown keys reported by name.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use datafusion::catalog::Session;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::CreateExternalTable;
use engine::SecretStore;
use engine::secrets::redact_url;

use crate::resilience::RetryPolicy;

/// Options of one database table. Values may hold secrets: this type has no `Display`, and
/// its `Debug` shows keys only.
pub struct DbOptions {
    /// Raw values: `${secret:NAME}` references are resolved when a value is read.
    values: BTreeMap<String, String>,
    used: BTreeSet<String>,
    secrets: SecretStore,
}

impl std::fmt::Debug for DbOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbOptions")
            .field("keys", &self.values.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl DbOptions {
    /// The statement's options with DataFusion's `format.` prefix removed and every
    /// `${secret:NAME}` resolved.
    pub fn from_command(state: &dyn Session, cmd: &CreateExternalTable) -> Result<Self> {
        let secrets = state
            .config()
            .get_extension::<SecretStore>()
            .map(|s| (*s).clone())
            .unwrap_or_else(SecretStore::from_env);
        Self::from_map(&cmd.options, &secrets)
    }

    pub fn from_map(options: &HashMap<String, String>, secrets: &SecretStore) -> Result<Self> {
        let values = options
            .iter()
            .map(|(key, value)| {
                let key = key.strip_prefix("format.").unwrap_or(key).to_string();
                (key, value.clone())
            })
            .collect();
        Ok(Self {
            values,
            used: BTreeSet::new(),
            secrets: secrets.clone(),
        })
    }

    /// The value of `key` with its secrets resolved, marking the key understood.
    pub fn get(&mut self, key: &str) -> Result<Option<String>> {
        declared(key)?;
        self.used.insert(key.to_string());
        self.values
            .get(key)
            .map(|v| self.expand(key, v))
            .transpose()
    }

    fn expand(&self, key: &str, value: &str) -> Result<String> {
        declared(key)?;
        self.secrets
            .expand(value)
            .map_err(|e| DataFusionError::Plan(format!("option `{key}`: {e}")))
    }

    /// `key` parsed as a number, or `default`.
    pub fn number<T: std::str::FromStr>(&mut self, key: &str, default: T) -> Result<T> {
        match self.get(key)? {
            None => Ok(default),
            Some(v) => v.trim().parse().map_err(|_| {
                DataFusionError::Plan(format!("option `{key}`: `{v}` is not a valid number"))
            }),
        }
    }

    /// `connect_timeout` in seconds (default 10).
    pub fn connect_timeout(&mut self) -> Result<Duration> {
        let secs: f64 = self.number("connect_timeout", 10.0)?;
        if !(secs > 0.0 && secs.is_finite()) {
            return Err(DataFusionError::Plan(
                "option `connect_timeout` must be a positive number of seconds".into(),
            ));
        }
        Ok(Duration::from_secs_f64(secs))
    }

    /// Retry and circuit-breaker settings: `retries` (default 3), `retry_backoff_ms` (200),
    /// `circuit_failures` (5), `circuit_cooldown_secs` (30).
    pub fn retry_policy(&mut self) -> Result<RetryPolicy> {
        let d = RetryPolicy::default();
        let backoff_ms: u64 =
            self.number("retry_backoff_ms", d.initial_backoff.as_millis() as u64)?;
        let cooldown: f64 =
            self.number("circuit_cooldown_secs", d.circuit_cooldown.as_secs_f64())?;
        if !(cooldown >= 0.0 && cooldown.is_finite()) {
            return Err(DataFusionError::Plan(
                "option `circuit_cooldown_secs` must be a number of seconds".into(),
            ));
        }
        Ok(RetryPolicy {
            max_retries: self.number("retries", d.max_retries)?,
            initial_backoff: Duration::from_millis(backoff_ms),
            max_backoff: d.max_backoff.max(Duration::from_millis(backoff_ms)),
            circuit_failures: self.number("circuit_failures", d.circuit_failures)?,
            circuit_cooldown: Duration::from_secs_f64(cooldown),
        })
    }

    /// Host, port, user, password and database from `connection` (a URL) and the separate
    /// keys, which win over the URL's parts.
    pub fn endpoint(&mut self, default_port: u16) -> Result<Endpoint> {
        let mut ep = Endpoint {
            host: "127.0.0.1".into(),
            port: default_port,
            user: None,
            password: None,
            database: None,
            params: BTreeMap::new(),
        };
        self.used.insert("connection".into());
        if let Some(conn) = self.values.get("connection").cloned() {
            // Parse the URL with its `${secret:...}` references in place, then resolve each
            // part: a secret needs no URL escaping, and a bad URL is reported without it.
            let url = url::Url::parse(&conn).map_err(|e| {
                DataFusionError::Plan(format!(
                    "option `connection` `{}` is not a URL: {e}",
                    redact_url(&conn)
                ))
            })?;
            let part = |s: &str| self.expand("connection", &decode(s));
            if let Some(h) = url.host_str() {
                ep.host = part(h.trim_start_matches('[').trim_end_matches(']'))?;
            }
            if let Some(p) = url.port() {
                ep.port = p;
            }
            if !url.username().is_empty() {
                ep.user = Some(part(url.username())?);
            }
            ep.password = url.password().map(part).transpose()?;
            let db = url.path().trim_start_matches('/');
            if !db.is_empty() {
                ep.database = Some(part(db)?);
            }
            ep.params = url.query_pairs().into_owned().collect();
        }
        if let Some(h) = self.get("host")? {
            ep.host = h;
        }
        if let Some(p) = self.get("port")? {
            ep.port = p.parse().map_err(|_| {
                DataFusionError::Plan(format!("option `port`: `{p}` is not a port"))
            })?;
        }
        if let Some(u) = self.get("user")? {
            ep.user = Some(u);
        }
        if let Some(p) = self.get("password")? {
            ep.password = Some(p);
        }
        if let Some(d) = self.get("database")? {
            ep.database = Some(d);
        }
        Ok(ep)
    }

    /// Fail on keys nobody read, naming them (a typo must not be ignored silently).
    pub fn finish(&self, backend: &str) -> Result<()> {
        let unknown: Vec<&str> = self
            .values
            .keys()
            .filter(|k| !self.used.contains(*k))
            .map(String::as_str)
            .collect();
        if unknown.is_empty() {
            Ok(())
        } else {
            Err(DataFusionError::Plan(format!(
                "unknown {backend} table option(s): {}",
                unknown.join(", ")
            )))
        }
    }
}

/// Options are read only when the family declares them (see [`super::PARAMS`]): the gate,
/// `flowengine connectors` and the docs then know every one.
fn declared(key: &str) -> Result<()> {
    if super::PARAMS.iter().any(|s| s.keys().any(|k| k == key)) {
        Ok(())
    } else {
        Err(DataFusionError::Internal(format!(
            "database tables read option `{key}` without declaring it in their parameters"
        )))
    }
}

/// Where a database is and who connects.
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub user: Option<String>,
    pub password: Option<String>,
    pub database: Option<String>,
    /// Query parameters of the URL (`sslmode=...`).
    pub params: BTreeMap<String, String>,
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
    use super::*;

    fn opts(pairs: &[(&str, &str)]) -> DbOptions {
        let map = pairs
            .iter()
            .map(|(k, v)| (format!("format.{k}"), v.to_string()))
            .collect();
        let secrets = SecretStore::from_values([("PW".to_string(), "p@ss:w/rd".to_string())]);
        DbOptions::from_map(&map, &secrets).unwrap()
    }

    #[test]
    fn url_parts_secrets_and_overrides() {
        let mut o = opts(&[
            (
                "connection",
                "postgresql://app:${secret:PW}@db.local:6543/shop?sslmode=disable",
            ),
            ("user", "other"),
        ]);
        let ep = o.endpoint(5432).unwrap();
        assert_eq!(ep.host, "db.local");
        assert_eq!(ep.port, 6543);
        assert_eq!(ep.user.as_deref(), Some("other"));
        assert_eq!(ep.password.as_deref(), Some("p@ss:w/rd"));
        assert_eq!(ep.database.as_deref(), Some("shop"));
        assert_eq!(
            ep.params.get("sslmode").map(String::as_str),
            Some("disable")
        );
        o.finish("PostgreSQL").unwrap();
        assert!(!format!("{o:?}").contains("p@ss"));
    }

    #[test]
    fn unknown_keys_are_named() {
        let mut o = opts(&[("conection", "x"), ("pool_size", "3")]);
        assert_eq!(o.number("pool_size", 10u32).unwrap(), 3);
        assert!(o.get("sslmode").unwrap().is_none());
        let err = o.finish("MySQL").unwrap_err().to_string();
        assert!(err.contains("conection"), "{err}");
    }

    #[test]
    fn bad_url_does_not_print_password() {
        let mut o = opts(&[("connection", "postgresql://u:topsecret@bad host/db")]);
        let err = o.endpoint(5432).err().unwrap().to_string();
        assert!(!err.contains("topsecret"), "{err}");
    }
}
