//! Object stores: `s3://`, `gs://`, `az://` / `abfss://` and `http(s)://` locations for every file
//! format, read and written through DataFusion's listing tables and `COPY`.
//!
//! Two pieces, both using `object_store`'s own builders (credentials, regions, endpoints,
//! multipart uploads and request retries with exponential backoff are theirs):
//! - [`CloudRegistry`] wraps the session's object store registry and builds the store for a
//!   bucket the first time a URL names it, from the environment (`AWS_*`, `AZURE_*`,
//!   `GOOGLE_*`, as the cloud CLIs read them). So `COPY ... TO 's3://bucket/x.parquet'` works
//!   without declaring anything.
//! - [`CloudOptionsFactory`] wraps each file-format table factory and takes the store options
//!   of a `CREATE EXTERNAL TABLE` (`'aws.region' 'eu-west-1'`, `'aws.endpoint' '...'`,
//!   `'azure.account_name' ...`, `'gcp.service_account_path' ...`, `'http.timeout' '30s'`,
//!   `'retry.max_retries' '5'`), resolves `${secret:NAME}` in them, and registers the store for
//!   that bucket before the format factory sees the remaining options.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider, TableProviderFactory};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::object_store::ObjectStoreRegistry;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::logical_expr::CreateExternalTable;
use engine::{Connector, ParamKind, ParamSpec, SecretStore};
use futures::{TryStreamExt, future};
use object_store::ObjectStore;
use object_store::{BackoffConfig, RetryConfig};
use url::Url;

pub mod shared;

pub use shared::{NodeStores, SharedStoreOptions};

/// Option prefixes that configure a store rather than a format.
const PREFIXES: &[&str] = &["aws.", "azure.", "gcp.", "google.", "http.", "retry."];

/// Object stores for cloud and HTTP locations.
#[derive(Debug, Default)]
pub struct CloudConnector;

const PARAMS: &[ParamSpec] = &[
    ParamSpec {
        name: "aws.<key>",
        description: "S3: any object_store AmazonS3 key: access_key_id, secret_access_key, session_token, region, endpoint (S3-compatible servers), allow_http, virtual_hosted_style_request, ...; default from AWS_* variables",
        kind: ParamKind::Secret,
    },
    ParamSpec {
        name: "azure.<key>",
        description: "Azure Blob / ADLS: account_name, access_key, sas_key, client_id, client_secret, tenant_id, endpoint, use_emulator, ...; default from AZURE_* variables",
        kind: ParamKind::Secret,
    },
    ParamSpec {
        name: "gcp.<key>",
        description: "GCS: service_account_path, service_account_key, application_credentials, ...; default from GOOGLE_* variables",
        kind: ParamKind::Secret,
    },
    ParamSpec {
        name: "http.<key>",
        description: "HTTP(S) and every store's client: timeout, connect_timeout, allow_http, allow_invalid_certificates, proxy_url, user_agent",
        kind: ParamKind::Plain,
    },
    ParamSpec {
        name: "retry.max_retries / retry.timeout / retry.init_backoff / retry.max_backoff",
        description: "requests failing with 5xx, 429 or connection errors are retried with exponential backoff and jitter (defaults 10, 3min, 100ms, 15s)",
        kind: ParamKind::Plain,
    },
];

impl Connector for CloudConnector {
    fn name(&self) -> &'static str {
        "cloud"
    }

    fn params(&self) -> Vec<ParamSpec> {
        PARAMS.to_vec()
    }

    fn register(&self, mut builder: SessionStateBuilder) -> Result<SessionStateBuilder> {
        let runtime = match builder.runtime_env().take() {
            Some(rt) => rt,
            None => Arc::new(RuntimeEnvBuilder::new().build()?),
        };
        let registry = Arc::new(CloudRegistry {
            inner: Arc::clone(&runtime.object_store_registry),
        });
        let runtime = RuntimeEnvBuilder::from_runtime_env(&runtime)
            .with_object_store_registry(registry)
            .build_arc()?;
        *builder.runtime_env() = Some(runtime);
        // Store options of tables travel with each query to cluster nodes (see `shared`).
        let config = builder.config().take().unwrap_or_default();
        *builder.config() = Some(config.with_option_extension(SharedStoreOptions::default()));
        if let Some(factories) = builder.table_factories() {
            for f in factories.values_mut() {
                *f = Arc::new(CloudOptionsFactory {
                    inner: Arc::clone(f),
                });
            }
        }
        Ok(builder)
    }
}

/// Builds a store for a cloud bucket or HTTP host on first use, from the environment.
#[derive(Debug)]
pub struct CloudRegistry {
    inner: Arc<dyn ObjectStoreRegistry>,
}

impl ObjectStoreRegistry for CloudRegistry {
    fn register_store(
        &self,
        url: &Url,
        store: Arc<dyn ObjectStore>,
    ) -> Option<Arc<dyn ObjectStore>> {
        self.inner.register_store(url, store)
    }

    fn deregister_store(&self, url: &Url) -> Result<Arc<dyn ObjectStore>> {
        self.inner.deregister_store(url)
    }

    fn get_store(&self, url: &Url) -> Result<Arc<dyn ObjectStore>> {
        match self.inner.get_store(url) {
            Ok(store) => Ok(store),
            Err(e) if !is_cloud(url) => Err(e),
            Err(_) => {
                let store = build_store(url, &BTreeMap::new())?;
                self.inner.register_store(url, Arc::clone(&store));
                Ok(store)
            }
        }
    }
}

fn is_cloud(url: &Url) -> bool {
    matches!(
        url.scheme(),
        "s3" | "s3a" | "gs" | "az" | "adl" | "azure" | "abfs" | "abfss" | "http" | "https"
    )
}

/// The store for `url`'s bucket (or host), configured from the environment and then `options`
/// (keys with their `aws.` / `azure.` / `gcp.` / `http.` / `retry.` prefix).
pub fn build_store(url: &Url, options: &BTreeMap<String, String>) -> Result<Arc<dyn ObjectStore>> {
    let bad = |key: &str, e: &dyn std::fmt::Display| {
        DataFusionError::Plan(format!("object store option `{key}`: {e}"))
    };
    let base = store_url(url);
    let retry = retry_config(options)?;
    let client_opts: Vec<(&str, &str)> = options
        .iter()
        .filter_map(|(k, v)| k.strip_prefix("http.").map(|k| (k, v.as_str())))
        .collect();
    let scheme_opts = |prefixes: &[&str]| -> Vec<(String, String)> {
        options
            .iter()
            .filter_map(|(k, v)| {
                prefixes
                    .iter()
                    .find_map(|p| k.strip_prefix(p))
                    .map(|k| (k.to_string(), v.clone()))
            })
            .collect()
    };
    let store: Arc<dyn ObjectStore> = match url.scheme() {
        "s3" | "s3a" => {
            use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
            let mut b = AmazonS3Builder::from_env()
                .with_url(base.as_str())
                .with_retry(retry);
            let own = scheme_opts(&["aws."]);
            for (k, v) in &own {
                let key: AmazonS3ConfigKey = k.parse().map_err(|e| bad(&format!("aws.{k}"), &e))?;
                b = b.with_config(key, v);
            }
            // An S3-compatible server on plain HTTP (MinIO, moto, Ceph) needs allow_http.
            let endpoint = own
                .iter()
                .find(|(k, _)| matches!(k.as_str(), "endpoint" | "endpoint_url"))
                .map(|(_, v)| v.clone())
                .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok())
                .or_else(|| std::env::var("AWS_ENDPOINT").ok());
            if endpoint.is_some_and(|e| e.starts_with("http://")) {
                b = b.with_allow_http(true);
            }
            for (k, v) in &client_opts {
                let key = k.parse().map_err(|e| bad(&format!("http.{k}"), &e))?;
                b = b.with_config(AmazonS3ConfigKey::Client(key), *v);
            }
            Arc::new(
                b.build()
                    .map_err(|e| DataFusionError::Plan(format!("S3 store for {base}: {e}")))?,
            )
        }
        "gs" => {
            use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
            let mut b = GoogleCloudStorageBuilder::from_env()
                .with_url(base.as_str())
                .with_retry(retry);
            for (k, v) in scheme_opts(&["gcp.", "google."]) {
                let key: GoogleConfigKey = k.parse().map_err(|e| bad(&format!("gcp.{k}"), &e))?;
                b = b.with_config(key, v);
            }
            for (k, v) in &client_opts {
                let key = k.parse().map_err(|e| bad(&format!("http.{k}"), &e))?;
                b = b.with_config(GoogleConfigKey::Client(key), *v);
            }
            Arc::new(
                b.build()
                    .map_err(|e| DataFusionError::Plan(format!("GCS store for {base}: {e}")))?,
            )
        }
        "az" | "adl" | "azure" | "abfs" | "abfss" => {
            use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
            let mut b = MicrosoftAzureBuilder::from_env()
                .with_url(base.as_str())
                .with_retry(retry);
            for (k, v) in scheme_opts(&["azure."]) {
                let key: AzureConfigKey = k.parse().map_err(|e| bad(&format!("azure.{k}"), &e))?;
                b = b.with_config(key, v);
            }
            for (k, v) in &client_opts {
                let key = k.parse().map_err(|e| bad(&format!("http.{k}"), &e))?;
                b = b.with_config(AzureConfigKey::Client(key), *v);
            }
            Arc::new(
                b.build()
                    .map_err(|e| DataFusionError::Plan(format!("Azure store for {base}: {e}")))?,
            )
        }
        "http" | "https" => {
            use object_store::http::HttpBuilder;
            let mut b = HttpBuilder::new().with_url(base.as_str()).with_retry(retry);
            if url.scheme() == "http" {
                b = b.with_config(object_store::ClientConfigKey::AllowHttp, "true");
            }
            for (k, v) in &client_opts {
                let key = k.parse().map_err(|e| bad(&format!("http.{k}"), &e))?;
                b = b.with_config(key, *v);
            }
            Arc::new(
                b.with_http_connector(NoRedirects)
                    .build()
                    .map_err(|e| DataFusionError::Plan(format!("HTTP store for {base}: {e}")))?,
            )
        }
        other => {
            return Err(DataFusionError::Plan(format!(
                "no object store for URL scheme `{other}`"
            )));
        }
    };
    Ok(store)
}

/// HTTP(S) stores follow no redirects: the gate checked the location a table names, not
/// wherever its server sends the reader, so a redirect is an error (HTTP 3xx) instead of a
/// request to a host nobody checked.
#[derive(Debug)]
struct NoRedirects;

impl object_store::client::HttpConnector for NoRedirects {
    fn connect(
        &self,
        options: &object_store::ClientOptions,
    ) -> object_store::Result<object_store::client::HttpClient> {
        use object_store::ClientConfigKey as Key;
        let duration = |key: Key, default: std::time::Duration| {
            options
                .get_config_value(&key)
                .and_then(|v| humantime::parse_duration(&v).ok())
                .unwrap_or(default)
        };
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(duration(Key::Timeout, std::time::Duration::from_secs(30)))
            .connect_timeout(duration(
                Key::ConnectTimeout,
                std::time::Duration::from_secs(5),
            ));
        if let Some(agent) = options.get_config_value(&Key::UserAgent) {
            builder = builder.user_agent(agent);
        }
        if options
            .get_config_value(&Key::AllowInvalidCertificates)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
        {
            builder = builder.danger_accept_invalid_certs(true);
        }
        if let Some(proxy) = options.get_config_value(&Key::ProxyUrl) {
            let proxy = reqwest::Proxy::all(&proxy).map_err(|e| object_store::Error::Generic {
                store: "HTTP",
                source: Box::new(e),
            })?;
            builder = builder.proxy(proxy);
        }
        let client = builder.build().map_err(|e| object_store::Error::Generic {
            store: "HTTP",
            source: Box::new(e),
        })?;
        Ok(object_store::client::HttpClient::new(client))
    }
}

/// The part of `url` a store is registered for: scheme and authority (bucket, container, host).
fn store_url(url: &Url) -> Url {
    let mut base = url.clone();
    base.set_path("");
    base.set_query(None);
    base.set_fragment(None);
    base
}

fn retry_config(options: &BTreeMap<String, String>) -> Result<RetryConfig> {
    let mut retry = RetryConfig::default();
    let mut backoff = BackoffConfig::default();
    for (k, v) in options {
        let Some(key) = k.strip_prefix("retry.") else {
            continue;
        };
        let dur = || {
            parse_duration(v).ok_or_else(|| {
                DataFusionError::Plan(format!(
                    "object store option `{k}`: `{v}` is not a duration (e.g. 500ms, 30s, 2min)"
                ))
            })
        };
        match key {
            "max_retries" => {
                retry.max_retries = v.trim().parse().map_err(|_| {
                    DataFusionError::Plan(format!(
                        "object store option `{k}`: `{v}` is not a count"
                    ))
                })?
            }
            "timeout" => retry.retry_timeout = dur()?,
            "init_backoff" => backoff.init_backoff = dur()?,
            "max_backoff" => backoff.max_backoff = dur()?,
            _ => {
                return Err(DataFusionError::Plan(format!(
                    "unknown object store option `{k}` (retry.max_retries, retry.timeout, retry.init_backoff, retry.max_backoff)"
                )));
            }
        }
    }
    retry.backoff = backoff;
    Ok(retry)
}

/// `500ms`, `30s`, `2min`, `1h`, or plain seconds.
fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let secs = match unit.trim() {
        "" | "s" | "sec" | "secs" => n,
        "ms" => n / 1000.0,
        "m" | "min" | "mins" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

/// Takes the store options of `CREATE EXTERNAL TABLE` before the format factory sees the rest.
#[derive(Debug)]
pub struct CloudOptionsFactory {
    inner: Arc<dyn TableProviderFactory>,
}

#[async_trait]
impl TableProviderFactory for CloudOptionsFactory {
    async fn create(
        &self,
        state: &dyn Session,
        cmd: &CreateExternalTable,
    ) -> Result<Arc<dyn TableProvider>> {
        let (store_opts, rest): (BTreeMap<String, String>, BTreeMap<String, String>) = cmd
            .options
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .partition(|(k, _)| PREFIXES.iter().any(|p| k.starts_with(p)));
        let has_glob = cmd
            .locations
            .iter()
            .any(|l| Url::parse(l).is_ok_and(|u| is_cloud(&u)) && l.contains(['*', '?', '[']));
        if store_opts.is_empty() && !has_glob {
            return self.inner.create(state, cmd).await;
        }
        let urls = if store_opts.is_empty() {
            &[][..]
        } else {
            &cmd.locations[..]
        };
        let urls = urls
            .iter()
            .map(|l| {
                Url::parse(l).map_err(|_| {
                    DataFusionError::Plan(format!(
                        "store options ({}) need a URL location such as s3://bucket/path, not `{l}`",
                        store_opts.keys().cloned().collect::<Vec<_>>().join(", "),
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let secrets = state
            .config()
            .get_extension::<SecretStore>()
            .map(|s| (*s).clone())
            .unwrap_or_else(SecretStore::from_env);
        let resolved = store_opts
            .iter()
            .map(|(k, v)| {
                secrets
                    .expand(v)
                    .map(|v| (k.clone(), v))
                    .map_err(|e| DataFusionError::Plan(format!("option `{k}`: {e}")))
            })
            .collect::<Result<BTreeMap<_, _>>>()?;
        let shared = state
            .config_options()
            .extensions
            .get::<SharedStoreOptions>();
        for url in &urls {
            let store = build_store(url, &resolved)?;
            state
                .runtime_env()
                .register_object_store(&store_url(url), store);
            if let Some(shared) = shared {
                shared.record(&store_url(url), &store_opts);
            }
        }
        let mut cmd = cmd.clone();
        cmd.options = rest.into_iter().collect();
        if has_glob {
            cmd.locations = expand_globs(state, &cmd.locations).await?;
        }
        self.inner.create(state, &cmd).await
    }
}

/// DataFusion expands globs only in local paths: for `s3://bucket/dir/*.csv` list the store
/// under the fixed prefix and name the matching files. The table holds the files that exist
/// when it is created.
async fn expand_globs(state: &dyn Session, locations: &[String]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for location in locations {
        let Some(glob_at) = location.find(['*', '?', '[']) else {
            out.push(location.clone());
            continue;
        };
        let url = Url::parse(location)
            .map_err(|e| DataFusionError::Plan(format!("location `{location}`: {e}")))?;
        let store = state.runtime_env().object_store_registry.get_store(&url)?;
        let base = store_url(&url).to_string();
        let base = base.trim_end_matches('/');
        // The path below the bucket, split at the last `/` before the first glob character.
        let path = location[base.len()..].trim_start_matches('/');
        let glob_in_path = glob_at.saturating_sub(location.len() - path.len());
        let prefix = &path[..path[..glob_in_path].rfind('/').map_or(0, |i| i + 1)];
        let pattern = glob::Pattern::new(path).map_err(|e| {
            DataFusionError::Plan(format!("location `{location}`: bad glob pattern: {e}"))
        })?;
        let listing_prefix = (!prefix.is_empty())
            .then(|| object_store::path::Path::from(prefix.trim_end_matches('/')));
        let mut matched: Vec<String> = store
            .list(listing_prefix.as_ref())
            .map_ok(|meta| meta.location.to_string())
            .try_filter(|key| {
                let keep = pattern.matches(key) && !key.contains(engine::staging::STAGING_MARKER);
                future::ready(keep)
            })
            .try_collect()
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        if matched.is_empty() {
            return Err(DataFusionError::Plan(format!("no files match {location}")));
        }
        matched.sort();
        out.extend(matched.into_iter().map(|key| format!("{base}/{key}")));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_retry_options() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2min"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_duration("soon"), None);
        let opts: BTreeMap<String, String> = [
            ("retry.max_retries".to_string(), "2".to_string()),
            ("retry.init_backoff".to_string(), "10ms".to_string()),
        ]
        .into();
        let r = retry_config(&opts).unwrap();
        assert_eq!(r.max_retries, 2);
        assert_eq!(r.backoff.init_backoff, Duration::from_millis(10));
        let bad: BTreeMap<String, String> = [("retry.nope".to_string(), "1".to_string())].into();
        assert!(retry_config(&bad).is_err());
    }

    #[test]
    fn unknown_store_keys_are_named() {
        let url = Url::parse("s3://bucket/data/x.csv").unwrap();
        let opts: BTreeMap<String, String> = [("aws.regoin".to_string(), "eu".to_string())].into();
        let err = build_store(&url, &opts).err().unwrap().to_string();
        assert!(err.contains("aws.regoin"), "{err}");
        assert_eq!(store_url(&url).as_str(), "s3://bucket");
    }
}
