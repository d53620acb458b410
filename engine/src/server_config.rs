//! The `[server]` section of `flowengine.toml`: what `flowengine serve` listens on and the limits
//! it enforces. Plain data; the Flight SQL service in `flight-server/` reads it.

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

/// `[server]` settings.
///
/// ```toml
/// [server]
/// bind = "127.0.0.1:50051"         # Flight SQL
/// admin_bind = "127.0.0.1:9090"    # /health, /ready, /metrics; "off" disables it
/// max_concurrent_queries = 8
/// max_queued_queries = 64          # beyond this, RESOURCE_EXHAUSTED
/// query_timeout_secs = 3600        # 0 = no limit
/// ticket_ttl_secs = 300            # a ticket not fetched by then expires
/// shutdown_grace_secs = 30         # in-flight queries get this long on SIGTERM
/// max_message_size = "256MiB"      # largest gRPC message accepted or sent
/// flight_data_size = "2MiB"        # outgoing batches are split to about this size
/// set_allowlist = ["datafusion.execution.time_zone"]
/// ```
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub bind: String,
    pub admin_bind: String,
    pub max_concurrent_queries: usize,
    pub max_queued_queries: usize,
    pub query_timeout_secs: u64,
    pub ticket_ttl_secs: u64,
    pub shutdown_grace_secs: u64,
    pub max_message_size: ByteSize,
    pub flight_data_size: ByteSize,
    /// `SET` keys a client may change; an entry ending in `*` allows every key it prefixes
    /// (`flowengine.optimizer.*`). Everything else (memory limits, spill settings, parallelism)
    /// is refused, so a client cannot raise its own limits.
    pub set_allowlist: Vec<String>,
    /// TLS for the Flight listener and the admin endpoint (`[server.tls]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
}

/// `[server.tls]`: PEM files, reloaded on SIGHUP or when they change.
///
/// ```toml
/// [server.tls]
/// cert_file = "/etc/flowengine/server.pem"   # chain, leaf first
/// key_file = "/etc/flowengine/server.key"
/// client_ca_file = "/etc/flowengine/clients-ca.pem"   # optional: require client certificates
/// ```
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert_file: std::path::PathBuf,
    pub key_file: std::path::PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca_file: Option<std::path::PathBuf>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:50051".into(),
            admin_bind: "127.0.0.1:9090".into(),
            max_concurrent_queries: 8,
            max_queued_queries: 64,
            query_timeout_secs: 3600,
            ticket_ttl_secs: 300,
            shutdown_grace_secs: 30,
            max_message_size: ByteSize::mib(256),
            flight_data_size: ByteSize::mib(2),
            set_allowlist: vec![
                "datafusion.execution.time_zone".into(),
                "datafusion.sql_parser.enable_ident_normalization".into(),
            ],
            tls: None,
        }
    }
}

impl ServerConfig {
    pub fn is_default(&self) -> bool {
        self == &Self::default()
    }

    /// Checks serde cannot do.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_concurrent_queries == 0 {
            return Err("server.max_concurrent_queries must be at least 1".into());
        }
        if self.ticket_ttl_secs == 0 {
            return Err("server.ticket_ttl_secs must be at least 1".into());
        }
        if self.max_message_size.as_u64() < 4 * 1024 * 1024 {
            return Err("server.max_message_size must be at least 4MiB".into());
        }
        if self.flight_data_size.as_u64() == 0
            || self.flight_data_size.as_u64() > self.max_message_size.as_u64() / 2
        {
            return Err(
                "server.flight_data_size must be above zero and at most half of max_message_size"
                    .into(),
            );
        }
        Ok(())
    }
}
