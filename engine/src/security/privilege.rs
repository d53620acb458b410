//! What a grant allows: one privilege per kind of access a plan can make.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A privilege on a table (pattern).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Privilege {
    /// Read rows (every `TableScan`, also through views, CTEs and subqueries).
    Select,
    /// `INSERT INTO` the table (also bulk ingest appends).
    Insert,
    /// `UPDATE` the table.
    Update,
    /// `DELETE FROM` the table.
    Delete,
    /// `CREATE [EXTERNAL] TABLE` / `CREATE VIEW` / bulk ingest of a new table with this name.
    Create,
    /// `DROP TABLE` / `DROP VIEW` (and ingest replacing the table).
    Drop,
    /// `COPY ... TO` reading the table (exporting it), besides `SELECT`.
    #[serde(rename = "COPY", alias = "COPY TO")]
    Copy,
    /// Every privilege above.
    All,
}

impl Privilege {
    /// Whether holding `self` grants `wanted`.
    pub fn covers(self, wanted: Privilege) -> bool {
        self == Privilege::All || self == wanted
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Privilege::Select => "SELECT",
            Privilege::Insert => "INSERT",
            Privilege::Update => "UPDATE",
            Privilege::Delete => "DELETE",
            Privilege::Create => "CREATE",
            Privilege::Drop => "DROP",
            Privilege::Copy => "COPY",
            Privilege::All => "ALL",
        }
    }
}

impl fmt::Display for Privilege {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
