//! Bearer JWTs from an external identity provider (`[security.jwt]`): signature checked against
//! the provider's public keys (a JWKS file, reloaded when a token names a key id it does not
//! hold, or one PEM key), then issuer, audience, expiry and not-before. Tokens are never logged.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use engine::security::JwtConfig;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use tonic::Status;

/// A JWKS file is re-read for an unknown key id at most this often.
const RELOAD_EVERY: Duration = Duration::from_secs(10);

/// What a verified token says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JwtClaims {
    pub(crate) user: String,
    pub(crate) roles: Vec<String>,
    pub(crate) tenant: Option<String>,
}

enum Keys {
    Jwks(JwkSet),
    Pem(Vec<u8>),
}

pub(crate) struct JwtVerifier {
    config: JwtConfig,
    algorithms: Vec<Algorithm>,
    keys: tokio::sync::RwLock<Option<Keys>>,
    loaded: Mutex<Option<Instant>>,
}

/// Whether a bearer credential has the shape of a JWT (three base64url parts).
pub(crate) fn looks_like_jwt(secret: &str) -> bool {
    secret.starts_with("eyJ") && secret.split('.').count() == 3
}

impl JwtVerifier {
    pub(crate) fn new(config: &JwtConfig) -> Result<Self, String> {
        let algorithms = config
            .algorithms
            .iter()
            .map(|a| Algorithm::from_str(a).map_err(|_| format!("unknown JWT algorithm `{a}`")))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            config: config.clone(),
            algorithms,
            keys: tokio::sync::RwLock::new(None),
            loaded: Mutex::new(None),
        })
    }

    fn key_file(&self) -> Option<&PathBuf> {
        self.config
            .jwks_file
            .as_ref()
            .or(self.config.public_key_file.as_ref())
    }

    /// Read the key file now; errors name the file.
    pub(crate) async fn load(&self) -> Result<(), String> {
        let path = self
            .key_file()
            .ok_or("security.jwt: set jwks_file or public_key_file")?;
        let bytes = tokio::fs::read(path)
            .await
            .map_err(|e| format!("security.jwt: cannot read {}: {e}", path.display()))?;
        let keys = if self.config.jwks_file.is_some() {
            let set: JwkSet = serde_json::from_slice(&bytes).map_err(|e| {
                format!(
                    "security.jwt: {} is not a JWKS document: {e}",
                    path.display()
                )
            })?;
            Keys::Jwks(set)
        } else {
            Keys::Pem(bytes)
        };
        *self.keys.write().await = Some(keys);
        *self.loaded.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        Ok(())
    }

    fn may_reload(&self) -> bool {
        self.loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none_or(|at| at.elapsed() >= RELOAD_EVERY)
    }

    async fn decoding_key(&self, kid: Option<&str>, alg: Algorithm) -> Result<DecodingKey, Status> {
        for attempt in 0..2 {
            if attempt == 1 || self.keys.read().await.is_none() {
                if attempt == 1 && !self.may_reload() {
                    break;
                }
                self.load().await.map_err(|e| {
                    tracing::error!("{e}");
                    Status::unavailable("JWT keys are unavailable")
                })?;
            }
            let guard = self.keys.read().await;
            match guard.as_ref() {
                Some(Keys::Pem(pem)) => return pem_key(pem, alg),
                Some(Keys::Jwks(set)) => {
                    let jwk = match kid {
                        Some(kid) => set.find(kid),
                        None if set.keys.len() == 1 => set.keys.first(),
                        None => None,
                    };
                    if let Some(jwk) = jwk {
                        return DecodingKey::from_jwk(jwk).map_err(|e| {
                            Status::unauthenticated(format!("JWT key unusable: {e}"))
                        });
                    }
                }
                None => {}
            }
        }
        Err(Status::unauthenticated(match kid {
            Some(kid) => format!("JWT signed with unknown key id `{kid}`"),
            None => "JWT names no key id (kid) and the JWKS holds several keys".into(),
        }))
    }

    /// Verify `token` and read its holder.
    pub(crate) async fn verify(&self, token: &str) -> Result<JwtClaims, Status> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| Status::unauthenticated("malformed JWT"))?;
        if !self.algorithms.contains(&header.alg) {
            return Err(Status::unauthenticated(format!(
                "JWT algorithm {:?} is not accepted (security.jwt.algorithms)",
                header.alg
            )));
        }
        let key = self.decoding_key(header.kid.as_deref(), header.alg).await?;
        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.leeway = self.config.leeway_secs;
        validation.validate_nbf = true;
        let data = jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, &key, &validation)
            .map_err(|e| Status::unauthenticated(explain(e.kind())))?;
        let claims = data.claims;
        let user = claims
            .get(&self.config.user_claim)
            .and_then(Value::as_str)
            .filter(|u| !u.is_empty())
            .ok_or_else(|| {
                Status::unauthenticated(format!(
                    "JWT has no `{}` claim naming the user",
                    self.config.user_claim
                ))
            })?
            .to_string();
        let roles = self
            .config
            .roles_claim
            .as_ref()
            .and_then(|c| claims.get(c))
            .map(strings)
            .unwrap_or_default();
        let tenant = self
            .config
            .tenant_claim
            .as_ref()
            .and_then(|c| claims.get(c))
            .and_then(Value::as_str)
            .map(str::to_string);
        Ok(JwtClaims {
            user,
            roles,
            tenant,
        })
    }
}

/// A claim holding names: an array of strings, or one space-separated string (OAuth scopes).
fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::Array(items) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        Value::String(s) => s.split_whitespace().map(str::to_string).collect(),
        _ => Vec::new(),
    }
}

fn pem_key(pem: &[u8], alg: Algorithm) -> Result<DecodingKey, Status> {
    let key = match alg {
        Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(pem),
        Algorithm::EdDSA => DecodingKey::from_ed_pem(pem),
        _ => DecodingKey::from_rsa_pem(pem),
    };
    key.map_err(|e| Status::unauthenticated(format!("JWT public key unusable for {alg:?}: {e}")))
}

fn explain(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::ExpiredSignature => "JWT expired".into(),
        ErrorKind::ImmatureSignature => "JWT is not valid yet (nbf)".into(),
        ErrorKind::InvalidSignature => "JWT signature does not verify".into(),
        ErrorKind::InvalidAudience => {
            "JWT audience is not this server's (security.jwt.audience)".into()
        }
        ErrorKind::InvalidIssuer => "JWT issuer is not trusted (security.jwt.issuer)".into(),
        ErrorKind::InvalidAlgorithm => "JWT algorithm does not match its key".into(),
        ErrorKind::MissingRequiredClaim(c) => format!("JWT lacks the `{c}` claim"),
        _ => "invalid JWT".into(),
    }
}
