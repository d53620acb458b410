//! Where non-admin users may point `CREATE EXTERNAL TABLE ... LOCATION` and `COPY ... TO`:
//! configured path and URL prefixes, compared after normalisation (`..` removed, symlinks of
//! existing local directories resolved), and never over the server's own files (configuration,
//! secrets, state store, audit log, keys), whatever the prefixes say.

use std::path::{Component, Path, PathBuf};

/// Allowed prefixes and protected files, ready to check locations against.
#[derive(Debug, Clone, Default)]
pub struct Locations {
    allowed: Vec<String>,
    protected: Vec<PathBuf>,
}

impl Locations {
    pub fn new(allowed: Vec<String>, protected: Vec<PathBuf>) -> Self {
        Self { allowed, protected }
    }

    /// `Ok(())` when `location` is inside an allowed prefix and covers no protected file;
    /// otherwise why not.
    pub async fn check(&self, location: &str) -> Result<(), String> {
        match url_scheme(location) {
            Some(scheme) if scheme != "file" => self.check_url(location),
            _ => self.check_path(location).await,
        }
    }

    fn check_url(&self, location: &str) -> Result<(), String> {
        let lower = location.to_ascii_lowercase();
        if lower.contains("..") || lower.contains("%2e") || lower.contains('\\') {
            return Err(format!(
                "location `{location}` holds `..` or encoded dots; name the object directly"
            ));
        }
        let ok = self
            .allowed
            .iter()
            .filter(|p| url_scheme(p).is_some_and(|s| s != "file"))
            .any(|p| prefix_of(&p.to_ascii_lowercase(), &lower, '/'));
        if ok {
            Ok(())
        } else {
            Err(self.outside(location))
        }
    }

    async fn check_path(&self, location: &str) -> Result<(), String> {
        let raw = location.strip_prefix("file://").unwrap_or(location);
        let path = resolve(Path::new(raw)).await;
        for p in &self.protected {
            let p = resolve(p).await;
            if path.starts_with(&p) || p.starts_with(&path) {
                return Err(format!(
                    "location `{location}` reaches the server's own files (configuration, secrets, \
                     state or keys); they are never readable or writable through SQL"
                ));
            }
        }
        for prefix in &self.allowed {
            if url_scheme(prefix).is_some_and(|s| s != "file") {
                continue;
            }
            let raw = prefix.strip_prefix("file://").unwrap_or(prefix);
            if path.starts_with(resolve(Path::new(raw)).await) {
                return Ok(());
            }
        }
        Err(self.outside(location))
    }

    fn outside(&self, location: &str) -> String {
        if self.allowed.is_empty() {
            format!(
                "location `{location}` is not allowed: no locations are open to non-admin users \
                 (security.allowed_locations is empty)"
            )
        } else {
            format!(
                "location `{location}` is outside the allowed locations ({})",
                self.allowed.join(", ")
            )
        }
    }
}

/// `scheme` of `scheme://...`, lower-cased.
fn url_scheme(s: &str) -> Option<String> {
    let (scheme, _) = s.split_once("://")?;
    (!scheme.is_empty()
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
    .then(|| scheme.to_ascii_lowercase())
}

/// Whether `prefix` is a prefix of `s` ending at a `sep` boundary.
fn prefix_of(prefix: &str, s: &str, sep: char) -> bool {
    match s.strip_prefix(prefix) {
        Some(rest) => prefix.ends_with(sep) || rest.is_empty() || rest.starts_with(sep),
        None => false,
    }
}

/// An absolute, `..`-free path with the symlinks of its longest existing ancestor resolved.
async fn resolve(path: &Path) -> PathBuf {
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .unwrap_or_else(|_| PathBuf::from("/"))
            .join(path)
    };
    let mut clean = PathBuf::new();
    for c in absolute.components() {
        match c {
            Component::ParentDir => {
                clean.pop();
            }
            Component::CurDir => {}
            other => clean.push(other),
        }
    }
    // Resolve symlinks of the part that exists; keep the rest (a file still to be written, a
    // glob) as written.
    let mut existing = clean.clone();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = tokio::fs::canonicalize(&existing).await {
            let mut out = real;
            for part in rest.iter().rev() {
                out.push(part);
            }
            return out;
        }
        match (
            existing.file_name().map(|n| n.to_os_string()),
            existing.parent(),
        ) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                existing = parent.to_path_buf();
            }
            _ => return clean,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn prefixes_normalise_and_protect() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let config = data.join("flowengine.toml");
        std::fs::write(&config, "").unwrap();
        let l = Locations::new(
            vec![format!("{}/", data.display()), "s3://lake/open/".into()],
            vec![config.clone()],
        );
        let d = data.display();
        assert!(l.check(&format!("{d}/x.csv")).await.is_ok());
        assert!(l.check(&format!("{d}/sub/*.csv")).await.is_ok());
        assert!(l.check(&format!("{d}/../x.csv")).await.is_err());
        assert!(l.check("/etc/passwd").await.is_err());
        assert!(
            l.check(&format!("file://{d}/../../etc/passwd"))
                .await
                .is_err()
        );
        // The directory holding the config, and the config itself, are off limits.
        assert!(l.check(&format!("{d}/")).await.is_err());
        assert!(l.check(&config.display().to_string()).await.is_err());
        assert!(l.check("s3://lake/open/a.parquet").await.is_ok());
        assert!(l.check("s3://lake/openx/a.parquet").await.is_err());
        assert!(l.check("s3://lake/open/../secret/a").await.is_err());
        assert!(l.check("S3://LAKE/other/a").await.is_err());
        // A symlink inside the allowed directory pointing out is followed.
        std::os::unix::fs::symlink("/etc", data.join("etc")).unwrap();
        assert!(l.check(&format!("{d}/etc/passwd")).await.is_err());
    }
}
