//! The one parser of a table's `OPTIONS`.
//!
//! A connector takes each option by name; the key must be one its [`ParamSpec`]s declare (the
//! parameters `flowengine connectors`, the boundary gate and the docs know), so an option can
//! never be read without being documented and classified. Values are parsed into their types
//! with errors naming the table, key and value; secret references (`${secret:NAME}`) expand
//! into [`Secret`]s; and [`TableOptions::finish`] refuses whatever nobody took (a misspelling)
//! and lists what the table accepts.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::str::FromStr;

use datafusion::catalog::Session;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::CreateExternalTable;
use engine::{ParamSpec, Secret, SecretStore};

/// A table's options, taken one by one.
pub(crate) struct TableOptions<'a> {
    /// The family in messages (`RabbitMQ`).
    kind: &'static str,
    table: String,
    state: &'a dyn Session,
    opts: BTreeMap<String, String>,
    declared: Vec<ParamSpec>,
}

impl<'a> TableOptions<'a> {
    /// The options of `cmd` (without DataFusion's `format.` prefix), readable as `declared`.
    pub(crate) fn new(
        kind: &'static str,
        state: &'a dyn Session,
        cmd: &CreateExternalTable,
        declared: Vec<ParamSpec>,
    ) -> Self {
        Self::from_map(kind, cmd.name.to_string(), state, options_of(cmd), declared)
    }

    /// Options given as a map (a table's options without the `format.` prefix).
    pub(crate) fn from_map(
        kind: &'static str,
        table: String,
        state: &'a dyn Session,
        opts: BTreeMap<String, String>,
        declared: Vec<ParamSpec>,
    ) -> Self {
        Self {
            kind,
            table,
            state,
            opts,
            declared,
        }
    }

    /// The session the table is created in.
    pub(crate) fn state(&self) -> &'a dyn Session {
        self.state
    }

    /// A planning error naming the table.
    pub(crate) fn error(&self, message: impl Display) -> DataFusionError {
        DataFusionError::Plan(format!("{} table `{}`: {message}", self.kind, self.table))
    }

    fn declared(&self, key: &str) -> Result<()> {
        if self.declared.iter().any(|s| s.keys().any(|k| k == key)) {
            Ok(())
        } else {
            Err(DataFusionError::Internal(format!(
                "{} tables read option `{key}` without declaring it in their parameters",
                self.kind
            )))
        }
    }

    /// The value of `key`, if given, without taking it.
    pub(crate) fn peek(&self, key: &str) -> Option<&str> {
        self.opts.get(key).map(String::as_str)
    }

    /// Replace the value of `key` (a connector rewriting one option into another form).
    pub(crate) fn set(&mut self, key: &str, value: impl Into<String>) {
        self.opts.insert(key.to_string(), value.into());
    }

    /// Take `key` as text.
    pub(crate) fn string(&mut self, key: &str) -> Result<Option<String>> {
        self.declared(key)?;
        Ok(self.opts.remove(key))
    }

    /// Take `key` parsed as `T`.
    pub(crate) fn parsed<T: FromStr>(&mut self, key: &str) -> Result<Option<T>>
    where
        T::Err: Display,
    {
        self.string(key)?
            .map(|v| {
                v.trim()
                    .parse::<T>()
                    .map_err(|e| self.error(format!("option `{key}` = `{v}`: {e}")))
            })
            .transpose()
    }

    /// Take `key`, a credential, expanding its `${secret:NAME}` references.
    pub(crate) fn secret(&mut self, key: &str) -> Result<Option<Secret>> {
        let Some(v) = self.string(key)? else {
            return Ok(None);
        };
        self.expand(key, &v).map(|s| Some(Secret::new(s)))
    }

    /// Take `key` as text with its `${secret:NAME}` references expanded: a value that is no
    /// credential itself but may be kept in the secret store (a user or database name).
    pub(crate) fn expanded(&mut self, key: &str) -> Result<Option<String>> {
        let Some(v) = self.string(key)? else {
            return Ok(None);
        };
        self.expand(key, &v).map(Some)
    }

    /// `value` (of option `key`) with its `${secret:NAME}` references expanded; the error names
    /// the key and the missing secret, never a value.
    pub(crate) fn expand(&self, key: &str, value: &str) -> Result<String> {
        secrets_of(self.state)
            .expand(value)
            .map_err(|e| self.error(format!("option `{key}`: {e}")))
    }

    /// Take the name of a declared column (`message_id`), checked against `schema`.
    pub(crate) fn column(
        &mut self,
        key: &str,
        schema: &datafusion::arrow::datatypes::Schema,
    ) -> Result<Option<String>> {
        let Some(c) = self.string(key)? else {
            return Ok(None);
        };
        if schema.index_of(&c).is_err() {
            return Err(self.error(format!("{key} column `{c}` is not declared")));
        }
        Ok(Some(c))
    }

    /// Take every option of `keys` that was given, as text (to hand to another parser).
    pub(crate) fn all_of(&mut self, keys: &[&str]) -> Result<Vec<(String, String)>> {
        let mut taken = Vec::new();
        for key in keys {
            if let Some(v) = self.string(key)? {
                taken.push((key.to_string(), v));
            }
        }
        Ok(taken)
    }

    /// Take every option named `prefix` + a name (`header.Authorization`), as name and value
    /// with secret references expanded: values such as headers may carry credentials.
    pub(crate) fn prefixed(&mut self, prefix: &str) -> Result<Vec<(String, Secret)>> {
        if !self.declared.iter().any(|s| s.name.starts_with(prefix)) {
            return Err(DataFusionError::Internal(format!(
                "{} tables read options `{prefix}*` without declaring them in their parameters",
                self.kind
            )));
        }
        let keys: Vec<String> = self
            .opts
            .keys()
            .filter(|k| k.starts_with(prefix) && k.len() > prefix.len())
            .cloned()
            .collect();
        let mut taken = Vec::new();
        for key in keys {
            let v = self.opts.remove(&key).unwrap_or_default();
            let value = self.expand(&key, &v)?;
            taken.push((key[prefix.len()..].to_string(), Secret::new(value)));
        }
        Ok(taken)
    }

    /// Every option was taken; otherwise an error naming the unknown ones and the known ones.
    pub(crate) fn finish(self) -> Result<()> {
        if self.opts.is_empty() {
            return Ok(());
        }
        let unknown: Vec<&str> = self.opts.keys().map(String::as_str).collect();
        // LOCATION is declared (the gate checks it) but is no option.
        let mut known: Vec<&str> = self
            .declared
            .iter()
            .flat_map(ParamSpec::keys)
            .filter(|k| *k != "LOCATION")
            .collect();
        known.sort_unstable();
        known.dedup();
        Err(self.error(format!(
            "unknown option(s): {}; {} tables take {}",
            unknown.join(", "),
            self.kind,
            known.join(", ")
        )))
    }
}

/// The secret store of `state` (the environment's when the session has none).
pub(crate) fn secrets_of(state: &dyn Session) -> SecretStore {
    state
        .config()
        .get_extension::<SecretStore>()
        .map(|s| (*s).clone())
        .unwrap_or_else(SecretStore::from_env)
}

/// A `CREATE EXTERNAL TABLE`'s options, without DataFusion's `format.` prefix.
pub(crate) fn options_of(cmd: &CreateExternalTable) -> BTreeMap<String, String> {
    cmd.options
        .iter()
        .map(|(k, v)| {
            (
                k.strip_prefix("format.").unwrap_or(k).to_string(),
                v.clone(),
            )
        })
        .collect()
}
