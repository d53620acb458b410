//! Hosts as the network sees them: `security.egress` patterns, canonical host names and
//! addresses, the endpoints a URL or connection string reaches, and which addresses are inside
//! the machine or its private network.

use std::net::IpAddr;

use url::{Host, Url};

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
        self.matches_any_port(host) && self.port.is_none_or(|p| p == port)
    }

    /// Whether the host part matches `host`, whatever the port.
    pub(crate) fn matches_any_port(&self, host: &str) -> bool {
        match &self.host {
            HostMatch::Any => true,
            HostMatch::Exact(h) => h == host,
            HostMatch::Suffix(s) => host
                .strip_suffix(s.as_str())
                .is_some_and(|rest| rest.ends_with('.')),
        }
    }

    pub(super) fn exact(&self) -> bool {
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
pub(super) const NETWORK_SCHEMES: &[&str] = &[
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
pub(super) fn internal(ip: IpAddr) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
