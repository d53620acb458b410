//! Object-store options a session shares with cluster nodes, and the stores a node builds from
//! them.
//!
//! `CREATE EXTERNAL TABLE ... OPTIONS ('aws.endpoint' ..., 'aws.secret_access_key'
//! '${secret:S3_KEY}')` registers a store in the client's runtime only. On a Ballista cluster the
//! scheduler (which lists the files) and the executors (which read and write them) need the same
//! store. [`SharedStoreOptions`] is a session config extension, so its entries travel with every
//! query's settings the way Ballista ships DataFusion's own: one entry per store URL, its options
//! as JSON. Secret-bearing options travel only as `${secret:NAME}` references, resolved by each
//! node from its own secrets (`FLOWENGINE_SECRET_<NAME>` or its `secrets_file`); a literal
//! credential written in SQL is not sent, and a node falls back to its environment (`AWS_*`,
//! `AZURE_*`, `GOOGLE_*`) for it. So `SHOW ALL`, `system.settings` and the scheduler's logs show
//! references, never values.
//!
//! [`NodeStores`] builds, for a node's session, a registry holding those stores (and any other
//! cloud URL from the environment), reusing a built store while its resolved options are unchanged.

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use datafusion::common::config::{ConfigEntry, ConfigExtension, ExtensionOptions};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::object_store::{DefaultObjectStoreRegistry, ObjectStoreRegistry};
use datafusion::prelude::SessionConfig;
use engine::SecretStore;
use object_store::ObjectStore;
use url::Url;

use super::{CloudRegistry, build_store};

/// The config namespace of the shared options (`flowengine_stores.<store URL>`).
pub const NAMESPACE: &str = "flowengine_stores";

/// Store options by store URL (`s3://bucket`), shared by every clone of a session's config so
/// a table created after the session was built is still sent with the next query.
#[derive(Clone, Default)]
pub struct SharedStoreOptions {
    stores: Arc<Mutex<BTreeMap<String, BTreeMap<String, String>>>>,
}

impl fmt::Debug for SharedStoreOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedStoreOptions")
            .field("stores", &self.lock().keys().collect::<Vec<_>>())
            .finish()
    }
}

impl SharedStoreOptions {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, BTreeMap<String, String>>> {
        self.stores
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Record the options (unresolved, as written) of the store for `store_url`, keeping a
    /// secret-bearing option only when its value is a secret reference.
    pub fn record(&self, store_url: &Url, options: &BTreeMap<String, String>) {
        let shared = options
            .iter()
            .filter(|(k, v)| !is_secret_key(k) || is_reference(v))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        self.lock().insert(store_url.to_string(), shared);
    }

    /// Every recorded store: its URL and options.
    pub fn stores(&self) -> Vec<(String, BTreeMap<String, String>)> {
        self.lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// Options whose values are credentials (access keys, secrets, tokens, SAS, account keys).
fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["secret", "key", "token", "password", "sas", "credential"]
        .iter()
        .any(|word| key.contains(word))
}

/// A value that is exactly one `${secret:NAME}` reference.
fn is_reference(value: &str) -> bool {
    let v = value.trim();
    v.starts_with("${secret:") && v.ends_with('}') && v.matches('}').count() == 1
}

impl ConfigExtension for SharedStoreOptions {
    const PREFIX: &'static str = NAMESPACE;
}

impl ExtensionOptions for SharedStoreOptions {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }

    fn cloned(&self) -> Box<dyn ExtensionOptions> {
        Box::new(self.clone())
    }

    /// `key` is a store URL, `value` its options as a JSON object of strings.
    fn set(&mut self, key: &str, value: &str) -> Result<()> {
        let url = Url::parse(key).map_err(|e| {
            DataFusionError::Configuration(format!("{NAMESPACE}.{key}: not a store URL: {e}"))
        })?;
        let options: BTreeMap<String, String> = serde_json::from_str(value).map_err(|e| {
            DataFusionError::Configuration(format!(
                "{NAMESPACE}.{key}: expected a JSON object of string options: {e}"
            ))
        })?;
        self.record(&url, &options);
        Ok(())
    }

    fn entries(&self) -> Vec<ConfigEntry> {
        self.lock()
            .iter()
            .map(|(url, options)| ConfigEntry {
                key: format!("{NAMESPACE}.{url}"),
                value: serde_json::to_string(options).ok(),
                description: "object store options of this session's tables, sent to cluster \
                              nodes (credentials only as ${secret:NAME} references)",
            })
            .collect()
    }
}

/// The object stores of a cluster node (scheduler or executor).
pub struct NodeStores {
    secrets: SecretStore,
    /// Built stores by URL and resolved options (the key holds resolved values: never printed).
    built: Mutex<HashMap<String, Arc<dyn ObjectStore>>>,
}

impl fmt::Debug for NodeStores {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.built.lock().map_or(0, |b| b.len());
        f.debug_struct("NodeStores").field("built", &n).finish()
    }
}

impl NodeStores {
    /// Stores resolving secret references from `secrets` (the node's own).
    pub fn new(secrets: SecretStore) -> Self {
        Self {
            secrets,
            built: Mutex::new(HashMap::new()),
        }
    }

    /// A registry for a session with `config`: the stores its tables declared, then any other
    /// cloud or HTTP URL built from the node's environment on first use.
    pub fn registry(&self, config: &SessionConfig) -> Result<Arc<dyn ObjectStoreRegistry>> {
        let registry = CloudRegistry {
            inner: Arc::new(DefaultObjectStoreRegistry::new()),
        };
        let shared = config
            .options()
            .extensions
            .get::<SharedStoreOptions>()
            .map(SharedStoreOptions::stores)
            .unwrap_or_default();
        for (url, options) in shared {
            let parsed = Url::parse(&url)
                .map_err(|e| DataFusionError::Configuration(format!("store URL `{url}`: {e}")))?;
            let resolved = options
                .iter()
                .map(|(k, v)| {
                    self.secrets.expand(v).map(|v| (k.clone(), v)).map_err(|e| {
                        DataFusionError::Configuration(format!(
                            "object store {url}, option `{k}`: {e} (on this cluster node)"
                        ))
                    })
                })
                .collect::<Result<BTreeMap<_, _>>>()?;
            let key = format!(
                "{url}\n{}",
                serde_json::to_string(&resolved).unwrap_or_default()
            );
            let cached = self
                .built
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&key)
                .cloned();
            let store = match cached {
                Some(store) => store,
                None => {
                    let store = build_store(&parsed, &resolved)?;
                    self.built
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(key, Arc::clone(&store));
                    store
                }
            };
            registry.register_store(&parsed, store);
        }
        Ok(Arc::new(registry))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_travel_as_config_entries_with_secrets_as_references_only() {
        let shared = SharedStoreOptions::default();
        let url = Url::parse("s3://lake").unwrap();
        let options: BTreeMap<String, String> = [
            ("aws.endpoint", "http://127.0.0.1:9000"),
            ("aws.region", "us-east-1"),
            ("aws.access_key_id", "AKIALITERAL"),
            ("aws.secret_access_key", "${secret:S3_KEY}"),
            ("retry.max_retries", "3"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        shared.record(&url, &options);
        let config = SessionConfig::new().with_option_extension(shared.clone());
        let entries: Vec<_> = config
            .options()
            .entries()
            .into_iter()
            .filter(|e| e.key.starts_with(NAMESPACE))
            .collect();
        assert_eq!(entries.len(), 1);
        let value = entries[0].value.clone().unwrap();
        assert!(!value.contains("AKIALITERAL"), "{value}");
        assert!(
            value.contains("${secret:S3_KEY}") && value.contains("9000"),
            "{value}"
        );

        // A node receives them as Ballista hands settings over: key and value strings.
        let mut node = SessionConfig::new().with_option_extension(SharedStoreOptions::default());
        node.options_mut().set(&entries[0].key, &value).unwrap();
        let received = node
            .options()
            .extensions
            .get::<SharedStoreOptions>()
            .unwrap()
            .stores();
        assert_eq!(received.len(), 1);
        assert_eq!(received[0].0, "s3://lake");
        assert_eq!(received[0].1.get("aws.region").unwrap(), "us-east-1");
        assert!(!received[0].1.contains_key("aws.access_key_id"));

        // The node resolves references from its own secrets and builds the store once.
        node.options_mut()
            .set(
                &entries[0].key,
                r#"{"aws.access_key_id": "${secret:S3_ID}", "aws.secret_access_key": "${secret:S3_KEY}",
                    "aws.region": "us-east-1", "aws.endpoint": "http://127.0.0.1:9000"}"#,
            )
            .unwrap();
        let stores = NodeStores::new(SecretStore::from_values(
            [("S3_ID", "node-id"), ("S3_KEY", "node-secret")]
                .map(|(k, v)| (k.to_string(), v.to_string())),
        ));
        let a = stores.registry(&node).unwrap().get_store(&url).unwrap();
        let b = stores.registry(&node).unwrap().get_store(&url).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!format!("{stores:?}").contains("node-secret"));

        // A node missing the secret says which store and option need it.
        let err = NodeStores::new(SecretStore::from_values([]))
            .registry(&node)
            .unwrap_err()
            .to_string();
        assert!(err.contains("s3://lake") && err.contains("S3_"), "{err}");

        assert!(node.options_mut().set(&entries[0].key, "not json").is_err());
    }
}
