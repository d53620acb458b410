//! Parquet modular encryption at rest: the `[parquet_encryption]` section, and the DataFusion
//! [`EncryptionFactory`] that encrypts every Parquet file FlowEngine writes (`COPY ... TO`,
//! `INSERT INTO` a Parquet table) with the configured write key and decrypts what it reads.
//!
//! Keys are named; a file records only the *name* of its key (as Parquet key metadata), so keys
//! can be rotated: add the new key, point `write_key` at it, and keep the old one while files
//! written with it are still read. Key values come from `${secret:NAME}` references only and are
//! never printed (this module's `Debug` output shows key names).

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::config::EncryptionFactoryOptions;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::parquet_encryption::EncryptionFactory;
use datafusion::parquet::encryption::decrypt::{FileDecryptionProperties, KeyRetriever};
use datafusion::parquet::encryption::encrypt::FileEncryptionProperties;
use datafusion::parquet::errors::ParquetError;
use object_store::path::Path;
use serde::{Deserialize, Serialize};

use crate::secrets::SecretStore;

/// The id FlowEngine's factory is registered under in the runtime environment.
pub const FACTORY_ID: &str = "flowengine";

/// `[parquet_encryption]` settings.
///
/// ```toml
/// [parquet_encryption]
/// keys = { k2026 = "${secret:PARQUET_KEY_2026}", k2025 = "${secret:PARQUET_KEY_2025}" }
/// write_key = "k2026"   # default: the only key
/// ```
/// Each key is 32 or 64 hex digits (AES-128-GCM or AES-256-GCM).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ParquetEncryptionConfig {
    /// Key name -> `${secret:NAME}` reference to the hex key.
    pub keys: BTreeMap<String, String>,
    /// The key new files are encrypted with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write_key: Option<String>,
}

impl ParquetEncryptionConfig {
    pub fn is_default(&self) -> bool {
        self.keys.is_empty() && self.write_key.is_none()
    }

    /// Checks that need no secret values: names, references, the write key.
    pub fn validate(&self) -> Result<(), String> {
        for (name, value) in &self.keys {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(format!(
                    "parquet_encryption.keys: key name `{name}` must be letters, digits, `_` and `-`"
                ));
            }
            let v = value.trim();
            if !(v.starts_with("${secret:") && v.ends_with('}')) {
                return Err(format!(
                    "parquet_encryption.keys.{name} is not a secret reference: write it as \
                     \"${{secret:NAME}}\" and set FLOWENGINE_SECRET_NAME or put it in the secrets_file"
                ));
            }
        }
        match (&self.write_key, self.keys.len()) {
            (Some(w), _) if !self.keys.contains_key(w) => Err(format!(
                "parquet_encryption.write_key `{w}` is not one of the configured keys"
            )),
            (None, n) if n > 1 => Err(
                "parquet_encryption: several keys are configured; name the one new files use with write_key"
                    .into(),
            ),
            _ => Ok(()),
        }
    }

    /// Resolve the keys' secrets. `None` when no key is configured.
    pub fn resolve(&self, secrets: &SecretStore) -> Result<Option<ParquetKeys>, String> {
        if self.keys.is_empty() {
            return Ok(None);
        }
        let mut keys = BTreeMap::new();
        for (name, reference) in &self.keys {
            let hex = secrets
                .expand(reference.trim())
                .map_err(|e| format!("parquet_encryption.keys.{name}: {e}"))?;
            let bytes = decode_hex(hex.trim()).ok_or_else(|| {
                format!(
                    "parquet_encryption.keys.{name}: the secret is not 32 or 64 hex digits \
                     (a 128- or 256-bit AES key)"
                )
            })?;
            keys.insert(name.clone(), bytes);
        }
        let write = self
            .write_key
            .clone()
            .or_else(|| keys.keys().next().cloned())
            .unwrap_or_default();
        Ok(Some(ParquetKeys {
            keys: Arc::new(keys),
            write,
        }))
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !(s.len() == 32 || s.len() == 64) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Resolved keys: the factory registered with DataFusion.
#[derive(Clone)]
pub struct ParquetKeys {
    keys: Arc<BTreeMap<String, Vec<u8>>>,
    write: String,
}

impl std::fmt::Debug for ParquetKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParquetKeys")
            .field("key_names", &self.keys.keys().collect::<Vec<_>>())
            .field("write_key", &self.write)
            .finish()
    }
}

#[async_trait]
impl EncryptionFactory for ParquetKeys {
    async fn get_file_encryption_properties(
        &self,
        _config: &EncryptionFactoryOptions,
        _schema: &SchemaRef,
        _file_path: &Path,
    ) -> DfResult<Option<Arc<FileEncryptionProperties>>> {
        let key = self.keys.get(&self.write).ok_or_else(|| {
            DataFusionError::Configuration(format!(
                "parquet_encryption: write key `{}` is not configured",
                self.write
            ))
        })?;
        // Footer and every column under the write key; the footer is encrypted too, so not
        // even the schema or statistics are readable without it.
        let props = FileEncryptionProperties::builder(key.clone())
            .with_footer_key_metadata(self.write.as_bytes().to_vec())
            .build()?;
        Ok(Some(props))
    }

    async fn get_file_decryption_properties(
        &self,
        _config: &EncryptionFactoryOptions,
        file_path: &Path,
    ) -> DfResult<Option<Arc<FileDecryptionProperties>>> {
        let retriever = Retriever {
            keys: Arc::clone(&self.keys),
            file: file_path.to_string(),
        };
        let props = FileDecryptionProperties::with_key_retriever(Arc::new(retriever)).build()?;
        Ok(Some(props))
    }
}

/// Finds a file's key by the name recorded in it.
struct Retriever {
    keys: Arc<BTreeMap<String, Vec<u8>>>,
    file: String,
}

impl KeyRetriever for Retriever {
    fn retrieve_key(&self, key_metadata: &[u8]) -> Result<Vec<u8>, ParquetError> {
        let name = String::from_utf8_lossy(key_metadata);
        self.keys.get(name.as_ref()).cloned().ok_or_else(|| {
            ParquetError::General(format!(
                "{} is encrypted with Parquet key `{name}`, which is not among the configured \
                 parquet_encryption.keys ({})",
                self.file,
                self.keys.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(keys: &[(&str, &str)], write: Option<&str>) -> ParquetEncryptionConfig {
        ParquetEncryptionConfig {
            keys: keys
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            write_key: write.map(str::to_string),
        }
    }

    #[test]
    fn plain_keys_and_unknown_write_keys_are_refused() {
        let plain = config(&[("k1", "00112233445566778899aabbccddeeff")], None);
        assert!(
            plain
                .validate()
                .unwrap_err()
                .contains("not a secret reference")
        );
        let unknown = config(&[("k1", "${secret:K1}")], Some("k2"));
        assert!(unknown.validate().unwrap_err().contains("write_key `k2`"));
        let ambiguous = config(&[("k1", "${secret:K1}"), ("k2", "${secret:K2}")], None);
        assert!(ambiguous.validate().unwrap_err().contains("write_key"));
        assert!(config(&[("k1", "${secret:K1}")], None).validate().is_ok());
    }

    #[test]
    fn keys_resolve_from_secrets_and_bad_lengths_are_refused_without_echoing_them() {
        let secrets = SecretStore::from_values([
            (
                "K1".to_string(),
                "00112233445566778899aabbccddeeff".to_string(),
            ),
            ("SHORT".to_string(), "abcdef".to_string()),
        ]);
        let keys = config(&[("k1", "${secret:K1}")], None)
            .resolve(&secrets)
            .unwrap()
            .unwrap();
        assert_eq!(keys.write, "k1");
        assert_eq!(keys.keys["k1"].len(), 16);
        assert!(!format!("{keys:?}").contains("0011"));
        let err = config(&[("k1", "${secret:SHORT}")], None)
            .resolve(&secrets)
            .unwrap_err();
        assert!(
            err.contains("32 or 64 hex digits") && !err.contains("abcdef"),
            "{err}"
        );
        let err = config(&[("k1", "${secret:MISSING}")], None)
            .resolve(&secrets)
            .unwrap_err();
        assert!(err.contains("MISSING"), "{err}");
    }
}
