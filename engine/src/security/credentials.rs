//! Credentials: argon2id password hashes (what `flowengine user hash-password` prints and the
//! server verifies), API keys (random, stored only as SHA-256) and bearer tokens. Every
//! comparison of secret material is constant-time.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use rand_core::{OsRng, RngCore};
use subtle::ConstantTimeEq;

/// Hash a password with argon2id and a random salt (PHC string).
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("cannot hash the password: {e}"))
}

/// Check that `hash` is a well-formed PHC string argon2 can verify against.
pub fn check_hash(hash: &str) -> Result<(), String> {
    PasswordHash::new(hash)
        .map(|_| ())
        .map_err(|e| format!("not a valid argon2 PHC string ({e})"))
}

/// Whether `password` matches `hash` (argon2's verification compares in constant time). CPU
/// heavy by design: call it off the async runtime's worker threads.
pub fn verify_password(password: &str, hash: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// A fresh random secret for an API key or bearer token: 32 bytes as 64 hex digits, with a
/// prefix telling what it is (`fek_` for keys, `fet_` for tokens).
pub fn random_secret(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    format!("{prefix}{}", hex(&bytes))
}

/// Hex SHA-256 of a secret: what the configuration stores for API keys, and what the token
/// store keys tokens by (so a memory dump of the map does not yield usable tokens).
pub fn sha256_hex(secret: &str) -> String {
    crate::state::content_hash(secret.as_bytes())
}

/// Constant-time equality of two strings (lengths may leak, contents do not).
pub fn ct_eq(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_reject() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"));
        check_hash(&h).unwrap();
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong", &h));
        assert!(!verify_password("correct horse", "plain"));
        assert!(check_hash("plain").is_err());
    }

    #[test]
    fn secrets_are_random_and_hashed() {
        let a = random_secret("fek_");
        let b = random_secret("fek_");
        assert_ne!(a, b);
        assert_eq!(a.len(), 4 + 64);
        assert_eq!(sha256_hex("test").len(), 64);
        assert!(ct_eq(&sha256_hex(&a), &sha256_hex(&a)));
        assert!(!ct_eq(&a, &b));
    }
}
