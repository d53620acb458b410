//! Environment overrides by one rule: a top-level key `k` is `FLOWENGINE_K`, a key `k` of
//! `[section]` is `FLOWENGINE_SECTION_K` (`[server.tls]`: `FLOWENGINE_SERVER_TLS_K`), upper case.
//! The keys come from the configuration structs themselves (the field names serde
//! deserializes), so a new setting has its variable without any code here. A value is read as
//! a TOML value when it is one (`true`, `4`, `["a", "b"]`), else as a string (`8GiB`, `60%`).
//! The old names of a few variables still work, with a deprecation warning.

use serde::de::{self, Deserialize, Visitor};

use super::EngineConfig;
use crate::error::{EngineError, Result};

/// The configuration's sections (`""` is the top level) and the fields each holds.
pub fn sections() -> Vec<(&'static str, &'static [&'static str])> {
    vec![
        ("", fields_of::<EngineConfig>()),
        ("server", fields_of::<crate::server_config::ServerConfig>()),
        ("server.tls", fields_of::<crate::server_config::TlsConfig>()),
        ("security", fields_of::<crate::security::SecurityConfig>()),
        (
            "parquet_encryption",
            fields_of::<crate::encryption::ParquetEncryptionConfig>(),
        ),
    ]
}

/// Variables renamed to follow the rule: old name, new name.
pub const DEPRECATED: &[(&str, &str)] = &[
    ("FLOWENGINE_AUTH", "FLOWENGINE_SECURITY_AUTH"),
    ("FLOWENGINE_BIND", "FLOWENGINE_SERVER_BIND"),
    ("FLOWENGINE_ADMIN_BIND", "FLOWENGINE_SERVER_ADMIN_BIND"),
];

/// The variable that overrides `key` of `section`.
pub fn variable(section: &str, key: &str) -> String {
    let mut name = String::from("FLOWENGINE_");
    if !section.is_empty() {
        name.push_str(&section.replace('.', "_").to_ascii_uppercase());
        name.push('_');
    }
    name.push_str(&key.to_ascii_uppercase());
    name
}

/// The section and key `name` overrides, if any.
fn target(
    name: &str,
    sections: &[(&'static str, &'static [&'static str])],
) -> Option<(&'static str, &'static str)> {
    sections.iter().find_map(|(section, fields)| {
        fields
            .iter()
            .find(|key| variable(section, key) == name)
            .map(|key| (*section, *key))
    })
}

impl EngineConfig {
    /// Apply the `FLOWENGINE_*` variables of `env` that name configuration keys; returns the
    /// names of the variables used. Other `FLOWENGINE_*` variables (secrets, logging, command
    /// line flags) are left alone.
    pub fn apply_env(
        &mut self,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Vec<String>> {
        let sections = sections();
        let mut overrides: Vec<(String, &'static str, &'static str, String)> = Vec::new();
        for (name, value) in env {
            let (variable, renamed) = match DEPRECATED.iter().find(|(old, _)| *old == name) {
                Some((old, new)) => {
                    tracing::warn!(
                        "environment variable {old} is deprecated; use {new} (every key's variable is FLOWENGINE_<SECTION>_<KEY>)"
                    );
                    (new.to_string(), true)
                }
                None => (name.clone(), false),
            };
            let Some((section, key)) = target(&variable, &sections) else {
                continue;
            };
            // The new name wins over the old one.
            if renamed && overrides.iter().any(|(n, ..)| *n == variable) {
                continue;
            }
            overrides.retain(|(n, s, k, _)| !(*n == name || (*s == section && *k == key)));
            overrides.push((name, section, key, value));
        }
        if overrides.is_empty() {
            return Ok(Vec::new());
        }
        let origin = |names: &[&str]| {
            if names.len() == 1 {
                format!("environment variable {}", names[0])
            } else {
                format!("environment variables {}", names.join(", "))
            }
        };
        let names: Vec<&str> = overrides.iter().map(|(n, ..)| n.as_str()).collect();
        let base = toml::Table::try_from(&*self).map_err(|e| EngineError::InvalidConfig {
            origin: origin(&names),
            message: e.to_string(),
        })?;
        // First with values read as TOML; then, if that fails, with plain values as strings
        // (a password of digits).
        let mut last = String::new();
        for typed in [true, false] {
            let mut table = base.clone();
            for (_, section, key, value) in &overrides {
                let mut at = &mut table;
                for part in section.split('.').filter(|p| !p.is_empty()) {
                    at = at
                        .entry(part.to_string())
                        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                        .as_table_mut()
                        .ok_or_else(|| EngineError::InvalidConfig {
                            origin: origin(&names),
                            message: format!("`{section}` is not a section"),
                        })?;
                }
                at.insert(key.to_string(), parse(value, typed));
            }
            match EngineConfig::deserialize(toml::Value::Table(table)) {
                Ok(config) => {
                    *self = config;
                    let mut used: Vec<String> = names.iter().map(|n| n.to_string()).collect();
                    used.sort();
                    return Ok(used);
                }
                Err(e) => last = e.to_string().trim_end().to_string(),
            }
        }
        Err(EngineError::InvalidConfig {
            origin: origin(&names),
            message: last,
        })
    }
}

/// `value` as TOML when `typed` and it reads as a TOML value, else as a string.
fn parse(value: &str, typed: bool) -> toml::Value {
    if typed
        && let Ok(mut doc) = format!("v = {value}").parse::<toml::Table>()
        && let Some(v) = doc.remove("v")
    {
        return v;
    }
    toml::Value::String(value.to_string())
}

/// The field names `T`'s derived `Deserialize` expects.
pub fn fields_of<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    let mut fields = None;
    let _ = T::deserialize(FieldsProbe(&mut fields));
    fields.unwrap_or(&[])
}

/// A deserializer that only records the fields a struct asks for.
struct FieldsProbe<'a>(&'a mut Option<&'static [&'static str]>);

impl<'de> de::Deserializer<'de> for FieldsProbe<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(
        self,
        _visitor: V,
    ) -> std::result::Result<V::Value, Self::Error> {
        Err(de::Error::custom("not a struct"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> std::result::Result<V::Value, Self::Error> {
        *self.0 = Some(fields);
        Err(de::Error::custom("probed"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn every_key_has_a_variable_by_the_rule() {
        let s = sections();
        assert!(
            s[0].1.contains(&"memory_limit") && s[1].1.contains(&"bind"),
            "{s:?}"
        );
        let mut config = EngineConfig::default();
        let used = config
            .apply_env(env(&[
                ("FLOWENGINE_BATCH_SIZE", "1024"),
                ("FLOWENGINE_SERVER_QUERY_TIMEOUT_SECS", "5"),
                (
                    "FLOWENGINE_SERVER_SET_ALLOWLIST",
                    r#"["flowengine.optimizer.*"]"#,
                ),
                ("FLOWENGINE_SECURITY_READ_ONLY", "true"),
                ("FLOWENGINE_MEMORY_LIMIT", "60%"),
                ("FLOWENGINE_SECRET_X", "not a key"),
                ("FLOWENGINE_LOG", "info"),
            ]))
            .unwrap();
        assert_eq!(used.len(), 5, "{used:?}");
        assert_eq!(config.batch_size, Some(1024));
        assert_eq!(config.server.query_timeout_secs, 5);
        assert_eq!(config.server.set_allowlist, vec!["flowengine.optimizer.*"]);
        assert!(config.security.read_only);
        assert!(config.memory_limit.is_some());
    }

    #[test]
    fn old_names_still_work_and_new_names_win() {
        let mut config = EngineConfig::default();
        config
            .apply_env(env(&[("FLOWENGINE_BIND", "127.0.0.1:1")]))
            .unwrap();
        assert_eq!(config.server.bind, "127.0.0.1:1");
        let mut config = EngineConfig::default();
        config
            .apply_env(env(&[
                ("FLOWENGINE_SERVER_BIND", "127.0.0.1:2"),
                ("FLOWENGINE_BIND", "127.0.0.1:1"),
            ]))
            .unwrap();
        assert_eq!(config.server.bind, "127.0.0.1:2");
    }

    #[test]
    fn a_bad_value_names_its_variable() {
        let err = EngineConfig::default()
            .apply_env(env(&[("FLOWENGINE_SERVER_MAX_CONCURRENT_QUERIES", "lots")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("FLOWENGINE_SERVER_MAX_CONCURRENT_QUERIES")
                && err.contains("max_concurrent_queries"),
            "{err}"
        );
    }
}
