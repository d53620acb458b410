//! Secret references: `${secret:NAME}` in connector options and configuration values.
//!
//! Pipeline variable substitution leaves `${secret:NAME}` untouched, so a secret never enters
//! the statement text (and so never reaches logs, errors, the run journal or `EXPLAIN`). A
//! connector resolves the reference only when it opens a connection, through the session's
//! [`SecretStore`] (a DataFusion session config extension, like the bad-record ledger).
//!
//! Values come from, in order: the environment variable `FLOWENGINE_SECRET_<NAME>`, then the
//! `secrets_file` of the configuration: a TOML table of `NAME = "value"` that must not be
//! readable by other users, or a directory holding one file per secret (its name the secret's
//! name, its content the value), the way Docker and Kubernetes mount secrets. Files in such a
//! directory may be readable by their group (Kubernetes' `fsGroup`) but not by everyone.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Prefix of the environment variables holding secrets.
pub const SECRET_ENV_PREFIX: &str = "FLOWENGINE_SECRET_";

/// A reference could not be resolved, or the secrets file is unusable.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error(
        "secret `{name}` is not defined: set the environment variable {SECRET_ENV_PREFIX}{name} or add it to the secrets file"
    )]
    Undefined { name: String },
    #[error("invalid secret reference in `{reference}`: {message}")]
    Syntax { reference: String, message: String },
    #[error("cannot read secrets file {path}: {message}")]
    File { path: PathBuf, message: String },
}

/// A credential as connectors hold it: the value is read only through [`Secret::expose`], at
/// the moment it is handed to a client library; `Debug` and `Display` print `***`, so a struct
/// holding one may derive `Debug` and still never show it in logs, errors or `EXPLAIN`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself: only for handing it to the client library that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Where secret values are looked up. Its `Debug` output never shows a value.
#[derive(Clone, Default)]
pub struct SecretStore {
    file: BTreeMap<String, String>,
    env: bool,
}

impl fmt::Debug for SecretStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretStore")
            .field("file_names", &self.file.keys().collect::<Vec<_>>())
            .field("env", &self.env)
            .finish()
    }
}

impl SecretStore {
    /// Look secrets up in the environment only.
    pub fn from_env() -> Self {
        Self {
            file: BTreeMap::new(),
            env: true,
        }
    }

    /// Environment first, then the TOML file at `path` (if given).
    pub fn load(path: Option<&Path>) -> Result<Self, SecretError> {
        let mut store = Self::from_env();
        if let Some(path) = path {
            store.file = read_file(path)?;
        }
        Ok(store)
    }

    /// A store holding exactly these values (tests, embedding).
    pub fn from_values(values: impl IntoIterator<Item = (String, String)>) -> Self {
        Self {
            file: values.into_iter().collect(),
            env: false,
        }
    }

    /// The value of secret `name`.
    pub fn get(&self, name: &str) -> Option<String> {
        if self.env
            && let Ok(v) = std::env::var(format!("{SECRET_ENV_PREFIX}{name}"))
        {
            return Some(v);
        }
        self.file.get(name).cloned()
    }

    /// Replace every `${secret:NAME}` in `value` with the secret's value.
    pub fn expand(&self, value: &str) -> Result<String, SecretError> {
        let mut out = String::with_capacity(value.len());
        let mut rest = value;
        while let Some(start) = rest.find("${secret:") {
            out.push_str(&rest[..start]);
            let after = &rest[start + "${secret:".len()..];
            let Some(end) = after.find('}') else {
                return Err(SecretError::Syntax {
                    // the rest of the value may hold a literal secret: print only the reference
                    reference: format!("${{secret:{}", after.chars().take(40).collect::<String>()),
                    message: "missing `}`".into(),
                });
            };
            let name = after[..end].trim();
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
            {
                return Err(SecretError::Syntax {
                    reference: format!("${{secret:{name}}}"),
                    message: "a secret name is letters, digits, `_`, `-` and `.`".into(),
                });
            }
            let secret = self.get(name).ok_or_else(|| SecretError::Undefined {
                name: name.to_string(),
            })?;
            out.push_str(&secret);
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

/// A connection URL with its password (if any) replaced by `***`: `postgres://u:***@h/db`; in
/// a key-value connection string (`host=h password=pw`), the password's value.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return redact_key_values(url);
    };
    let authority_start = scheme_end + 3;
    let authority_end = url[authority_start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| authority_start + i);
    let authority = &url[authority_start..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_string();
    };
    let userinfo = &authority[..at];
    let Some(colon) = userinfo.find(':') else {
        return url.to_string();
    };
    format!(
        "{}{}:***{}",
        &url[..authority_start],
        &userinfo[..colon],
        &url[authority_start + at..]
    )
}

/// `password=...` values of a libpq-style `key=value` string replaced by `***`.
fn redact_key_values(s: &str) -> String {
    s.split(' ')
        .map(|part| match part.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
            _ => part.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn read_file(path: &Path) -> Result<BTreeMap<String, String>, SecretError> {
    let err = |message: String| SecretError::File {
        path: path.to_path_buf(),
        message,
    };
    if path.is_dir() {
        return read_dir(path);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(err(format!(
                "it is readable by other users (mode {:o}); run `chmod 600 {}`",
                meta.permissions().mode() & 0o777,
                path.display()
            )));
        }
    }
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    // Parse errors from `toml` quote the offending line, which may hold a secret: report only
    // where it is.
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let line = e
            .span()
            .map(|s| text[..s.start].matches('\n').count() + 1)
            .unwrap_or(0);
        err(format!("not valid TOML (line {line})"))
    })?;
    table
        .into_iter()
        .map(|(k, v)| match v {
            toml::Value::String(s) => Ok((k, s)),
            _ => Err(err(format!("`{k}` must be a string"))),
        })
        .collect()
}

/// A directory of secrets, one file each (Docker's `/run/secrets`, a Kubernetes secret volume).
/// Hidden entries are skipped: Kubernetes keeps its `..data` bookkeeping there, and each secret
/// is a symbolic link into it, which is followed.
fn read_dir(dir: &Path) -> Result<BTreeMap<String, String>, SecretError> {
    let err = |path: &Path, message: String| SecretError::File {
        path: path.to_path_buf(),
        message,
    };
    let mut secrets = BTreeMap::new();
    let entries = std::fs::read_dir(dir).map_err(|e| err(dir, e.to_string()))?;
    for entry in entries {
        let entry = entry.map_err(|e| err(dir, e.to_string()))?;
        let path = entry.path();
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if name.starts_with('.') || !path.is_file() {
            continue;
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path)
                .map_err(|e| err(&path, e.to_string()))?
                .permissions()
                .mode();
            if mode & 0o007 != 0 {
                return Err(err(
                    &path,
                    format!(
                        "it is readable by every user (mode {:o}); run `chmod o-rwx {}` \
                         (Kubernetes: defaultMode 0440 with an fsGroup)",
                        mode & 0o777,
                        path.display()
                    ),
                ));
            }
        }
        let value = std::fs::read_to_string(&path).map_err(|e| err(&path, e.to_string()))?;
        // Files written by `echo` or editors end with a newline that is not part of the value.
        let value = value.strip_suffix('\n').unwrap_or(&value);
        let value = value.strip_suffix('\r').unwrap_or(value);
        secrets.insert(name, value.to_string());
    }
    Ok(secrets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_references_and_names_missing_ones() {
        let store = SecretStore::from_values([("PG_PASS".to_string(), "s3cr3t".to_string())]);
        assert_eq!(
            store.expand("postgres://u:${secret:PG_PASS}@h/db").unwrap(),
            "postgres://u:s3cr3t@h/db"
        );
        assert_eq!(store.expand("plain").unwrap(), "plain");
        let err = store.expand("${secret:NOPE}").unwrap_err().to_string();
        assert!(
            err.contains("NOPE") && err.contains("FLOWENGINE_SECRET_NOPE"),
            "{err}"
        );
        assert!(store.expand("${secret:PG_PASS").is_err());
        assert!(!format!("{store:?}").contains("s3cr3t"));
    }

    #[test]
    fn secrets_never_print_their_value() {
        let s = Secret::new("hunter2");
        assert_eq!(s.expose(), "hunter2");
        assert_eq!(format!("{s} {s:?}"), "*** Secret(***)");
        #[derive(Debug)]
        #[allow(dead_code)]
        struct Endpoint {
            password: Option<Secret>,
        }
        let shown = format!("{:?}", Endpoint { password: Some(s) });
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn redacts_url_passwords() {
        assert_eq!(
            redact_url("postgres://u:pw@h:5432/db?x=1"),
            "postgres://u:***@h:5432/db?x=1"
        );
        assert_eq!(redact_url("mysql://root@h/db"), "mysql://root@h/db");
        assert_eq!(redact_url("host=h user=u"), "host=h user=u");
        assert_eq!(
            redact_url("host=h password=pw user=u"),
            "host=h password=*** user=u"
        );
    }

    #[test]
    fn file_must_be_private_and_errors_hide_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.toml");
        std::fs::write(&path, "A = \"x\"\nB = not-quoted-secret\n").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            assert!(
                SecretStore::load(Some(&path))
                    .unwrap_err()
                    .to_string()
                    .contains("chmod 600")
            );
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let err = SecretStore::load(Some(&path)).unwrap_err().to_string();
        assert!(
            err.contains("line 2") && !err.contains("not-quoted-secret"),
            "{err}"
        );
        std::fs::write(&path, "A = \"x\"\n").unwrap();
        assert_eq!(
            SecretStore::load(Some(&path)).unwrap().get("A").as_deref(),
            Some("x")
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_directory_holds_one_secret_per_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("..data");
        std::fs::create_dir(&data).unwrap();
        let file = data.join("PG_PASSWORD");
        std::fs::write(&file, "pw with spaces\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o440)).unwrap();
        std::os::unix::fs::symlink(&file, dir.path().join("PG_PASSWORD")).unwrap();
        let store = SecretStore::load(Some(dir.path())).unwrap();
        assert_eq!(store.get("PG_PASSWORD").as_deref(), Some("pw with spaces"));
        assert_eq!(store.get("..data"), None);

        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o444)).unwrap();
        let err = SecretStore::load(Some(dir.path())).unwrap_err().to_string();
        assert!(err.contains("readable by every user"), "{err}");
        assert!(!err.contains("pw with spaces"), "{err}");
    }
}
