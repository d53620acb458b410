//! The boundary gate: every file path, URL and host a statement names (locations, `COPY`
//! targets, path-valued options, connection strings, endpoints, redirect and pagination hops)
//! is resolved once to a canonical form and checked here, never by string prefix on what the
//! user typed.
//!
//! * A location is parsed the way DataFusion's `ListingTableUrl` parses it (so `%2e%2e`,
//!   `file:` without slashes and relative paths mean here what they mean to the reader), local
//!   paths are percent-decoded, `..` resolved and the symlinks of their existing part followed.
//!   Non-admins may name only what lies inside `security.allowed_locations`, and nobody may
//!   name the server's own files (configuration, secrets, state, audit log, keys).
//! * A host is parsed as a URL host (decimal and hex IPv4 forms, IPv6, case and trailing dots
//!   normalised) and checked against `security.egress` (`host:port` patterns) for non-admins.
//!   A host matched only by a wildcard pattern that resolves to a loopback, link-local,
//!   private or unspecified address is refused: a DNS name cannot smuggle a request inside.
//! * Which options name paths, URLs or hosts: connectors declare their parameters' kinds
//!   ([`crate::ParamKind`]); an option no connector declares is judged by its name
//!   ([`option_kind`]), so a connector cannot add a path option the gate does not see.
//!
//! Hosts live in [`hosts`], option kinds and secret references in [`options`].

mod hosts;
mod options;

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use url::{Host, Url};

pub use hosts::{HostPattern, canonical_host, endpoint_of, is_network_url};
pub use options::{OptionKind, option_kind, secret_references};

use hosts::{NETWORK_SCHEMES, internal};

/// A location resolved to what will really be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A local path: absolute, decoded, `..`-free, symlinks of its existing part resolved.
    /// Two readings when they differ: `..` removed from the text first (as DataFusion's URL
    /// parsing does before the file is opened), and `..` followed by the kernel through
    /// symlinks (as a plain `open` does). Both must be allowed.
    File(Vec<PathBuf>),
    /// A remote location (object store, HTTP, a database URL).
    Remote(Url),
}

/// Resolve `location` as DataFusion will: a path or `file:` URL becomes a local path
/// (percent-decoded, `..` and symlinks resolved), anything else a parsed URL.
pub async fn canonical(location: &str) -> Result<Target, String> {
    let location = location.trim();
    if location.is_empty() {
        return Err("an empty location".into());
    }
    if location.contains('\0') {
        return Err(format!("location `{location}` holds a NUL character"));
    }
    let url = if Path::new(location).is_absolute() {
        None
    } else {
        match Url::parse(location) {
            Ok(url) => Some(url),
            Err(url::ParseError::RelativeUrlWithoutBase) => None,
            Err(e) => return Err(format!("location `{location}` is not a valid URL: {e}")),
        }
    };
    let path = match url {
        Some(url) if url.scheme() == "file" => {
            if url.host().is_some_and(|h| h != Host::Domain("localhost")) {
                return Err(format!(
                    "location `{location}` names a file on another host; only local files can be read"
                ));
            }
            url.to_file_path()
                .map_err(|()| format!("location `{location}` is not a valid local file URL"))?
        }
        Some(url) => {
            reject_encoded_traversal(
                location,
                &percent_encoding::percent_decode_str(url.path()).decode_utf8_lossy(),
            )?;
            return Ok(Target::Remote(url));
        }
        None => {
            let p = Path::new(location);
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                std::env::current_dir()
                    .map_err(|e| format!("cannot resolve relative location `{location}`: {e}"))?
                    .join(p)
            }
        }
    };
    let text = path.to_string_lossy();
    reject_encoded_traversal(location, &text)?;
    let mut lexical = PathBuf::from("/");
    for c in path.components().skip(1) {
        push_lexically(&mut lexical, c.as_os_str());
    }
    let mut readings = vec![resolve(&lexical).await, resolve(&path).await];
    readings.dedup();
    Ok(Target::File(readings))
}

/// A decoded name still holding an encoded dot, slash or backslash was encoded twice: whatever
/// decodes it again would see a different path than the one checked.
fn reject_encoded_traversal(location: &str, decoded: &str) -> Result<(), String> {
    let lower = decoded.to_ascii_lowercase();
    if ["%2e", "%2f", "%5c", "%25"]
        .iter()
        .any(|e| lower.contains(e))
        || decoded.contains('\\')
    {
        return Err(format!(
            "location `{location}` holds encoded dots, slashes or backslashes; name the file directly"
        ));
    }
    Ok(())
}

/// An absolute path with `..` removed and the symlinks of its longest existing ancestor
/// resolved (the kernel resolves `a/link/../b` through the link, so the existing part is
/// resolved by the file system, not by text).
pub async fn resolve(path: &Path) -> PathBuf {
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .unwrap_or_else(|_| PathBuf::from("/"))
            .join(path)
    };
    let mut existing = absolute.clone();
    let mut rest: Vec<std::ffi::OsString> = Vec::new();
    loop {
        if let Ok(real) = tokio::fs::canonicalize(&existing).await {
            let mut out = real;
            for part in rest.iter().rev() {
                push_lexically(&mut out, part);
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
            _ => {
                // Nothing exists (not even `/`): resolve the text.
                let mut out = PathBuf::from("/");
                for c in absolute.components().skip(1) {
                    push_lexically(&mut out, c.as_os_str());
                }
                return out;
            }
        }
    }
}

fn push_lexically(out: &mut PathBuf, part: &std::ffi::OsStr) {
    match part.to_str() {
        Some("..") => {
            out.pop();
        }
        Some(".") | Some("") => {}
        _ => out.push(part),
    }
}

/// The allowed locations, protected files and egress allow-list, ready to check against.
#[derive(Debug, Clone, Default)]
pub struct Gate {
    allowed: Vec<String>,
    protected: Vec<PathBuf>,
    egress: Vec<HostPattern>,
}

impl Gate {
    /// `allowed` are `security.allowed_locations`, `protected` the server's own files,
    /// `egress` the parsed `security.egress`.
    pub fn new(allowed: Vec<String>, protected: Vec<PathBuf>, egress: Vec<HostPattern>) -> Self {
        Self {
            allowed,
            protected,
            egress,
        }
    }

    /// `Ok(())` when `location` (resolved by [`canonical`]) is inside an allowed location and
    /// reaches none of the server's own files; `admin` callers skip the allowed locations but
    /// never reach the server's files.
    pub async fn check_location(&self, location: &str, admin: bool) -> Result<(), String> {
        let target = canonical(location).await?;
        match &target {
            Target::File(readings) => {
                for path in readings {
                    self.check_file(location, path, admin).await?;
                }
                Ok(())
            }
            Target::Remote(url) => {
                if admin || self.remote_allowed(url).await {
                    return Ok(());
                }
                // A service (HTTP API, database, broker) may also be reached through the
                // egress list; object-store buckets only through allowed locations.
                if NETWORK_SCHEMES.contains(&url.scheme()) {
                    for (host, port) in endpoint_of(url.as_str())? {
                        self.check_host(&host, port, false)
                            .await
                            .map_err(|e| format!("location `{}`: {e}", shown(url)))?;
                    }
                    return Ok(());
                }
                Err(self.outside(location))
            }
        }
    }

    async fn check_file(&self, location: &str, path: &Path, admin: bool) -> Result<(), String> {
        for p in &self.protected {
            let p = resolve(p).await;
            if path.starts_with(&p) || (!admin && p.starts_with(path)) {
                return Err(format!(
                    "location `{location}` reaches the server's own files (configuration, \
                     secrets, state or keys); they are never readable or writable through SQL"
                ));
            }
        }
        if admin {
            return Ok(());
        }
        for prefix in &self.allowed {
            if let Ok(Target::File(allowed)) = canonical(prefix).await
                && allowed.iter().all(|a| path.starts_with(a))
            {
                return Ok(());
            }
        }
        Err(self.outside(location))
    }

    async fn remote_allowed(&self, url: &Url) -> bool {
        for prefix in &self.allowed {
            if let Ok(Target::Remote(p)) = canonical(prefix).await
                && p.scheme() == url.scheme()
                && p.host() == url.host()
                && p.port_or_known_default() == url.port_or_known_default()
                && p.username() == url.username()
                && path_prefix(p.path(), url.path())
            {
                return true;
            }
        }
        false
    }

    /// A hop a connector is about to make (a redirect, a next-page link): allowed when it is
    /// inside an allowed location or its host is on the egress list. Admins go anywhere.
    pub async fn check_hop(&self, url: &Url, admin: bool) -> Result<(), String> {
        if admin || self.remote_allowed(url).await {
            return Ok(());
        }
        let Some(host) = url.host_str() else {
            return Err(format!("`{}` names no host", shown(url)));
        };
        let port = url.port_or_known_default().unwrap_or(0);
        self.check_host(host, port, false).await.map_err(|e| {
            format!(
                "following `{}` would leave the allowed hosts: {e}",
                shown(url)
            )
        })
    }

    /// `Ok(())` when `host:port` is on the egress allow-list (always for admins).
    pub async fn check_host(&self, host: &str, port: u16, admin: bool) -> Result<(), String> {
        if admin {
            return Ok(());
        }
        let host = canonical_host(host)?;
        let Some(pattern) = self.egress.iter().find(|p| p.matches(&host, port)) else {
            return Err(if self.egress.is_empty() {
                format!(
                    "host {host}:{port} is not allowed: no hosts are open to non-admin users \
                     (security.egress is empty)"
                )
            } else {
                format!("host {host}:{port} is not on the egress allow-list (security.egress)")
            });
        };
        if !pattern.exact() && host.parse::<IpAddr>().is_err() {
            // A name matched by a wildcard must not lead inside.
            if let Ok(addrs) = tokio::net::lookup_host((host.as_str(), port)).await {
                for addr in addrs {
                    if internal(addr.ip())
                        && !self
                            .egress
                            .iter()
                            .any(|p| p.exact() && p.matches(&addr.ip().to_string(), port))
                    {
                        return Err(format!(
                            "host {host} resolves to the internal address {}, which security.egress does not name",
                            addr.ip()
                        ));
                    }
                }
            }
        } else if let Ok(ip) = host.parse::<IpAddr>()
            && internal(ip)
            && !pattern.exact()
        {
            return Err(format!(
                "host {host}:{port} is an internal address; name it in security.egress to allow it"
            ));
        }
        Ok(())
    }

    /// Whether a connection to `ip`, which `host` resolved to just now, keeps to what
    /// [`Gate::check_host`] allowed when the statement was checked. Connectors ask this at
    /// connect time, so a name that resolved outside when checked cannot lead inside later
    /// (DNS rebinding): an internal address is reached only when the egress list or an allowed
    /// location names the host or the address itself.
    pub fn admits_address(&self, host: &str, ip: IpAddr, admin: bool) -> bool {
        if admin || !internal(ip) {
            return true;
        }
        let Ok(host) = canonical_host(host) else {
            return false;
        };
        let ip = ip.to_string();
        let named = |h: &str| h == host || h == ip;
        self.egress
            .iter()
            .any(|p| p.exact() && (p.matches_any_port(&host) || p.matches_any_port(&ip)))
            || self.allowed.iter().any(|prefix| {
                Url::parse(prefix)
                    .ok()
                    .and_then(|u| u.host_str().and_then(|h| canonical_host(h).ok()))
                    .is_some_and(|h| named(&h))
            })
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

/// The gate as it applies to one caller, for what connectors do after planning (redirects,
/// next-page links): a session config extension the server sets for each caller. A session
/// without one (`flowengine run`, where the operator is the caller) is not restricted.
#[derive(Debug, Clone)]
pub struct CallerGate {
    gate: Gate,
    admin: bool,
}

impl CallerGate {
    pub fn new(gate: Gate, admin: bool) -> Self {
        Self { gate, admin }
    }

    /// See [`Gate::admits_address`].
    pub fn admits_address(&self, host: &str, ip: IpAddr) -> bool {
        self.gate.admits_address(host, ip, self.admin)
    }

    /// Whether this caller is an admin (who goes anywhere).
    pub fn is_admin(&self) -> bool {
        self.admin
    }

    /// Check one hop (see [`Gate::check_hop`]).
    pub async fn check_hop(&self, url: &Url) -> Result<(), String> {
        self.gate.check_hop(url, self.admin).await
    }
}

/// A URL without its credentials and query, for messages.
fn shown(url: &Url) -> String {
    let mut u = url.clone();
    let _ = u.set_password(None);
    u.set_query(None);
    u.to_string()
}

fn path_prefix(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(allowed: &Path, protected: Vec<PathBuf>, egress: &[&str]) -> Gate {
        Gate::new(
            vec![format!("{}/", allowed.display()), "s3://lake/open/".into()],
            protected,
            egress
                .iter()
                .map(|e| HostPattern::parse(e).unwrap())
                .collect(),
        )
    }

    #[tokio::test]
    async fn locations_are_checked_as_they_will_be_opened() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let config = dir.path().join("flowengine.toml");
        std::fs::write(&config, "").unwrap();
        let g = gate(&data, vec![config.clone()], &[]);
        let d = data.display();
        let ok = |s: String| {
            let g = g.clone();
            async move { g.check_location(&s, false).await }
        };
        assert!(ok(format!("{d}/x.csv")).await.is_ok());
        assert!(ok(format!("file://{d}/x.csv")).await.is_ok());
        assert!(ok(format!("{d}/sub/*.csv")).await.is_ok());
        for bad in [
            format!("{d}/../x.csv"),
            format!("file://{d}/%2e%2e/flowengine.toml"),
            format!("file://{d}/%2E%2E/%2e%2e/%2e%2e/etc/passwd"),
            format!("file://{d}/.%2e/x"),
            format!("file:{d}/%2e%2e/x"),
            format!("file://{d}/%252e%252e/x"),
            format!("file://{d}%2f..%2fx"),
            format!("file://localhost{d}/../x"),
            "/etc/passwd".into(),
            format!("{}", config.display()),
            "s3://lake/open/../secret/a".into(),
            "s3://lake/open/%2e%2e/secret/a".into(),
            "s3://lake/openx/a".into(),
        ] {
            assert!(ok(bad.clone()).await.is_err(), "{bad} must be refused");
        }
        assert!(ok("s3://lake/open/a.parquet".into()).await.is_ok());
        // A symlink inside the allowed directory pointing out is followed.
        std::os::unix::fs::symlink("/etc", data.join("etc")).unwrap();
        assert!(ok(format!("{d}/etc/passwd")).await.is_err());
        assert!(
            ok(format!("{d}/etc/../x")).await.is_err(),
            "resolved through the link"
        );
        // Admins skip the prefixes but never reach the server's files.
        assert!(g.check_location("/tmp/x.csv", true).await.is_ok());
        assert!(
            g.check_location(&format!("file://{d}/%2e%2e/flowengine.toml"), true)
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn hosts_are_normalised_before_the_allow_list() {
        let g = Gate::new(
            vec![],
            vec![],
            ["db.example.com:5432", "127.0.0.1:9000", "*:80"]
                .iter()
                .map(|p| HostPattern::parse(p).unwrap())
                .collect(),
        );
        assert!(g.check_host("DB.Example.COM.", 5432, false).await.is_ok());
        assert!(g.check_host("db.example.com", 5433, false).await.is_err());
        assert!(g.check_host("2130706433", 9000, false).await.is_ok());
        assert!(g.check_host("0x7f.1", 9000, false).await.is_ok());
        assert!(g.check_host("127.0.0.1", 5432, false).await.is_err());
        assert!(g.check_host("[::1]", 9000, false).await.is_err());
        assert!(g.check_host("anything", 1, true).await.is_ok());
        // A wildcard admits neither a name that resolves inside nor an internal address.
        assert!(g.check_host("localhost", 80, false).await.is_err());
        assert!(g.check_host("127.0.0.1", 80, false).await.is_err());
        assert!(g.check_host("10.0.0.1", 80, false).await.is_err());
        assert!(g.check_host("192.0.2.10", 80, false).await.is_ok());
        assert!(Gate::default().check_host("x", 1, false).await.is_err());
    }

    #[test]
    fn addresses_are_checked_again_at_connect_time() {
        let g = Gate::new(
            vec!["http://api.internal:8080/data/".into()],
            vec![],
            ["db.internal:5432", "10.1.2.3:9000", "*.example.com:443"]
                .iter()
                .map(|p| HostPattern::parse(p).unwrap())
                .collect(),
        );
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // A wildcard-matched name that now resolves inside (DNS rebinding) is refused.
        assert!(!g.admits_address("evil.example.com", ip("127.0.0.1"), false));
        assert!(!g.admits_address("evil.example.com", ip("::ffff:10.0.0.1"), false));
        assert!(g.admits_address("evil.example.com", ip("192.0.2.10"), false));
        // Names and addresses the configuration names exactly lead where they lead.
        assert!(g.admits_address("db.internal", ip("10.9.9.9"), false));
        assert!(g.admits_address("other.example.com", ip("10.1.2.3"), false));
        assert!(g.admits_address("API.internal.", ip("127.0.0.1"), false));
        // Admins go anywhere.
        assert!(g.admits_address("evil.example.com", ip("127.0.0.1"), true));
    }
}
