//! Which options name paths, URLs or hosts, for options no connector declared
//! ([`crate::ParamKind`] is read first), and where a statement uses `${secret:...}`.

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
