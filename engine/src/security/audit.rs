//! The audit log: one JSON line per security decision (a login, a statement allowed or denied,
//! with what it read and wrote and how it ended), appended to a file by a writer thread so the
//! async runtime never blocks on disk. Statement text can have its literals redacted; values of
//! options whose name looks secret (the names `crate::state::is_secret_name` knows) are always
//! redacted.

use std::io::Write;
use std::path::{Path, PathBuf};

use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
use serde::Serialize;
use tokio::sync::mpsc;

/// One audited event.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AuditRecord {
    /// RFC 3339, UTC.
    pub time: String,
    /// `login`, `statement`, `ingest`, `metadata`.
    pub event: &'static str,
    pub user: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    pub client: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub statement: Option<String>,
    pub reads: Vec<String>,
    pub writes: Vec<String>,
    /// `allow` or `deny`.
    pub decision: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// OpenTelemetry trace id of the request (32 hex digits), to find its spans and log lines.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

/// Appends records to the audit file; cheap to clone. Without a file it only logs denials.
#[derive(Debug, Clone)]
pub struct AuditLog {
    tx: Option<mpsc::UnboundedSender<AuditRecord>>,
    redact_literals: bool,
}

/// The audit file could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open the audit log {path}: {source}")]
pub struct AuditError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

impl AuditLog {
    /// Open (append, create with mode 600) `path` and start its writer thread.
    pub fn open(path: Option<&Path>, redact_literals: bool) -> Result<Self, AuditError> {
        let Some(path) = path else {
            return Ok(Self {
                tx: None,
                redact_literals,
            });
        };
        let mut options = std::fs::OpenOptions::new();
        options.create(true).append(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let file = options.open(path).map_err(|source| AuditError {
            path: path.to_path_buf(),
            source,
        })?;
        let (tx, mut rx) = mpsc::unbounded_channel::<AuditRecord>();
        let shown = path.display().to_string();
        std::thread::Builder::new()
            .name("flowengine-audit".into())
            .spawn(move || {
                let mut out = file;
                let mut line = Vec::with_capacity(1024);
                while let Some(record) = rx.blocking_recv() {
                    // Whole lines only, in one write per batch of queued records: a reader of
                    // the file (`system.audit`) never sees half a record but for the last one.
                    line.clear();
                    let mut add = |r: &AuditRecord| -> serde_json::Result<()> {
                        serde_json::to_writer(&mut line, r)?;
                        line.push(b'\n');
                        Ok(())
                    };
                    let mut result = add(&record);
                    while let Ok(more) = rx.try_recv() {
                        result = result.and_then(|()| add(&more));
                    }
                    let written = result
                        .map_err(std::io::Error::other)
                        .and_then(|()| out.write_all(&line));
                    if let Err(e) = written {
                        tracing::error!("cannot write the audit log {shown}: {e}");
                    }
                }
            })
            .map_err(|source| AuditError {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Self {
            tx: Some(tx),
            redact_literals,
        })
    }

    /// Record one event (statement text redacted as configured).
    pub fn record(&self, mut record: AuditRecord) {
        if record.time.is_empty() {
            record.time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        }
        if let Some(text) = record.statement.take() {
            record.statement = Some(redact(&text, self.redact_literals));
        }
        if record.decision == "deny" {
            tracing::warn!(
                user = %record.user,
                client = %record.client,
                reason = record.reason.as_deref().unwrap_or(""),
                "{} denied",
                record.event
            );
        }
        if let Some(tx) = &self.tx {
            let _ = tx.send(record);
        }
    }
}

/// Statement text for the log: secret-looking option values always, every literal when asked.
pub fn redact(sql: &str, literals: bool) -> String {
    let Ok(tokens) = Tokenizer::new(&GenericDialect {}, sql).tokenize() else {
        // Unparsable text is kept only when nothing needs hiding.
        return if literals {
            "<unparsable statement redacted>".into()
        } else {
            sql.to_string()
        };
    };
    let mut out = String::with_capacity(sql.len());
    let mut secret_key_before = false;
    for token in &tokens {
        let redacted = match token {
            Token::SingleQuotedString(_) | Token::DoubleQuotedString(_)
                if literals || secret_key_before =>
            {
                Some("'***'")
            }
            Token::Number(_, _) if literals => Some("?"),
            _ => None,
        };
        match (redacted, token) {
            (Some(r), _) => out.push_str(r),
            // A URL's password inside any string (a connection string, an endpoint).
            (None, Token::SingleQuotedString(s)) if s.contains("://") => {
                out.push_str(&Token::SingleQuotedString(crate::secrets::redact_url(s)).to_string())
            }
            (None, _) => out.push_str(&token.to_string()),
        }
        if !matches!(token, Token::Whitespace(_)) {
            // A string right after a secret-looking key is its value, not a key.
            secret_key_before = match token {
                Token::SingleQuotedString(s) | Token::DoubleQuotedString(s) => {
                    !secret_key_before && crate::state::is_secret_name(s)
                }
                Token::Word(w) => crate::state::is_secret_name(&w.value),
                _ => false,
            };
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_hides_secret_options_and_literals() {
        let sql = "CREATE EXTERNAL TABLE t STORED AS POSTGRES LOCATION 'x' OPTIONS ('password' 'hunter2', 'host' 'db')";
        let r = redact(sql, false);
        assert!(!r.contains("hunter2"), "{r}");
        assert!(r.contains("'db'"), "{r}");
        let r = redact(
            "CREATE EXTERNAL TABLE t STORED AS POSTGRES LOCATION 'x' OPTIONS ('connection' 'postgresql://app:hunter3@db/x')",
            false,
        );
        assert!(!r.contains("hunter3") && r.contains("app:***@db"), "{r}");
        let r = redact("SELECT * FROM t WHERE id = 42 AND name = 'bob'", true);
        assert!(!r.contains("42") && !r.contains("bob"), "{r}");
        assert!(r.contains("SELECT * FROM t WHERE id = ?"), "{r}");
    }

    #[test]
    fn records_are_json_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(Some(&path), false).unwrap();
        log.record(AuditRecord {
            event: "statement",
            user: "ana".into(),
            decision: "allow",
            statement: Some("SELECT 1".into()),
            ..Default::default()
        });
        drop(log);
        for _ in 0..100 {
            if std::fs::read_to_string(&path)
                .unwrap_or_default()
                .ends_with('\n')
            {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(v["user"], "ana");
        assert_eq!(v["decision"], "allow");
        assert!(v["time"].as_str().unwrap().ends_with('Z'));
    }
}
