//! The three database backends the tests run against, behind one [`Backend`]: each runs SQL with
//! the database's own client, names its tables uniquely (dropped when the backend is), and says
//! how FlowEngine declares one of its tables. A behaviour is one scenario function over a
//! `&Backend`, and each backend's test is one call.

use std::cell::RefCell;
use std::path::PathBuf;
use std::process::Command;

pub(crate) const PG_URL: &str = "postgresql://postgres@127.0.0.1:5432/test";
pub(crate) const MY_URL: &str = "mysql://root@127.0.0.1:3306/test";

/// A name no other test (or run) uses.
pub(crate) fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Postgres,
    MariaDb,
    Sqlite,
}

/// One database, its client and the tables a test made in it.
pub(crate) struct Backend {
    pub(crate) kind: Kind,
    /// SQLite's database file (its directory lives as long as the backend).
    sqlite: Option<(tempfile::TempDir, PathBuf)>,
    tables: RefCell<Vec<String>>,
}

impl Backend {
    pub(crate) fn postgres() -> Self {
        Self::new(Kind::Postgres)
    }

    pub(crate) fn mariadb() -> Self {
        Self::new(Kind::MariaDb)
    }

    pub(crate) fn sqlite() -> Self {
        Self::new(Kind::Sqlite)
    }

    fn new(kind: Kind) -> Self {
        let sqlite = (kind == Kind::Sqlite).then(|| {
            let dir = tempfile::tempdir().unwrap();
            let db = dir.path().join("test.db");
            (dir, db)
        });
        Self {
            kind,
            sqlite,
            tables: RefCell::default(),
        }
    }

    /// A new table name, dropped with the backend.
    pub(crate) fn table(&self, prefix: &str) -> String {
        let name = unique(prefix);
        self.tables.borrow_mut().push(name.clone());
        name
    }

    /// Run `sql` with the database's own client: rows as lines, columns separated by `|`.
    pub(crate) fn exec(&self, sql: &str) -> String {
        self.try_exec(sql)
            .unwrap_or_else(|e| panic!("{:?} client failed: {sql}\n{e}", self.kind))
    }

    /// [`Backend::exec`], with the client's error instead of a panic.
    pub(crate) fn try_exec(&self, sql: &str) -> Result<String, String> {
        let mut cmd = match self.kind {
            Kind::Postgres => {
                let mut c = Command::new("psql");
                c.args([
                    "-h",
                    "127.0.0.1",
                    "-U",
                    "postgres",
                    "-d",
                    "test",
                    "-X",
                    "-q",
                    "-A",
                    "-t",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-c",
                    sql,
                ]);
                c
            }
            Kind::MariaDb => {
                let mut c = Command::new("mariadb");
                c.args([
                    "-h",
                    "127.0.0.1",
                    "-P",
                    "3306",
                    "-u",
                    "root",
                    "test",
                    "-N",
                    "-B",
                    "-e",
                    sql,
                ]);
                c
            }
            Kind::Sqlite => {
                let mut c = Command::new("sqlite3");
                c.arg(&self.sqlite.as_ref().unwrap().1).arg(sql);
                c
            }
        };
        let o = cmd.output().map_err(|e| e.to_string())?;
        if !o.status.success() {
            return Err(String::from_utf8_lossy(&o.stderr).into_owned());
        }
        // MariaDB separates columns with tabs; binary columns print raw bytes (compare them
        // through HEX()).
        Ok(String::from_utf8_lossy(&o.stdout).trim().replace('\t', "|"))
    }

    /// `CREATE EXTERNAL TABLE name` over the database's `table`.
    pub(crate) fn external(&self, name: &str, table: &str) -> String {
        match self.kind {
            Kind::Postgres => format!(
                "CREATE EXTERNAL TABLE {name} STORED AS POSTGRES LOCATION '{table}' OPTIONS ('connection' '{PG_URL}')"
            ),
            Kind::MariaDb => format!(
                "CREATE EXTERNAL TABLE {name} STORED AS MYSQL LOCATION '{table}' OPTIONS ('connection' '{MY_URL}')"
            ),
            Kind::Sqlite => format!(
                "CREATE EXTERNAL TABLE {name} STORED AS SQLITE LOCATION '{table}' OPTIONS ('path' '{}')",
                self.sqlite.as_ref().unwrap().1.display()
            ),
        }
    }

    /// A query yielding one column `n` with 1..=count, in the database's own dialect.
    pub(crate) fn series(&self, count: u64) -> String {
        match self.kind {
            Kind::Postgres => format!("SELECT g AS n FROM generate_series(1, {count}) g"),
            // MariaDB's sequence engine generates the rows inside the server.
            Kind::MariaDb => format!("SELECT seq AS n FROM seq_1_to_{count}"),
            Kind::Sqlite => format!(
                "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < {count}) SELECT n FROM g"
            ),
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if self.kind == Kind::Sqlite {
            return; // the file goes with its directory
        }
        for t in self.tables.borrow().iter() {
            let _ = self.try_exec(&format!("DROP TABLE IF EXISTS {t}"));
        }
    }
}

/// Run SQL with the `sqlite3` client on the database file `db`.
pub(crate) fn sqlite_file(db: &std::path::Path, sql: &str) -> String {
    let o = Command::new("sqlite3")
        .arg(db)
        .arg(sql)
        .output()
        .expect("sqlite3 runs");
    assert!(
        o.status.success(),
        "sqlite3 failed: {sql}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}
