//! The typed error of a connector, and what any connector failure means for a retry.
//!
//! A connector raises [`ConnectorError`] with an [`ErrorKind`] for the failures it detects
//! itself (a connect that timed out, an HTTP status, a broker that refused a message).
//! Failures of client libraries keep their own types; [`classify`] finds the first typed cause
//! in an error's chain (a PostgreSQL SQLSTATE, a MySQL server code, an I/O error kind, an HTTP
//! status) and says what kind it is. Retries ask [`ErrorKind::is_retriable`]: nothing here
//! reads an error's text.

use std::error::Error;

use datafusion::error::DataFusionError;

/// What kind of failure a connector call met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The remote end could not be reached or dropped the connection (refused, reset, closed,
    /// shutting down).
    Unavailable,
    /// No answer in time.
    Timeout,
    /// The server is there but asks to come back: too many connections, HTTP 429, a deadlock
    /// or serialization failure.
    Busy,
    /// Credentials or permissions were refused.
    Denied,
    /// What the table names does not exist (database, table, queue, URL).
    NotFound,
    /// The request itself is wrong: syntax, types, a constraint, an option.
    Invalid,
    /// Anything else.
    Failed,
}

impl ErrorKind {
    /// Whether the same call may succeed when tried again unchanged.
    pub fn is_retriable(self) -> bool {
        matches!(self, Self::Unavailable | Self::Timeout | Self::Busy)
    }
}

/// A connector failure: its kind, a message naming the table and remote end (never a
/// credential), and the client library's error when there is one.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ConnectorError {
    kind: ErrorKind,
    message: String,
    #[source]
    source: Option<Box<dyn Error + Send + Sync>>,
}

impl ConnectorError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
        }
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn is_retriable(&self) -> bool {
        self.kind.is_retriable()
    }

    /// `e`, whatever it is, with `note` appended to its message; its kind is kept.
    pub fn noted(e: DataFusionError, note: &str) -> DataFusionError {
        let kind = classify(&e);
        Self {
            kind,
            message: format!("{e} ({note})"),
            source: Some(Box::new(e)),
        }
        .into()
    }
}

impl From<ConnectorError> for DataFusionError {
    fn from(e: ConnectorError) -> Self {
        DataFusionError::External(Box::new(e))
    }
}

/// Whether a failed call is worth trying again.
pub fn is_retriable(e: &DataFusionError) -> bool {
    classify(e).is_retriable()
}

/// The kind of the first cause in `e`'s chain that says what it is; [`ErrorKind::Failed`]
/// when none does.
pub fn classify(e: &(dyn Error + 'static)) -> ErrorKind {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(kind) = kind_of(c) {
            return kind;
        }
        cause = c.source();
    }
    ErrorKind::Failed
}

fn kind_of(c: &(dyn Error + 'static)) -> Option<ErrorKind> {
    if let Some(e) = c.downcast_ref::<ConnectorError>() {
        return Some(e.kind);
    }
    if let Some(e) = c.downcast_ref::<DataFusionError>() {
        // DataFusion's own errors say what they are; the wrappers are looked through.
        return match e {
            DataFusionError::Plan(_)
            | DataFusionError::SQL(..)
            | DataFusionError::SchemaError(..)
            | DataFusionError::NotImplemented(_)
            | DataFusionError::Configuration(_) => Some(ErrorKind::Invalid),
            DataFusionError::ResourcesExhausted(_) => Some(ErrorKind::Busy),
            DataFusionError::IoError(io) => io_kind(io),
            _ => None,
        };
    }
    if let Some(e) = c.downcast_ref::<tokio_postgres::Error>() {
        return match e.code() {
            Some(code) => Some(sqlstate_kind(code.code())),
            None if e.is_closed() => Some(ErrorKind::Unavailable),
            None => None,
        };
    }
    if let Some(e) = c.downcast_ref::<tokio_postgres::error::DbError>() {
        return Some(sqlstate_kind(e.code().code()));
    }
    if let Some(io) = c.downcast_ref::<std::io::Error>() {
        return io_kind(io);
    }
    if c.is::<tokio::time::error::Elapsed>() {
        return Some(ErrorKind::Timeout);
    }
    if let Some(e) = c.downcast_ref::<reqwest::Error>() {
        if e.is_timeout() {
            return Some(ErrorKind::Timeout);
        }
        if let Some(status) = e.status() {
            return Some(http_status_kind(status.as_u16()));
        }
        if e.is_connect() {
            return Some(ErrorKind::Unavailable);
        }
        return None;
    }
    database_kind(c)
}

#[cfg(any(feature = "postgres", feature = "mysql"))]
fn database_kind(c: &(dyn Error + 'static)) -> Option<ErrorKind> {
    use datafusion_table_providers::util::ns_lookup;
    if let Some(e) = c.downcast_ref::<ns_lookup::Error>() {
        return Some(match e {
            ns_lookup::Error::UnableToConnect { .. } => ErrorKind::Unavailable,
            _ => ErrorKind::Invalid,
        });
    }
    #[cfg(feature = "postgres")]
    {
        use datafusion_table_providers::sql::db_connection_pool::postgrespool::Error as Pg;
        if let Some(e) = c.downcast_ref::<Pg>() {
            match e {
                Pg::InvalidUsernameOrPassword { .. } => return Some(ErrorKind::Denied),
                // The pool's own wait for a connection (no cause below it) timed out.
                Pg::ConnectionPoolRunError { source } if source.source().is_none() => {
                    return Some(ErrorKind::Timeout);
                }
                Pg::InvalidParameterError { .. }
                | Pg::InvalidIntegerParameterError { .. }
                | Pg::InvalidRootCertPathError { .. } => return Some(ErrorKind::Invalid),
                _ => {}
            }
        }
    }
    #[cfg(feature = "mysql")]
    {
        use datafusion_table_providers::sql::db_connection_pool::mysqlpool::Error as My;
        if let Some(e) = c.downcast_ref::<My>() {
            match e {
                My::InvalidUsernameOrPassword => return Some(ErrorKind::Denied),
                My::UnknownMySQLDatabase { .. } => return Some(ErrorKind::NotFound),
                My::InvalidParameterError { .. } | My::InvalidRootCertPathError { .. } => {
                    return Some(ErrorKind::Invalid);
                }
                _ => {}
            }
        }
        if let Some(e) = c.downcast_ref::<mysql_async::Error>() {
            return match e {
                mysql_async::Error::Server(s) => Some(mysql_code_kind(s.code)),
                mysql_async::Error::Io(_) => Some(ErrorKind::Unavailable),
                mysql_async::Error::Url(_) => Some(ErrorKind::Invalid),
                _ if e.is_fatal() => Some(ErrorKind::Unavailable),
                _ => None,
            };
        }
        if let Some(s) = c.downcast_ref::<mysql_async::ServerError>() {
            return Some(mysql_code_kind(s.code));
        }
    }
    None
}

#[cfg(not(any(feature = "postgres", feature = "mysql")))]
fn database_kind(_: &(dyn Error + 'static)) -> Option<ErrorKind> {
    None
}

fn io_kind(io: &std::io::Error) -> Option<ErrorKind> {
    use std::io::ErrorKind as Io;
    Some(match io.kind() {
        Io::ConnectionRefused
        | Io::ConnectionReset
        | Io::ConnectionAborted
        | Io::BrokenPipe
        | Io::NotConnected
        | Io::UnexpectedEof
        | Io::HostUnreachable
        | Io::NetworkUnreachable
        | Io::NetworkDown
        | Io::Interrupted => ErrorKind::Unavailable,
        Io::TimedOut | Io::WouldBlock => ErrorKind::Timeout,
        Io::PermissionDenied => ErrorKind::Denied,
        Io::NotFound => ErrorKind::NotFound,
        Io::InvalidInput | Io::InvalidData => ErrorKind::Invalid,
        _ => return None,
    })
}

/// PostgreSQL's SQLSTATE classes.
fn sqlstate_kind(code: &str) -> ErrorKind {
    match code {
        "40001" | "40P01" | "55P03" => ErrorKind::Busy,
        "57014" => ErrorKind::Timeout,
        c if c.starts_with("08") || c.starts_with("57P") => ErrorKind::Unavailable,
        c if c.starts_with("53") => ErrorKind::Busy,
        c if c.starts_with("28") || c == "42501" => ErrorKind::Denied,
        "3D000" | "3F000" | "42P01" | "42883" | "42703" => ErrorKind::NotFound,
        c if c.starts_with("22") || c.starts_with("23") || c.starts_with("42") => {
            ErrorKind::Invalid
        }
        _ => ErrorKind::Failed,
    }
}

/// MySQL and MariaDB server error codes.
#[cfg(feature = "mysql")]
fn mysql_code_kind(code: u16) -> ErrorKind {
    match code {
        // Too many connections, lock wait timeout, deadlock, out of resources.
        1040 | 1203 | 1205 | 1213 | 1041 | 1135 => ErrorKind::Busy,
        // Server shutdown in progress, server gone away, lost connection.
        1053 | 1077 | 1078 | 1079 | 2002 | 2003 | 2006 | 2013 => ErrorKind::Unavailable,
        // Query execution interrupted (max_execution_time).
        3024 => ErrorKind::Timeout,
        1044 | 1045 | 1142 | 1143 | 1227 | 1698 => ErrorKind::Denied,
        1049 | 1146 | 1051 | 1054 => ErrorKind::NotFound,
        _ => ErrorKind::Invalid,
    }
}

/// HTTP statuses: 429 and 503 say "come back", other 5xx are the server's trouble.
pub(crate) fn http_status_kind(status: u16) -> ErrorKind {
    match status {
        408 => ErrorKind::Timeout,
        429 => ErrorKind::Busy,
        401 | 403 | 407 => ErrorKind::Denied,
        404 | 410 => ErrorKind::NotFound,
        500..=599 => ErrorKind::Unavailable,
        _ => ErrorKind::Invalid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_come_from_types_not_text() {
        let refused = DataFusionError::External(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )));
        assert!(is_retriable(&refused));
        // A message that merely mentions a connection failure is not a connection failure.
        assert!(!is_retriable(&DataFusionError::Execution(
            "connection refused".into()
        )));
        assert!(!is_retriable(&DataFusionError::Plan(
            "cannot connect: bad option".into()
        )));
        let timeout = ConnectorError::new(ErrorKind::Timeout, "no connection within 1s");
        assert!(is_retriable(&timeout.into()));
        let denied = ConnectorError::new(ErrorKind::Denied, "password refused");
        assert!(!is_retriable(&denied.into()));
        // Kinds survive wrapping, and a note keeps the kind.
        let wrapped = DataFusionError::Context(
            "opening".into(),
            Box::new(ConnectorError::new(ErrorKind::Busy, "too many").into()),
        );
        assert_eq!(classify(&wrapped), ErrorKind::Busy);
        let noted = ConnectorError::noted(wrapped, "2 earlier messages were acknowledged");
        assert_eq!(classify(&noted), ErrorKind::Busy);
        assert!(noted.to_string().contains("2 earlier messages"), "{noted}");
    }

    #[test]
    fn sqlstates_and_statuses() {
        assert_eq!(sqlstate_kind("08006"), ErrorKind::Unavailable);
        assert_eq!(sqlstate_kind("53300"), ErrorKind::Busy);
        assert_eq!(sqlstate_kind("40P01"), ErrorKind::Busy);
        assert_eq!(sqlstate_kind("28P01"), ErrorKind::Denied);
        assert_eq!(sqlstate_kind("42P01"), ErrorKind::NotFound);
        assert_eq!(sqlstate_kind("23505"), ErrorKind::Invalid);
        assert!(http_status_kind(503).is_retriable());
        assert!(http_status_kind(429).is_retriable());
        assert!(!http_status_kind(404).is_retriable());
        assert!(!http_status_kind(400).is_retriable());
    }
}
