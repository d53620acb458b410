//! Typed engine configuration: `flowengine.toml`, then environment overrides by one rule
//! (`FLOWENGINE_<SECTION>_<KEY>`, see [`env`]), validated once at load so a bad key fails at
//! start with a message that names it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use bytesize::ByteSize;
use datafusion::config::ConfigOptions;
use serde::{Deserialize, Serialize};

pub mod env;
mod memory;
pub mod reference;

pub use memory::{MemoryLimit, MemoryPoolKind, num_cores, physical_memory};

use crate::error::{EngineError, Result};
use crate::security::SecurityConfig;
use crate::server_config::ServerConfig;

/// Lower bound of the default `target_partitions`.
const MIN_DEFAULT_PARTITIONS: usize = 4;
/// Memory pool per partition below which plans use fewer partitions (see
/// [`EngineConfig::effective_target_partitions`]).
pub const PARTITION_MEMORY: u64 = 256 * 1024 * 1024;

/// The largest gRPC message cluster nodes and clients exchange (a query's plan is one).
pub const CLUSTER_GRPC_MESSAGE_LIMIT: u64 = 256 * 1024 * 1024;
/// Default of `cluster_inline_limit`.
pub const CLUSTER_INLINE_LIMIT_DEFAULT: u64 = 64 * 1024 * 1024;
/// Highest `cluster_inline_limit`: the rest of a plan message stays for the plan itself.
pub const CLUSTER_INLINE_LIMIT_MAX: u64 = 192 * 1024 * 1024;

/// Default file looked up in the working directory when `--config` is not given.
pub const DEFAULT_CONFIG_FILE: &str = "flowengine.toml";

/// The engine's user-facing configuration.
///
/// ```toml
/// memory_limit = "60%"          # or "8GiB"; the DataFusion memory pool size
/// memory_pool = "greedy"        # or "fair" (fair share among spilling operators)
/// spill_dir = "/var/tmp/flowengine-spill"
/// max_spill_size = "100GiB"
/// target_partitions = 2         # default: number of cores, at least 4
/// batch_size = 8192
///
/// [datafusion]                  # any DataFusion setting, validated at start
/// "datafusion.execution.parquet.compression" = "zstd(1)"
/// ```
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    /// Size of the memory pool: bytes (`"4GiB"`, `1073741824`) or a share of physical RAM (`"50%"`).
    /// Default: 50% of physical memory, leaving headroom for allocations the pool does not track.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit: Option<MemoryLimit>,
    /// How the pool shares memory between operators. Default: `greedy` for `run`/`sql`, `fair` for
    /// `serve` (concurrent queries each get a fair share and spill instead of starving others).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_pool: Option<MemoryPoolKind>,
    /// Directory for spill files. Default: the system temporary directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spill_dir: Option<PathBuf>,
    /// Maximum disk space spill files may use. Default: DataFusion's (100 GiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_spill_size: Option<ByteSize>,
    /// Parallelism of plans. Default: number of cores, at least 4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_partitions: Option<usize>,
    /// Rows per record batch. Default: 8192.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
    /// The default of every `flowengine.optimizer.*` session switch: FlowEngine's own optimizer
    /// rules, which DataFusion 55 lacks (docs/performance.md). Default: on; `false` to compare
    /// plans or rule them out. A session still turns one on with `SET flowengine.optimizer.<rule>
    /// = true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra_optimizer_rules: Option<bool>,
    /// When a join is planned as a sort-merge join, which spills, instead of a hash join, whose
    /// build side must fit in memory: `auto` (default) when the build side is estimated to
    /// need more than a quarter of `memory_limit`, `always`, or `never`. Env:
    /// `FLOWENGINE_SPILLABLE_JOINS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spillable_joins: Option<SpillableJoinsMode>,
    /// The largest estimated build side, in rows, that a hash join probed by at least four
    /// times as many rows collects into one hash table instead of repartitioning both inputs
    /// (see [`crate::optimizer::collect_builds`]); `0` turns this off. Default: 500000. Part of the extra
    /// optimizer rules. Env: `FLOWENGINE_COLLECT_BUILD_ROWS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collect_build_rows: Option<usize>,
    /// Raw DataFusion settings (`datafusion.*` keys), applied after FlowEngine's own defaults.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub datafusion: BTreeMap<String, String>,
    /// Where the embedded state store keeps its journal of runs. Default: `.flowengine` in the
    /// working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<PathBuf>,
    /// A PostgreSQL URL (`postgresql://user@host/db`) for a state store shared by several
    /// machines; when set it replaces the file journal. It may hold a password: never printed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_url: Option<String>,
    /// Append an OpenLineage `RunEvent` (JSON line) here for every statement of a run that
    /// writes. Env: `FLOWENGINE_LINEAGE_FILE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lineage_file: Option<PathBuf>,
    /// POST every such event to this OpenLineage HTTP endpoint (e.g. Marquez's
    /// `http://marquez:5000/api/v1/lineage`). Env: `FLOWENGINE_LINEAGE_URL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lineage_url: Option<String>,
    /// Bearer token for `lineage_url`; write it as `${secret:NAME}`. Never printed. Env:
    /// `FLOWENGINE_LINEAGE_API_KEY`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lineage_api_key: Option<String>,
    /// TOML file of `NAME = "value"` secrets for `${secret:NAME}` references (mode 600).
    /// `FLOWENGINE_SECRET_<NAME>` environment variables take precedence. Env:
    /// `FLOWENGINE_SECRETS_FILE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets_file: Option<PathBuf>,
    /// Export traces (spans of pipelines, statements, Flight calls, queries, connector calls)
    /// to this OpenTelemetry collector over OTLP/HTTP, e.g. `http://collector:4318`. Env:
    /// `FLOWENGINE_OTLP_ENDPOINT` (or the standard `OTEL_EXPORTER_OTLP_ENDPOINT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
    /// Run queries on an Apache DataFusion Ballista cluster: the scheduler's address,
    /// `df://HOST:PORT`. Default: in this process. Env: `FLOWENGINE_CLUSTER`; `--cluster`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// On a cluster, tables executors cannot read (consuming queues, `on_error` readers,
    /// in-memory and `system` tables) are read by this process and their rows sent with the
    /// query; this caps those rows per query, as Arrow IPC. Default: 64 MiB; at most 192 MiB.
    /// Env: `FLOWENGINE_CLUSTER_INLINE_LIMIT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_inline_limit: Option<ByteSize>,
    /// `flowengine serve` settings.
    #[serde(default, skip_serializing_if = "ServerConfig::is_default")]
    pub server: ServerConfig,
    /// `flowengine serve` authentication, roles, allowed locations and audit log.
    #[serde(default, skip_serializing_if = "SecurityConfig::is_default")]
    pub security: SecurityConfig,
    /// Parquet modular encryption of every Parquet file written, with keys from secrets.
    #[serde(
        default,
        skip_serializing_if = "crate::encryption::ParquetEncryptionConfig::is_default"
    )]
    pub parquet_encryption: crate::encryption::ParquetEncryptionConfig,
}

/// When joins are planned to spill (see [`crate::optimizer::spillable_joins`]).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SpillableJoinsMode {
    /// A sort-merge join when the build side would take over a quarter of the memory pool.
    #[default]
    Auto,
    /// Every equi-join that can be one is a sort-merge join.
    Always,
    /// Hash joins as DataFusion plans them.
    Never,
}

impl FromStr for SpillableJoinsMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "always" => Ok(Self::Always),
            "never" => Ok(Self::Never),
            other => Err(format!(
                "unknown spillable_joins mode `{other}`; expected auto, always or never"
            )),
        }
    }
}

/// Where the configuration came from, for `config check`.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub config: EngineConfig,
    /// The file that was read, if any.
    pub file: Option<PathBuf>,
    /// Environment variables that overrode file values.
    pub env_overrides: Vec<String>,
}

impl EngineConfig {
    /// Load `path` (or `./flowengine.toml` when it exists), apply `FLOWENGINE_*` overrides from
    /// `env`, and validate. An explicitly named file that does not exist is an error.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<LoadedConfig> {
        let (mut config, file) = match path {
            Some(p) => (Self::from_file(p)?, Some(p.to_path_buf())),
            None => {
                let default = Path::new(DEFAULT_CONFIG_FILE);
                if default.is_file() {
                    (Self::from_file(default)?, Some(default.to_path_buf()))
                } else {
                    (EngineConfig::default(), None)
                }
            }
        };
        let env_overrides = config.apply_env(env)?;
        config.validate(
            file.as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "defaults".into()),
        )?;
        Ok(LoadedConfig {
            config,
            file,
            env_overrides,
        })
    }

    /// Parse a TOML file (unknown keys are errors).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| EngineError::ReadConfig {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// Parse TOML text; `origin` names the source in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| EngineError::InvalidConfig {
            origin: origin.to_string(),
            message: e.to_string().trim_end().to_string(),
        })
    }

    /// Check values that serde cannot: ranges and DataFusion keys.
    pub fn validate(&self, origin: String) -> Result<()> {
        let bad = |message: String| EngineError::InvalidConfig {
            origin: origin.clone(),
            message,
        };
        if self.target_partitions == Some(0) {
            return Err(bad("target_partitions must be at least 1".into()));
        }
        if self.batch_size == Some(0) {
            return Err(bad("batch_size must be at least 1".into()));
        }
        self.server.validate().map_err(bad)?;
        if let Some(url) = &self.cluster {
            cluster_address(url).map_err(bad)?;
        }
        if let Some(limit) = self.cluster_inline_limit
            && limit.as_u64() > CLUSTER_INLINE_LIMIT_MAX
        {
            return Err(bad(format!(
                "cluster_inline_limit {} is above {}: a query's plan is one gRPC message of at \
                 most {}",
                limit.display().iec(),
                ByteSize(CLUSTER_INLINE_LIMIT_MAX).display().iec(),
                ByteSize(CLUSTER_GRPC_MESSAGE_LIMIT).display().iec()
            )));
        }
        if let Some(url) = &self.otlp_endpoint
            && !url::Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "http" | "https"))
        {
            return Err(bad(format!(
                "otlp_endpoint `{url}` is not an http(s) URL (e.g. http://collector:4318)"
            )));
        }
        self.security.validate().map_err(bad)?;
        self.parquet_encryption.validate().map_err(bad)?;
        self.check_no_plain_secrets().map_err(bad)?;
        let mut options = ConfigOptions::new();
        for (key, value) in &self.datafusion {
            options
                .set(key, value)
                .map_err(|e| bad(format!("[datafusion] key `{key}` = `{value}`: {e}")))?;
        }
        Ok(())
    }

    /// Passwords and keys must be `${secret:NAME}` references, never plain text in the file.
    fn check_no_plain_secrets(&self) -> std::result::Result<(), String> {
        let hint = "write it as ${secret:NAME} and set FLOWENGINE_SECRET_NAME or put it in the secrets_file";
        for (key, url) in [
            ("state_url", &self.state_url),
            ("lineage_url", &self.lineage_url),
        ] {
            let Some(url) = url else { continue };
            if url.contains("${secret:") {
                continue;
            }
            if url::Url::parse(url).is_ok_and(|u| u.password().is_some()) {
                return Err(format!("{key} holds a plain-text password: {hint}"));
            }
        }
        if let Some(key) = &self.lineage_api_key
            && !key.trim_start().starts_with("${secret:")
        {
            return Err(format!("lineage_api_key is a plain-text key: {hint}"));
        }
        Ok(())
    }

    /// `cluster_inline_limit` in bytes, defaulted.
    pub fn cluster_inline_limit_bytes(&self) -> u64 {
        self.cluster_inline_limit
            .map_or(CLUSTER_INLINE_LIMIT_DEFAULT, |l| l.as_u64())
    }

    /// The pool size this configuration asks for, in bytes.
    pub fn memory_limit_bytes(&self) -> u64 {
        self.memory_limit
            .unwrap_or(MemoryLimit::Percent(50.0))
            .to_bytes(physical_memory())
    }

    /// Number of partitions plans use: the cores, but at least 4. On small machines a few more
    /// partitions than cores overlap I/O with compute and absorb skew (TPC-H SF1 on 2 cores:
    /// 3.73s with 2 partitions, 3.55s with 4; see benches/RESULTS.md).
    ///
    /// Without an explicit setting the memory limit caps it too: one partition per
    /// [`PARTITION_MEMORY`] of pool. Every partition of a DataFusion 55 sort reserves memory to
    /// merge its spill files, and the final merge of the partitions cannot spill; with too
    /// little memory per partition a sort that could spill fails instead (lineitem SF1 sorted
    /// under 64 MiB: finishes with 1 partition, fails with 2 or 4; 256 MiB with 2 fails, 512 MiB
    /// with 2 or 4 finishes).
    pub fn effective_target_partitions(&self) -> usize {
        self.target_partitions.unwrap_or_else(|| {
            let by_memory = (self.memory_limit_bytes() / PARTITION_MEMORY).max(1);
            num_cores()
                .max(MIN_DEFAULT_PARTITIONS)
                .min(usize::try_from(by_memory).unwrap_or(usize::MAX))
        })
    }

    /// The state directory in effect.
    pub fn effective_state_dir(&self) -> PathBuf {
        self.state_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(".flowengine"))
    }

    /// Rows per batch.
    pub fn effective_batch_size(&self) -> usize {
        self.batch_size.unwrap_or(8192)
    }

    /// The largest build side, in estimated rows, that a hash join collects when probed by a
    /// much larger input (`collect_build_rows`; 0 = never).
    pub fn effective_collect_build_rows(&self) -> usize {
        self.collect_build_rows
            .unwrap_or(crate::optimizer::collect_builds::DEFAULT_MAX_BUILD_ROWS)
    }

    /// The configuration as given (file and environment), secrets redacted, as TOML
    /// (`flowengine config print`).
    pub fn redacted_toml(&self) -> String {
        toml::to_string(&self.redacted()).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }

    /// The configuration with every default filled in (`[server]` and `[security]` included),
    /// secrets redacted, as TOML (`flowengine config check`, `config print --effective`).
    pub fn effective_toml(&self) -> String {
        let mut effective = self.redacted();
        effective.memory_limit = Some(self.memory_limit.unwrap_or(MemoryLimit::Percent(50.0)));
        effective.target_partitions = Some(self.effective_target_partitions());
        effective.batch_size = Some(self.effective_batch_size());
        effective.extra_optimizer_rules = Some(self.extra_optimizer_rules.unwrap_or(true));
        effective.spillable_joins = Some(self.spillable_joins.unwrap_or_default());
        effective.collect_build_rows = Some(self.effective_collect_build_rows());
        effective.state_dir = Some(self.effective_state_dir());
        if effective.spill_dir.is_none() {
            effective.spill_dir = Some(std::env::temp_dir());
        }
        let mut table = match toml::Table::try_from(&effective) {
            Ok(t) => t,
            Err(e) => return format!("# cannot render: {e}\n"),
        };
        // Sections left out when they hold only defaults.
        for (name, section) in [
            ("server", toml::Table::try_from(&effective.server)),
            ("security", toml::Table::try_from(&effective.security)),
        ] {
            if let (false, Ok(section)) = (table.contains_key(name), section) {
                table.insert(name.into(), toml::Value::Table(section));
            }
        }
        toml::to_string(&table).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }

    /// A copy safe to print: passwords in URLs, plain-text keys, password hashes and API key
    /// digests replaced by `***` (`${secret:NAME}` references are kept: they name, not hold).
    fn redacted(&self) -> EngineConfig {
        let mut r = self.clone();
        r.state_url = self.state_url.as_deref().map(crate::secrets::redact_url);
        r.lineage_url = self.lineage_url.as_deref().map(crate::secrets::redact_url);
        r.lineage_api_key = self.lineage_api_key.as_deref().map(|k| {
            if k.trim_start().starts_with("${secret:") {
                k.to_string()
            } else {
                "***".to_string()
            }
        });
        // Not secrets themselves, but they help offline guessing.
        for user in &mut r.security.users {
            user.password_hash = "***".into();
        }
        for key in &mut r.security.api_keys {
            key.key_sha256 = "***".into();
        }
        r
    }

    /// Dotted keys (as in [`EngineConfig::effective_settings`]) whose values differ between
    /// `self` and `other`. Only names are returned, never values, so secrets cannot leak.
    pub fn changed_keys(&self, other: &EngineConfig) -> Vec<String> {
        let pairs = |c: &EngineConfig| {
            let mut out = Vec::new();
            if let Ok(table) = toml::Table::try_from(c) {
                flatten("", &table, &mut out);
            }
            out.into_iter()
                .collect::<std::collections::BTreeMap<String, String>>()
        };
        let (a, b) = (pairs(self), pairs(other));
        let mut keys: Vec<String> = a
            .keys()
            .chain(b.keys())
            .filter(|k| a.get(*k) != b.get(*k))
            .cloned()
            .collect();
        keys.sort();
        keys.dedup();
        keys
    }

    /// The effective configuration as `(dotted key, value)` pairs, secrets redacted as in
    /// [`EngineConfig::effective_toml`], `[server]` with its defaults; `[datafusion]` keys are
    /// left out (the session's own settings show them). For `system.settings`.
    pub fn effective_settings(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let Ok(mut table) = self.effective_toml().parse::<toml::Table>() else {
            return out;
        };
        table.remove("datafusion");
        flatten("", &table, &mut out);
        out
    }
}

/// The scheduler address of a `cluster` setting (`df://HOST:PORT`, port 50050 when omitted),
/// as `(host, port)`.
pub fn cluster_address(url: &str) -> std::result::Result<(String, u16), String> {
    let bad = || format!("cluster `{url}` is not a scheduler address: expected df://HOST:PORT");
    let parsed = url::Url::parse(url).map_err(|_| bad())?;
    if parsed.scheme() != "df" {
        return Err(bad());
    }
    let host = parsed
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(bad)?;
    Ok((host.to_string(), parsed.port().unwrap_or(50050)))
}

/// Leaves of `table` as dotted keys; arrays and their tables stay one value (inline TOML).
fn flatten(prefix: &str, table: &toml::Table, out: &mut Vec<(String, String)>) {
    for (key, value) in table {
        let name = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            toml::Value::Table(inner) => flatten(&name, inner, out),
            toml::Value::String(s) => out.push((name, s.clone())),
            other => out.push((name, other.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_inline_limit_is_capped_by_the_message_size() {
        let config = EngineConfig::from_toml("cluster_inline_limit = \"16MiB\"", "t").unwrap();
        config.validate("t".into()).unwrap();
        assert_eq!(config.cluster_inline_limit_bytes(), 16 * 1024 * 1024);
        assert_eq!(
            EngineConfig::default().cluster_inline_limit_bytes(),
            CLUSTER_INLINE_LIMIT_DEFAULT
        );
        let mut config = EngineConfig::default();
        config
            .apply_env([("FLOWENGINE_CLUSTER_INLINE_LIMIT".into(), "1GiB".into())])
            .unwrap();
        let err = config.validate("env".into()).unwrap_err().to_string();
        assert!(err.contains("cluster_inline_limit"), "{err}");
    }

    #[test]
    fn cluster_addresses_are_df_urls() {
        assert_eq!(
            cluster_address("df://sched:7000"),
            Ok(("sched".into(), 7000))
        );
        assert_eq!(
            cluster_address("df://10.0.0.5"),
            Ok(("10.0.0.5".into(), 50050))
        );
        assert!(cluster_address("http://sched:7000").is_err());
        assert!(cluster_address("sched:7000").is_err());
    }

    #[test]
    fn small_memory_limits_cap_the_default_partitions() {
        let with = |limit: u64, partitions: Option<usize>| EngineConfig {
            memory_limit: Some(MemoryLimit::Bytes(limit)),
            target_partitions: partitions,
            ..Default::default()
        };
        let mib = 1024 * 1024;
        assert_eq!(with(64 * mib, None).effective_target_partitions(), 1);
        assert_eq!(with(256 * mib, None).effective_target_partitions(), 1);
        assert_eq!(
            with(512 * mib, None).effective_target_partitions(),
            2.min(num_cores().max(MIN_DEFAULT_PARTITIONS))
        );
        assert_eq!(
            with(64 * 1024 * mib, None).effective_target_partitions(),
            num_cores().max(MIN_DEFAULT_PARTITIONS)
        );
        // An explicit setting wins.
        assert_eq!(with(64 * mib, Some(8)).effective_target_partitions(), 8);
    }

    #[test]
    fn parses_file_and_env() {
        let mut c = EngineConfig::from_toml(
            "memory_limit = \"2GiB\"\nbatch_size = 4096\n[datafusion]\n\"datafusion.execution.parquet.pushdown_filters\" = \"true\"\n",
            "t",
        )
        .unwrap();
        assert_eq!(c.memory_limit, Some(MemoryLimit::Bytes(2 << 30)));
        let used = c
            .apply_env([("FLOWENGINE_BATCH_SIZE".to_string(), "1024".to_string())])
            .unwrap();
        assert_eq!(used, vec!["FLOWENGINE_BATCH_SIZE"]);
        assert_eq!(c.batch_size, Some(1024));
        c.validate("t".into()).unwrap();
    }

    #[test]
    fn unknown_key_is_named() {
        let err = EngineConfig::from_toml("bach_size = 3\n", "x.toml").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("bach_size"), "{msg}");
        assert!(msg.contains("x.toml"), "{msg}");
    }

    #[test]
    fn bad_values_are_named() {
        let err = EngineConfig::from_toml("memory_limit = \"lots\"\n", "x.toml").unwrap_err();
        assert!(err.to_string().contains("lots"), "{err}");
        let err = EngineConfig::from_toml("memory_limit = \"150%\"\n", "x.toml").unwrap_err();
        assert!(err.to_string().contains("150%"), "{err}");
        let mut c = EngineConfig::default();
        let err = c
            .apply_env([("FLOWENGINE_TARGET_PARTITIONS".into(), "many".into())])
            .unwrap_err();
        assert!(
            err.to_string().contains("FLOWENGINE_TARGET_PARTITIONS"),
            "{err}"
        );
        let c =
            EngineConfig::from_toml("[datafusion]\n\"datafusion.nope\" = \"1\"\n", "x").unwrap();
        let err = c.validate("x".into()).unwrap_err();
        assert!(err.to_string().contains("datafusion.nope"), "{err}");
        let c = EngineConfig::from_toml("batch_size = 0\n", "x").unwrap();
        assert!(
            c.validate("x".into())
                .unwrap_err()
                .to_string()
                .contains("batch_size")
        );
    }

    #[test]
    fn default_partitions_are_at_least_four() {
        let c = EngineConfig::default();
        assert_eq!(c.effective_target_partitions(), num_cores().max(4));
        let c = EngineConfig {
            target_partitions: Some(1),
            ..Default::default()
        };
        assert_eq!(c.effective_target_partitions(), 1);
    }

    #[test]
    fn percent_limit_resolves() {
        assert_eq!(MemoryLimit::Percent(50.0).to_bytes(1000), 500);
        assert_eq!(
            "512MiB".parse::<MemoryLimit>().unwrap(),
            MemoryLimit::Bytes(512 << 20)
        );
    }
}
