//! The `[security]` section of `flowengine.toml`: how `flowengine serve` authenticates callers,
//! which roles they hold, what each role may touch, and where the audit log goes. Plain data,
//! validated once at load; [`super::Policy`] and the Flight server read it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::privilege::Privilege;

/// `[security]` settings.
///
/// ```toml
/// [security]
/// auth = "password"                 # or "none" (loopback only unless allow_insecure_bind)
/// token_ttl_secs = 3600
/// allowed_locations = ["/srv/data/", "s3://lake/"]
/// audit_file = "/var/log/flowengine/audit.jsonl"
///
/// [[security.users]]
/// name = "ana"
/// password_hash = "$argon2id$v=19$..."   # `flowengine user hash-password`
/// roles = ["analyst"]
/// attributes = { region = "eu" }
///
/// [[security.api_keys]]
/// name = "loader"
/// key_sha256 = "9f86d0..."               # `flowengine user new-api-key`
/// roles = ["etl"]
///
/// [[security.tenants]]
/// name = "acme"                          # its users see only catalog `acme`
/// memory_limit = "2GiB"
/// max_concurrent_queries = 4
///
/// [[security.roles]]
/// name = "analyst"
/// grants = [{ privileges = ["SELECT"], on = "datafusion.public.*" }]
/// row_filters = [{ table = "datafusion.public.sales", filter = "region = current_user_attribute('region')" }]
/// masks = [{ table = "datafusion.public.customers", column = "email", with = "'***'" }]
/// ```
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    pub auth: AuthMode,
    /// With `auth = "none"`, allow binding to a non-loopback address anyway.
    pub allow_insecure_bind: bool,
    /// Lifetime of bearer tokens handed out by the Flight handshake.
    pub token_ttl_secs: u64,
    /// Failed logins allowed per user and per client address within `lockout_secs` before
    /// further attempts are refused until the window passes.
    pub max_failed_logins: u32,
    pub lockout_secs: u64,
    /// Path and URL prefixes non-admin users may name in `CREATE EXTERNAL TABLE ... LOCATION`
    /// and `COPY ... TO`. Empty: none.
    pub allowed_locations: Vec<String>,
    /// `host:port` patterns non-admin users' tables may connect to (connection strings,
    /// endpoints, `host` options, redirects and next-page links): `db.internal:5432`,
    /// `*.example.com:443`, `10.0.0.7:*`. Empty: none. Hosts are compared in canonical form
    /// (`2130706433` is `127.0.0.1`); a wildcard never admits a name resolving to an internal
    /// address.
    pub egress: Vec<String>,
    /// Where each `${secret:NAME}` may be used. Secrets not listed here can be referenced by
    /// admins only; a listed one only by its roles (and admins), and only toward its hosts.
    pub secrets: Vec<SecretScopeConfig>,
    /// Reject every write (DML, DDL, `COPY`) from every user, admins included.
    pub read_only: bool,
    /// Append one JSON line per decision here (logins, statements allowed and denied).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit_file: Option<PathBuf>,
    /// Replace string and number literals in audited statement text by `?`.
    pub audit_redact_literals: bool,
    pub users: Vec<UserConfig>,
    pub api_keys: Vec<ApiKeyConfig>,
    pub roles: Vec<RoleConfig>,
    /// Tenants: each has its own catalog and quotas; its users and keys are confined to it.
    pub tenants: Vec<TenantConfig>,
    /// Accept bearer JWTs from an external identity provider.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtConfig>,
}

/// `[security.jwt]`: bearer JWTs signed by an identity provider, checked against its public
/// keys (a JWKS file, or one PEM public key), issuer, audience and expiry.
///
/// The user is the `user_claim` (default `sub`). A configured `[[security.users]]` entry of that
/// name gives its roles, attributes and tenant; otherwise roles come from `roles_claim` (only
/// roles defined here count) and the tenant from `tenant_claim`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    pub issuer: String,
    pub audience: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key_file: Option<PathBuf>,
    /// Accepted signature algorithms. Default: `["RS256"]`. Shared-secret (HS*) algorithms are
    /// refused: anyone who can check such a token can also mint one.
    #[serde(default = "default_jwt_algorithms")]
    pub algorithms: Vec<String>,
    #[serde(default = "default_user_claim")]
    pub user_claim: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles_claim: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_claim: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    #[serde(default = "default_leeway")]
    pub leeway_secs: u64,
}

fn default_jwt_algorithms() -> Vec<String> {
    vec!["RS256".into()]
}

fn default_user_claim() -> String {
    "sub".into()
}

fn default_leeway() -> u64 {
    30
}

/// Asymmetric JWT algorithms accepted in `security.jwt.algorithms`.
pub const JWT_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

impl JwtConfig {
    fn validate(&self) -> Result<(), String> {
        if self.jwks_file.is_some() == self.public_key_file.is_some() {
            return Err("security.jwt: set exactly one of jwks_file and public_key_file".into());
        }
        if self.issuer.is_empty() || self.audience.is_empty() {
            return Err("security.jwt: issuer and audience must be set".into());
        }
        if self.algorithms.is_empty() {
            return Err("security.jwt.algorithms: name at least one algorithm".into());
        }
        for a in &self.algorithms {
            if !JWT_ALGORITHMS.contains(&a.as_str()) {
                return Err(format!(
                    "security.jwt.algorithms: `{a}` is not accepted; use one of {}",
                    JWT_ALGORITHMS.join(", ")
                ));
            }
        }
        Ok(())
    }
}

/// One tenant.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    pub name: String,
    /// The catalog holding the tenant's tables (created empty, with a `public` schema, when
    /// no connector defines it). Default: the tenant's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catalog: Option<String>,
    /// Memory the tenant's running queries may hold together (within the server's pool).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit: Option<bytesize::ByteSize>,
    /// Queries of the tenant executing at once (within the server's own limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_queries: Option<usize>,
}

impl TenantConfig {
    pub fn catalog(&self) -> &str {
        self.catalog.as_deref().unwrap_or(&self.name)
    }
}

impl Default for SecurityConfig {
    fn default() -> Self {
        Self {
            auth: AuthMode::Password,
            allow_insecure_bind: false,
            token_ttl_secs: 3600,
            max_failed_logins: 5,
            lockout_secs: 60,
            allowed_locations: Vec::new(),
            egress: Vec::new(),
            secrets: Vec::new(),
            read_only: false,
            audit_file: None,
            audit_redact_literals: false,
            users: Vec::new(),
            api_keys: Vec::new(),
            roles: Vec::new(),
            tenants: Vec::new(),
            jwt: None,
        }
    }
}

/// How callers prove who they are.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Users (argon2 password hashes) and API keys from this file; bearer tokens after login.
    #[default]
    Password,
    /// No authentication: every caller is an anonymous admin. Must be chosen explicitly.
    None,
}

impl std::str::FromStr for AuthMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "password" => Ok(Self::Password),
            "none" => Ok(Self::None),
            other => Err(format!(
                "unknown auth mode `{other}`; expected password or none"
            )),
        }
    }
}

/// One user.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    /// Argon2 PHC string (`$argon2id$...`), from `flowengine user hash-password`.
    pub password_hash: String,
    #[serde(default)]
    pub roles: Vec<String>,
    /// Values row filters can read with `current_user_attribute('key')`.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// The tenant the user belongs to: they see and touch only its catalog.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

/// A service account's API key: only its SHA-256 is stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// The account name the key authenticates as.
    pub name: String,
    /// Hex SHA-256 of the key, from `flowengine user new-api-key`.
    pub key_sha256: String,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

/// A role: grants, row filters and column masks.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RoleConfig {
    pub name: String,
    #[serde(default)]
    pub grants: Vec<GrantConfig>,
    #[serde(default)]
    pub row_filters: Vec<RowFilterConfig>,
    #[serde(default)]
    pub masks: Vec<MaskConfig>,
}

/// `privileges` on the tables `on` matches (`catalog.schema.table`, each part a name or `*`;
/// a shorter pattern is completed with the default catalog and schema).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GrantConfig {
    pub privileges: Vec<Privilege>,
    pub on: String,
}

/// Rows of `table` this role sees: a SQL predicate over its columns.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RowFilterConfig {
    pub table: String,
    pub filter: String,
}

/// `column` of `table` is replaced by the SQL expression `with` for this role.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MaskConfig {
    pub table: String,
    pub column: String,
    #[serde(rename = "with")]
    pub mask: String,
}

/// `[[security.secrets]]`: who may reference a secret and which hosts it may be sent to.
///
/// ```toml
/// [[security.secrets]]
/// name = "HOOK_TOKEN"
/// allowed_roles = ["etl"]
/// allowed_hosts = ["hooks.example.com:443"]
/// ```
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SecretScopeConfig {
    pub name: String,
    /// Roles whose members may reference the secret (admins always may).
    #[serde(default)]
    pub allowed_roles: Vec<String>,
    /// `host:port` patterns (as in `security.egress`) of every host a table or `COPY` using
    /// the secret may name; for everyone, admins included. Empty: the secret may not be sent
    /// anywhere a statement names a host.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
}

/// The role that may do everything (grants are not checked).
pub const ADMIN_ROLE: &str = "admin";

impl SecurityConfig {
    pub fn is_default(&self) -> bool {
        self == &Self::default()
    }

    /// The tenant named `name`.
    pub fn tenant(&self, name: &str) -> Option<&TenantConfig> {
        self.tenants.iter().find(|t| t.name == name)
    }

    fn validate_tenants(&self) -> Result<(), String> {
        let mut names = std::collections::BTreeSet::new();
        let mut catalogs = std::collections::BTreeSet::new();
        for t in &self.tenants {
            if t.name.is_empty() || !names.insert(t.name.as_str()) {
                return Err(format!(
                    "security.tenants: tenant `{}` is empty or defined twice",
                    t.name
                ));
            }
            if !catalogs.insert(t.catalog()) {
                return Err(format!(
                    "security.tenants `{}`: catalog `{}` already belongs to another tenant",
                    t.name,
                    t.catalog()
                ));
            }
            if t.max_concurrent_queries == Some(0) {
                return Err(format!(
                    "security.tenants `{}`: max_concurrent_queries must be at least 1",
                    t.name
                ));
            }
        }
        let members = self
            .users
            .iter()
            .map(|u| (&u.name, &u.tenant, &u.roles))
            .chain(self.api_keys.iter().map(|k| (&k.name, &k.tenant, &k.roles)));
        for (name, tenant, roles) in members {
            let Some(tenant) = tenant else { continue };
            if self.tenant(tenant).is_none() {
                return Err(format!(
                    "security: `{name}` belongs to tenant `{tenant}`, which no [[security.tenants]] entry defines"
                ));
            }
            if roles.iter().any(|r| r == ADMIN_ROLE) {
                return Err(format!(
                    "security: `{name}` of tenant `{tenant}` holds the admin role, which is server-wide; \
                     grant ALL on `<catalog>.*.*` to a tenant role instead"
                ));
            }
        }
        Ok(())
    }

    /// Checks serde cannot do; messages name the offending entry.
    pub fn validate(&self) -> Result<(), String> {
        if self.token_ttl_secs == 0 {
            return Err("security.token_ttl_secs must be at least 1".into());
        }
        let mut names = std::collections::BTreeSet::new();
        for u in &self.users {
            if u.name.is_empty() || u.name.contains(':') {
                return Err(format!(
                    "security.users: user name `{}` must be non-empty and hold no `:`",
                    u.name
                ));
            }
            if !names.insert(u.name.as_str()) {
                return Err(format!(
                    "security.users: user `{}` is defined twice",
                    u.name
                ));
            }
            if !u.password_hash.starts_with("$argon2") {
                return Err(format!(
                    "security.users `{}`: password_hash is not an argon2 hash; plain-text passwords are refused. \
                     Run `flowengine user hash-password` and paste its output",
                    u.name
                ));
            }
            super::credentials::check_hash(&u.password_hash)
                .map_err(|e| format!("security.users `{}`: password_hash: {e}", u.name))?;
        }
        for k in &self.api_keys {
            if !names.insert(k.name.as_str()) {
                return Err(format!(
                    "security.api_keys: account `{}` is also defined elsewhere",
                    k.name
                ));
            }
            let hex = k.key_sha256.as_bytes();
            if hex.len() != 64 || !hex.iter().all(u8::is_ascii_hexdigit) {
                return Err(format!(
                    "security.api_keys `{}`: key_sha256 must be 64 hex digits (the SHA-256 of the key, \
                     from `flowengine user new-api-key`); never put the key itself here",
                    k.name
                ));
            }
        }
        let roles: std::collections::BTreeSet<&str> =
            self.roles.iter().map(|r| r.name.as_str()).collect();
        for held in self
            .users
            .iter()
            .map(|u| (&u.name, &u.roles))
            .chain(self.api_keys.iter().map(|k| (&k.name, &k.roles)))
        {
            for r in held.1 {
                if r != ADMIN_ROLE && !roles.contains(r.as_str()) {
                    return Err(format!(
                        "security: `{}` holds role `{r}`, which no [[security.roles]] entry defines",
                        held.0
                    ));
                }
            }
        }
        for r in &self.roles {
            for g in &r.grants {
                super::pattern::TablePattern::parse(&g.on).map_err(|e| {
                    format!("security.roles `{}`: grant on `{}`: {e}", r.name, g.on)
                })?;
            }
        }
        self.validate_tenants()?;
        if let Some(jwt) = &self.jwt {
            jwt.validate()?;
        }
        for e in &self.egress {
            super::gate::HostPattern::parse(e)?;
        }
        for scope in &self.secrets {
            if scope.name.is_empty() {
                return Err("security.secrets: a secret scope needs a name".into());
            }
            for h in &scope.allowed_hosts {
                super::gate::HostPattern::parse(h)
                    .map_err(|e| format!("security.secrets `{}`: {e}", scope.name))?;
            }
        }
        for p in &self.allowed_locations {
            if p.is_empty() {
                return Err(
                    "security.allowed_locations: an empty prefix would allow everything".into(),
                );
            }
        }
        Ok(())
    }
}
