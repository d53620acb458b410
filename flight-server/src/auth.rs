//! Authentication of every Flight call and admin request.
//!
//! * The Flight handshake takes HTTP Basic credentials (user + password, checked against the
//!   argon2 hash in the configuration) and answers with a bearer token (`authorization:
//!   Bearer fet_...` response header and the handshake payload). Tokens expire after
//!   `security.token_ttl_secs` and can be revoked (Flight action `RevokeToken`).
//! * Later calls send `authorization: Bearer <token>` or a service account's API key
//!   (`fek_...`) the same way. Clients that can only send Basic credentials (JDBC, Tableau) may
//!   pass a token or API key as the password; the user name is then ignored.
//! * Failed logins are counted per user and client address together; past
//!   `security.max_failed_logins` within `security.lockout_secs`, further attempts of that user
//!   from that address are refused without checking the password (other users behind the same
//!   address, and the same user elsewhere, are not locked out). At most one password check per
//!   core runs at once, and the lockout is checked again when a check gets its turn, so
//!   concurrent guesses cannot run many checks past the limit; a remembered login is refused
//!   while locked out.
//!
//! Only SHA-256 digests of tokens and keys are kept; comparisons are constant-time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use engine::security::credentials::{
    ct_eq, hash_password, random_secret, sha256_hex, verify_password,
};
use engine::security::{
    ADMIN_ROLE, AuditLog, AuditRecord, AuthMode, Principal, SecurityConfig, Tenancy,
};
use tonic::Status;
use tonic::metadata::MetadataMap;

use crate::jwt::{JwtVerifier, looks_like_jwt};

/// Prefix of API keys.
pub(crate) const API_KEY_PREFIX: &str = "fek_";
/// Prefix of bearer tokens.
pub(crate) const TOKEN_PREFIX: &str = "fet_";

/// How long a verified Basic password is remembered, so clients sending Basic on every call do
/// not pay an argon2 verification each time.
const BASIC_CACHE: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    since: Instant,
}

struct Issued {
    principal: Principal,
    expires: Instant,
}

/// Users, API keys, issued tokens and failed-login counters.
pub(crate) struct Authenticator {
    mode: AuthMode,
    /// Users, API keys, roles and tenants: replaced by a configuration reload (SIGHUP).
    directory: std::sync::RwLock<Arc<Directory>>,
    ttl: Duration,
    tokens: Mutex<HashMap<String, Issued>>,
    basic_cache: Mutex<HashMap<String, Issued>>,
    /// (user, address) -> failures in the window and its start.
    failures: Mutex<HashMap<String, Failures>>,
    /// Password checks (argon2, ~50 MB and tens of ms each) running at once.
    checks: tokio::sync::Semaphore,
    max_failed: u32,
    lockout: Duration,
    audit: AuditLog,
    /// Verified against for unknown users, so timing does not reveal which users exist.
    dummy_hash: String,
    jwt: Option<JwtVerifier>,
}

/// Who may log in and as what: the part of `[security]` a reload replaces.
pub(crate) struct Directory {
    /// User name -> (password hash, principal).
    users: HashMap<String, (String, Principal)>,
    /// (SHA-256 of the key, principal).
    api_keys: Vec<(String, Principal)>,
    /// Roles and tenants defined in the configuration (claims naming others are ignored).
    roles: std::collections::HashSet<String>,
    tenants: HashMap<String, String>,
}

impl Directory {
    fn new(config: &SecurityConfig) -> Self {
        let principal = |name: &str,
                         roles: &[String],
                         attributes: &std::collections::BTreeMap<String, String>,
                         tenant: &Option<String>| {
            Principal {
                name: name.to_string(),
                roles: roles.to_vec(),
                attributes: attributes.clone(),
                tenant: tenant.as_deref().and_then(|t| {
                    Some(Tenancy {
                        tenant: t.to_string(),
                        catalog: config.tenant(t)?.catalog().to_string(),
                    })
                }),
            }
        };
        Self {
            users: config
                .users
                .iter()
                .map(|u| {
                    (
                        u.name.clone(),
                        (
                            u.password_hash.clone(),
                            principal(&u.name, &u.roles, &u.attributes, &u.tenant),
                        ),
                    )
                })
                .collect(),
            api_keys: config
                .api_keys
                .iter()
                .map(|k| {
                    (
                        k.key_sha256.to_ascii_lowercase(),
                        principal(&k.name, &k.roles, &k.attributes, &k.tenant),
                    )
                })
                .collect(),
            roles: config.roles.iter().map(|r| r.name.clone()).collect(),
            tenants: config
                .tenants
                .iter()
                .map(|t| (t.name.clone(), t.catalog().to_string()))
                .collect(),
        }
    }

    /// The principal as now configured, for a user or API key of this name.
    fn named(&self, name: &str) -> Option<&Principal> {
        self.users.get(name).map(|(_, p)| p).or_else(|| {
            self.api_keys
                .iter()
                .find(|(_, p)| p.name == name)
                .map(|(_, p)| p)
        })
    }
}

/// What a request carried.
enum Credentials {
    Basic { user: String, password: String },
    Bearer(String),
}

impl Authenticator {
    pub(crate) fn new(config: &SecurityConfig, audit: AuditLog) -> Self {
        Self {
            mode: config.auth,
            directory: std::sync::RwLock::new(Arc::new(Directory::new(config))),
            ttl: Duration::from_secs(config.token_ttl_secs),
            tokens: Mutex::new(HashMap::new()),
            basic_cache: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            checks: tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            ),
            max_failed: config.max_failed_logins.max(1),
            lockout: Duration::from_secs(config.lockout_secs),
            audit,
            jwt: config.jwt.as_ref().and_then(|j| match JwtVerifier::new(j) {
                Ok(v) => Some(v),
                Err(e) => {
                    tracing::error!("security.jwt: {e}; JWT logins are off");
                    None
                }
            }),
            dummy_hash: if config.auth == AuthMode::None {
                String::new()
            } else {
                hash_password(&random_secret("")).unwrap_or_default()
            },
        }
    }

    fn directory(&self) -> Arc<Directory> {
        Arc::clone(&self.directory.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Replace users, API keys, roles and tenants (a configuration reload). Issued tokens and
    /// cached logins of principals that changed or are gone end now: a removed or demoted user
    /// keeps no access through a token handed out before.
    pub(crate) fn reload(&self, config: &SecurityConfig) {
        let directory = Arc::new(Directory::new(config));
        let old = self.directory();
        // Tokens of principals the directory never managed (identity-provider logins) stay.
        let keep = |p: &Principal| match (old.named(&p.name), directory.named(&p.name)) {
            (None, None) => true,
            (_, now) => now == Some(p),
        };
        lock(&self.tokens).retain(|_, t| keep(&t.principal));
        lock(&self.basic_cache).clear();
        *self.directory.write().unwrap_or_else(|p| p.into_inner()) = directory;
    }

    pub(crate) fn enabled(&self) -> bool {
        self.mode != AuthMode::None
    }

    /// The caller of one request.
    pub(crate) async fn authenticate(
        &self,
        metadata: &MetadataMap,
        client: &str,
    ) -> Result<Principal, Status> {
        if !self.enabled() {
            return Ok(Principal::anonymous());
        }
        match credentials(metadata)? {
            None => Err(Status::unauthenticated(
                "authentication required: log in with the Flight handshake (Basic credentials), \
                 or send `authorization: Bearer <token or API key>`",
            )),
            Some(Credentials::Bearer(secret)) if looks_like_jwt(&secret) => {
                self.jwt(&secret, client).await
            }
            Some(Credentials::Bearer(secret)) => self.bearer(&secret),
            Some(Credentials::Basic { user, password }) => {
                if password.starts_with(API_KEY_PREFIX) || password.starts_with(TOKEN_PREFIX) {
                    return self.bearer(&password);
                }
                if looks_like_jwt(&password) {
                    return self.jwt(&password, client).await;
                }
                self.password(&user, &password, client).await
            }
        }
    }

    /// The handshake: verify Basic credentials and issue a token.
    pub(crate) async fn login(
        &self,
        metadata: &MetadataMap,
        client: &str,
    ) -> Result<(Principal, Option<String>), Status> {
        if !self.enabled() {
            return Ok((Principal::anonymous(), None));
        }
        let principal = self.authenticate(metadata, client).await?;
        let token = random_secret(TOKEN_PREFIX);
        let mut tokens = lock(&self.tokens);
        let now = Instant::now();
        tokens.retain(|_, t| t.expires > now);
        tokens.insert(
            sha256_hex(&token),
            Issued {
                principal: principal.clone(),
                expires: now + self.ttl,
            },
        );
        Ok((principal, Some(token)))
    }

    /// The user or service account a client certificate's common name names (mutual TLS).
    pub(crate) fn certificate_user(&self, name: &str) -> Option<Principal> {
        self.directory().named(name).cloned()
    }

    /// Revoke a token: its holder, or an admin, may. True when it existed.
    pub(crate) fn revoke(&self, token: &str, by: &Principal) -> Result<bool, Status> {
        let key = sha256_hex(token);
        let mut tokens = lock(&self.tokens);
        match tokens.get(&key) {
            None => Ok(false),
            Some(t) if by.is_admin() || t.principal.name == by.name => {
                tokens.remove(&key);
                Ok(true)
            }
            Some(_) => Err(Status::permission_denied(
                "only the token's holder or an admin may revoke it",
            )),
        }
    }

    /// Read the JWT keys now, so a missing or malformed key file stops the server at start.
    pub(crate) async fn load_jwt_keys(&self) -> Result<(), String> {
        match &self.jwt {
            Some(v) => v.load().await,
            None => Ok(()),
        }
    }

    /// A caller holding an identity provider's JWT: a configured user of that name as
    /// configured, anyone else with the roles and tenant its claims name (if defined here).
    async fn jwt(&self, token: &str, client: &str) -> Result<Principal, Status> {
        let Some(verifier) = &self.jwt else {
            return Err(Status::unauthenticated(
                "JWT bearer tokens are not accepted: security.jwt is not configured",
            ));
        };
        let claims = match verifier.verify(token).await {
            Ok(c) => c,
            Err(status) => {
                self.audit_login("<jwt>", client, "deny", status.message());
                return Err(status);
            }
        };
        let directory = self.directory();
        if let Some((_, p)) = directory.users.get(&claims.user) {
            return Ok(p.clone());
        }
        let tenant = claims.tenant.as_ref().and_then(|t| {
            Some(Tenancy {
                tenant: t.clone(),
                catalog: directory.tenants.get(t)?.clone(),
            })
        });
        let roles = claims
            .roles
            .into_iter()
            .filter(|r| directory.roles.contains(r) || (r == ADMIN_ROLE && tenant.is_none()))
            .collect();
        Ok(Principal {
            name: claims.user,
            roles,
            attributes: Default::default(),
            tenant,
        })
    }

    fn bearer(&self, secret: &str) -> Result<Principal, Status> {
        if secret.starts_with(API_KEY_PREFIX) {
            let digest = sha256_hex(secret);
            // Check every key, so timing does not tell how many were compared.
            let mut found = None;
            for (hash, principal) in &self.directory().api_keys {
                if ct_eq(hash, &digest) {
                    found = Some(principal.clone());
                }
            }
            return found.ok_or_else(|| Status::unauthenticated("invalid API key"));
        }
        let key = sha256_hex(secret);
        let mut tokens = lock(&self.tokens);
        match tokens.get(&key) {
            Some(t) if t.expires > Instant::now() => Ok(t.principal.clone()),
            Some(_) => {
                tokens.remove(&key);
                Err(Status::unauthenticated("token expired: log in again"))
            }
            None => Err(Status::unauthenticated(
                "invalid or revoked token: log in again",
            )),
        }
    }

    async fn password(
        &self,
        user: &str,
        password: &str,
        client: &str,
    ) -> Result<Principal, Status> {
        let cache_key = sha256_hex(&format!("{user}\u{0}{password}"));
        let key = format!("{user}\u{0}{}", client_ip(client));
        let locked = || {
            self.audit_login(user, client, "deny", "too many failed logins");
            Err(Status::resource_exhausted(format!(
                "too many failed logins for this user from this address; retry in {} s",
                self.lockout.as_secs()
            )))
        };
        // Locked out: refused before anything else, a remembered login included.
        if self.locked_out(&key) {
            return locked();
        }
        if let Some(hit) = lock(&self.basic_cache).get(&cache_key)
            && hit.expires > Instant::now()
        {
            return Ok(hit.principal.clone());
        }
        let Ok(_permit) = self.checks.acquire().await else {
            return Err(Status::unavailable("server is shutting down"));
        };
        // Failures may have arrived while this check waited for its turn.
        if self.locked_out(&key) {
            return locked();
        }
        let entry = self.directory().users.get(user).cloned();
        let password = password.to_string();
        let dummy = self.dummy_hash.clone();
        // argon2 is CPU-heavy by design: keep it off the runtime's worker threads. An unknown
        // user is checked against a dummy hash so timing does not reveal which users exist.
        let verified = tokio::task::spawn_blocking(move || match entry {
            Some((hash, principal)) => verify_password(&password, &hash).then_some(principal),
            None => {
                let _ = verify_password(&password, &dummy);
                None
            }
        })
        .await
        .map_err(|e| Status::internal(format!("password check failed: {e}")))?;
        self.end_attempt(&key, verified.is_some());
        match verified {
            Some(principal) => {
                lock(&self.basic_cache).insert(
                    cache_key,
                    Issued {
                        principal: principal.clone(),
                        expires: Instant::now() + BASIC_CACHE.min(self.ttl),
                    },
                );
                self.audit_login(user, client, "allow", "password");
                Ok(principal)
            }
            None => {
                self.audit_login(user, client, "deny", "invalid user name or password");
                Err(Status::unauthenticated("invalid user name or password"))
            }
        }
    }

    /// Whether `key` has failed too often within the window.
    fn locked_out(&self, key: &str) -> bool {
        let mut failures = lock(&self.failures);
        let now = Instant::now();
        failures.retain(|_, f| now.duration_since(f.since) < self.lockout);
        failures
            .get(key)
            .is_some_and(|f| f.count >= self.max_failed)
    }

    /// An attempt of `key` ended: success clears its failures, failure adds one.
    fn end_attempt(&self, key: &str, ok: bool) {
        let mut failures = lock(&self.failures);
        if ok {
            failures.remove(key);
        } else {
            let entry = failures.entry(key.to_string()).or_insert(Failures {
                count: 0,
                since: Instant::now(),
            });
            entry.count += 1;
        }
    }

    fn audit_login(&self, user: &str, client: &str, decision: &'static str, reason: &str) {
        self.audit.record(AuditRecord {
            event: "login",
            user: user.to_string(),
            client: client.to_string(),
            decision,
            reason: Some(reason.to_string()),
            ..Default::default()
        });
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Entries are single inserts and removals: a poisoned map is still consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn client_ip(client: &str) -> &str {
    client.rsplit_once(':').map(|(ip, _)| ip).unwrap_or(client)
}

fn credentials(metadata: &MetadataMap) -> Result<Option<Credentials>, Status> {
    let Some(value) = metadata.get("authorization") else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| Status::unauthenticated("malformed authorization header"))?
        .trim();
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    if scheme.eq_ignore_ascii_case("bearer") {
        return Ok(Some(Credentials::Bearer(rest.trim().to_string())));
    }
    if scheme.eq_ignore_ascii_case("basic") {
        // Padding is optional: Go's Flight client (ADBC) sends unpadded base64.
        let encoded = rest.trim().trim_end_matches('=');
        let decoded = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(encoded)
            .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(encoded))
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| Status::unauthenticated("malformed Basic credentials"))?;
        let (user, password) = decoded
            .split_once(':')
            .ok_or_else(|| Status::unauthenticated("malformed Basic credentials"))?;
        return Ok(Some(Credentials::Basic {
            user: user.to_string(),
            password: password.to_string(),
        }));
    }
    Err(Status::unauthenticated(
        "unsupported authorization scheme: use Basic or Bearer",
    ))
}

/// Who sent a request, from where.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    pub(crate) principal: Principal,
    pub(crate) client: String,
    /// The client session the call belongs to (a digest of its credential, or its connection
    /// when it sent none): `SET`s apply to this session only.
    pub(crate) session: String,
}

/// The session key of a call: its credential's digest, else its connection.
pub(crate) fn session_of(metadata: &MetadataMap, client: &str) -> String {
    match metadata.get("authorization") {
        Some(v) => format!(
            "cred:{}",
            sha256_hex(&String::from_utf8_lossy(v.as_bytes()))
        ),
        None => format!("conn:{client}"),
    }
}

/// The authenticated caller a handler runs for (set by the service wrapper on every call).
pub(crate) fn caller<T>(request: &tonic::Request<T>) -> Result<Caller, Status> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("request was not authenticated"))
}

/// `ip:port` of the peer, or `unknown`.
pub(crate) fn client_of<T>(request: &tonic::Request<T>) -> String {
    request
        .remote_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|| "unknown".into())
}
