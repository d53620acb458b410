//! Memory and machine sizing: the memory limit and pool settings, and what the machine (or its
//! container) offers, which percentage limits and default partitions are resolved against.

use std::str::FromStr;

use bytesize::ByteSize;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Memory pool sharing policy.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MemoryPoolKind {
    /// First come, first served (datafusion-cli's default).
    #[default]
    Greedy,
    /// Each spilling operator gets a fair share.
    Fair,
}

impl FromStr for MemoryPoolKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "greedy" => Ok(Self::Greedy),
            "fair" => Ok(Self::Fair),
            other => Err(format!(
                "unknown memory pool `{other}`; expected greedy or fair"
            )),
        }
    }
}

/// A memory size, absolute or relative to physical RAM.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MemoryLimit {
    Bytes(u64),
    Percent(f64),
}

impl MemoryLimit {
    /// Resolve to bytes against the machine's physical memory.
    pub fn to_bytes(self, physical: u64) -> u64 {
        match self {
            MemoryLimit::Bytes(b) => b,
            MemoryLimit::Percent(p) => ((physical as f64) * p / 100.0) as u64,
        }
    }
}

impl FromStr for MemoryLimit {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let s = s.trim();
        if let Some(p) = s.strip_suffix('%') {
            let p: f64 = p
                .trim()
                .parse()
                .map_err(|_| format!("`{s}` is not a percentage"))?;
            if !(p > 0.0 && p <= 100.0) {
                return Err(format!("`{s}` must be a percentage in (0, 100]"));
            }
            return Ok(MemoryLimit::Percent(p));
        }
        let bytes = s
            .parse::<ByteSize>()
            .map_err(|e| format!("`{s}` is not a size like 512MiB or 4GB: {e}"))?;
        if bytes.as_u64() == 0 {
            return Err("memory limit must be greater than zero".into());
        }
        Ok(MemoryLimit::Bytes(bytes.as_u64()))
    }
}

impl std::fmt::Display for MemoryLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MemoryLimit::Bytes(b) => write!(f, "{}", ByteSize(*b).display().iec()),
            MemoryLimit::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl Serialize for MemoryLimit {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for MemoryLimit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(0) => Err(serde::de::Error::custom(
                "memory limit must be greater than zero",
            )),
            Raw::Int(b) => Ok(MemoryLimit::Bytes(b)),
            Raw::Str(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// Number of cores available to this process.
pub fn num_cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Memory this process may use, in bytes: physical memory (from /proc/meminfo; 8 GiB when
/// unknown), or the container's cgroup memory limit when that is lower. In a container
/// /proc/meminfo shows the host's memory, so a `"75%"` limit without this would exceed the
/// container's limit and get the process OOM-killed instead of spilling.
pub fn physical_memory() -> u64 {
    const FALLBACK: u64 = 8 << 30;
    let host = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(FALLBACK);
    let cgroup = [
        "/sys/fs/cgroup/memory.max",                   // cgroup v2
        "/sys/fs/cgroup/memory/memory.limit_in_bytes", // cgroup v1
    ]
    .iter()
    .find_map(|path| std::fs::read_to_string(path).ok())
    .and_then(|text| cgroup_limit(&text));
    cgroup.map_or(host, |limit| limit.min(host))
}

/// A cgroup memory limit file's value: `max` (v2) or a huge number (v1's "unlimited") mean none.
fn cgroup_limit(text: &str) -> Option<u64> {
    let value = text.trim().parse::<u64>().ok()?;
    (value > 0 && value < (1 << 60)).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_limits_are_read_and_unlimited_means_none() {
        assert_eq!(cgroup_limit("max\n"), None);
        assert_eq!(cgroup_limit("9223372036854771712\n"), None);
        assert_eq!(cgroup_limit("8589934592\n"), Some(8 << 30));
        assert!(physical_memory() > 0);
    }
}
