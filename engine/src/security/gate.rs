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
//! * Which options name paths, URLs or hosts is decided by [`option_kind`]: connectors declare
//!   their parameters' kinds ([`crate::ParamKind`]), and a test holds every declaration
//!   against this function, so a connector cannot add a path option the gate does not see.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use url::{Host, Url};

/// What an option's value names, for the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptionKind {
    /// A local file or directory, or a location URL (`dead_letter_path`, SQLite's `path`).
    Path,
    /// A URL or connection string whose host the server connects to (`aws.endpoint`,
    /// `connection`).
    Url,
    /// A bare host name or address (`host`); its port is the `port` option.
    Host,
    /// Anything else.
    Plain,
}

/// The kind of value option `key` holds, from its name (format prefixes such as `format.`
/// ignored). Names are matched by their last word, so `spool_dir`, `format.dead_letter_path`
/// and `aws.endpoint` are all seen.
pub fn option_kind(key: &str) -> OptionKind {
    let key = key.to_ascii_lowercase();
    let last = key.rsplit('.').next().unwrap_or(&key);
    let word = last.rsplit('_').next().unwrap_or(last);
    // Key material and secrets stay secrets even when named like paths (`key_file` excepted).
    match word {
        "path" | "dir" | "directory" | "file" | "folder" | "spool" | "location" | "root" => {
            OptionKind::Path
        }
        "url" | "uri" | "endpoint" | "connection" | "dsn" | "link" | "proxy" | "server"
        | "servers" | "broker" | "brokers" | "address" => OptionKind::Url,
        "host" | "hostname" => OptionKind::Host,
        _ => OptionKind::Plain,
    }
}

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
            reject_encoded_traversal(location, &percent_decode(url.path()))?;
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

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
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

/// One `host:port` pattern of `security.egress`: `db.internal:5432`, `*.example.com:443`,
/// `10.0.0.7:*`, `[::1]:9000`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    host: HostMatch,
    port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostMatch {
    Exact(String),
    /// `*.suffix`: any name ending in `.suffix`.
    Suffix(String),
    Any,
}

impl HostPattern {
    /// Parse `host:port` (`*` for any port or host).
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (host, port) = match s.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(':') && (p == "*" || p.parse::<u16>().is_ok()) => {
                (h, (p != "*").then(|| p.parse().unwrap_or(0)))
            }
            _ => {
                return Err(format!(
                    "security.egress `{s}`: expected host:port (`*` for any port)"
                ));
            }
        };
        let host = if host == "*" {
            HostMatch::Any
        } else if let Some(suffix) = host.strip_prefix("*.") {
            HostMatch::Suffix(canonical_host(suffix)?)
        } else {
            HostMatch::Exact(canonical_host(host)?)
        };
        Ok(Self { host, port })
    }

    pub(crate) fn matches(&self, host: &str, port: u16) -> bool {
        let host_ok = match &self.host {
            HostMatch::Any => true,
            HostMatch::Exact(h) => h == host,
            HostMatch::Suffix(s) => host
                .strip_suffix(s.as_str())
                .is_some_and(|rest| rest.ends_with('.')),
        };
        host_ok && self.port.is_none_or(|p| p == port)
    }

    fn exact(&self) -> bool {
        matches!(self.host, HostMatch::Exact(_))
    }
}

/// A host as the network will see it: IPv4 in any of its forms (`2130706433`, `0x7f.1`,
/// `127.1`) as dotted decimal, IPv6 without brackets, names lower-cased without trailing dot.
pub fn canonical_host(host: &str) -> Result<String, String> {
    let trimmed = host.trim().trim_end_matches('.');
    let bare = trimmed.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(ip.to_string());
    }
    // The URL parser applies the WHATWG host rules (IPv4 number forms, IDNA, case).
    let url = Url::parse(&format!("http://{trimmed}/"))
        .map_err(|e| format!("`{host}` is not a valid host name: {e}"))?;
    match url.host() {
        Some(Host::Ipv4(ip)) => Ok(ip.to_string()),
        Some(Host::Ipv6(ip)) => Ok(ip.to_string()),
        Some(Host::Domain(d)) => Ok(d.trim_end_matches('.').to_ascii_lowercase()),
        None => Err(format!("`{host}` is not a valid host name")),
    }
}

/// The hosts and ports a URL or connection string connects to: the URL's host, and the
/// `host`/`hostaddr`/`port` parameters drivers also read (libpq's `?host=`, comma-separated
/// lists of hosts); `key=value` connection strings (`host=db port=5432 ...`) too. A Unix
/// socket, or no host at all (a driver's default), is this machine: `localhost`.
pub fn endpoint_of(value: &str) -> Result<Vec<(String, u16)>, String> {
    const LOCAL: &str = "localhost";
    let value = value.trim();
    if value.is_empty() {
        return Ok(Vec::new());
    }
    if value.contains("${secret:") && !value.contains("://") {
        return Err("a host may not come from a secret: name it in the statement".into());
    }
    // Hosts and ports named by parameters, as lists.
    let mut hosts: Vec<String> = Vec::new();
    let mut ports: Vec<u16> = Vec::new();
    let mut add = |key: &str, v: &str| -> Result<(), String> {
        let v = v.trim().trim_matches('\'');
        match key.to_ascii_lowercase().as_str() {
            "host" | "hostaddr" | "server" => hosts.extend(
                v.split(',')
                    .map(|h| h.trim().to_string())
                    .filter(|h| !h.is_empty()),
            ),
            "socket" | "unix_socket" | "socket_path" => hosts.push("/".into()),
            "port" => {
                for p in v.split(',').filter(|p| !p.trim().is_empty()) {
                    ports.push(
                        p.trim()
                            .parse()
                            .map_err(|_| format!("port `{p}` is not a number"))?,
                    );
                }
            }
            _ => {}
        }
        Ok(())
    };
    let (default_host, default_port) = if let Some((scheme, _)) = value.split_once("://") {
        let url = Url::parse(value).map_err(|e| format!("`{value}` is not a valid URL: {e}"))?;
        for (k, v) in url.query_pairs() {
            add(&k, &v)?;
        }
        let port = url
            .port_or_known_default()
            .or_else(|| default_port(scheme))
            .unwrap_or(0);
        match url.host_str() {
            Some(h) if h.contains("%7B") || h.contains('{') => {
                return Err("a host may not come from a secret or variable".into());
            }
            Some(h) => (h.to_string(), port),
            None => (LOCAL.to_string(), port),
        }
    } else if value.contains('=') {
        for part in value.split_whitespace() {
            if let Some((k, v)) = part.split_once('=') {
                add(k, v)?;
            }
        }
        (LOCAL.to_string(), 5432)
    } else {
        // A bare `host:port` or host.
        match value.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') || h.ends_with(']') => (
                h.to_string(),
                p.parse()
                    .map_err(|_| format!("port `{p}` is not a number"))?,
            ),
            _ => (value.to_string(), 0),
        }
    };
    if hosts.is_empty() {
        hosts.push(default_host);
    }
    let mut out = Vec::new();
    for (i, host) in hosts.iter().enumerate() {
        let port = ports
            .get(i)
            .or(ports.last())
            .copied()
            .unwrap_or(default_port);
        let host = if host.starts_with('/') || host.starts_with('@') {
            LOCAL.to_string()
        } else {
            canonical_host(host)?
        };
        out.push((host, port));
    }
    Ok(out)
}

/// Whether `location` is a URL of a service reached over the network (HTTP, a database, a
/// broker), whose host the egress list governs; object-store URLs name buckets instead.
pub fn is_network_url(location: &str) -> bool {
    location
        .split_once("://")
        .is_some_and(|(scheme, _)| NETWORK_SCHEMES.contains(&scheme.to_ascii_lowercase().as_str()))
}

/// Schemes of services reached over the network, whose hosts the egress list governs.
const NETWORK_SCHEMES: &[&str] = &[
    "http",
    "https",
    "postgres",
    "postgresql",
    "mysql",
    "mariadb",
    "redis",
    "rediss",
    "amqp",
    "amqps",
    "mqtt",
    "mqtts",
    "tcp",
    "ssl",
    "nats",
    "kafka",
    "ws",
    "wss",
];

fn default_port(scheme: &str) -> Option<u16> {
    Some(match scheme.to_ascii_lowercase().as_str() {
        "postgres" | "postgresql" => 5432,
        "mysql" | "mariadb" => 3306,
        "redis" | "rediss" => 6379,
        "amqp" => 5672,
        "amqps" => 5671,
        "mqtt" | "tcp" => 1883,
        "mqtts" | "ssl" => 8883,
        "nats" => 4222,
        "kafka" => 9092,
        _ => return None,
    })
}

/// Whether `ip` is inside the machine or its private network.
fn internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.octets()[0] == 0
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || (v6.segments()[0] & 0xfe00) == 0xfc00
                || (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6
                    .to_ipv4_mapped()
                    .is_some_and(|v4| internal(IpAddr::V4(v4)))
        }
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

/// The `${secret:NAME}` references in `text`.
pub fn secret_references(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("${secret:") {
        let after = &rest[start + "${secret:".len()..];
        match after.find('}') {
            Some(end) => {
                out.push(after[..end].trim().to_string());
                rest = &after[end + 1..];
            }
            None => break,
        }
    }
    out
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
    fn endpoints_of_urls_and_connection_strings() {
        let one = |h: &str, p: u16| vec![(h.to_string(), p)];
        assert_eq!(
            endpoint_of("postgresql://u:p@127.0.0.1:47010/db").unwrap(),
            one("127.0.0.1", 47010)
        );
        assert_eq!(
            endpoint_of("postgres://u@[::1]/db").unwrap(),
            one("::1", 5432)
        );
        assert_eq!(
            endpoint_of("http://2130706433/x").unwrap(),
            one("127.0.0.1", 80)
        );
        assert_eq!(
            endpoint_of("host=db.internal port=5433 user=x").unwrap(),
            one("db.internal", 5433)
        );
        assert_eq!(
            endpoint_of("db.internal:6000").unwrap(),
            one("db.internal", 6000)
        );
        // What drivers read besides the URL's host.
        assert_eq!(
            endpoint_of("postgresql://u@db.internal:5432/x?host=127.0.0.1&port=9999").unwrap(),
            one("127.0.0.1", 9999)
        );
        assert_eq!(
            endpoint_of("host=a,b port=1,2").unwrap(),
            vec![("a".to_string(), 1), ("b".to_string(), 2)]
        );
        // Sockets and drivers' default hosts are this machine.
        assert_eq!(
            endpoint_of("host=/var/run/postgresql").unwrap(),
            one("localhost", 5432)
        );
        assert_eq!(
            endpoint_of("user=postgres").unwrap(),
            one("localhost", 5432)
        );
        assert_eq!(
            endpoint_of("postgresql:///test").unwrap(),
            one("localhost", 5432)
        );
        assert_eq!(
            endpoint_of("mysql://root@db.internal/test?socket=/run/mysqld/mysqld.sock").unwrap(),
            one("localhost", 3306)
        );
        assert_eq!(
            endpoint_of("unix:///tmp/redis.sock").unwrap(),
            one("localhost", 0)
        );
        assert!(endpoint_of("${secret:DB_URL}").is_err());
    }

    #[test]
    fn option_kinds_follow_names() {
        assert_eq!(option_kind("format.dead_letter_path"), OptionKind::Path);
        assert_eq!(option_kind("spool_dir"), OptionKind::Path);
        assert_eq!(option_kind("path"), OptionKind::Path);
        assert_eq!(option_kind("aws.endpoint"), OptionKind::Url);
        assert_eq!(option_kind("connection"), OptionKind::Url);
        assert_eq!(option_kind("host"), OptionKind::Host);
        assert_eq!(option_kind("format.delimiter"), OptionKind::Plain);
        assert_eq!(option_kind("password"), OptionKind::Plain);
    }

    #[test]
    fn secret_references_are_found() {
        assert_eq!(
            secret_references("a ${secret:A} b ${secret: B }"),
            vec!["A".to_string(), "B".to_string()]
        );
    }
}
