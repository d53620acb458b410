//! `STORED AS SQLITE`: tables of a SQLite file through `datafusion-table-providers`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::TableProvider;
use datafusion::common::{Constraints, TableReference};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::CreateExternalTable;
use datafusion_table_providers::sql::db_connection_pool::DbConnectionPool;
use datafusion_table_providers::sql::db_connection_pool::Mode;
use datafusion_table_providers::sqlite::pool::SqliteConnectionPool;
use datafusion_table_providers::sqlite::sql_table::SQLiteTable;
use datafusion_table_providers::sqlite::write::SqliteTableWriter;
use datafusion_table_providers::sqlite::{
    DynSqliteConnectionPool, Sqlite, SqliteTableFactory, SqliteTableProviderFactory,
};

use super::options::{self as opt, Conflict};
use super::plain::{CastingWriter, sqlite_storage_type};
use super::{Backend, create_declared, external, federated};
use crate::options::TableOptions;

/// SQLite connections, one per database file, kept by the providers crate's factory.
#[derive(Debug)]
pub(crate) struct SqliteBackend {
    instances: SqliteTableProviderFactory,
}

impl Default for SqliteBackend {
    fn default() -> Self {
        Self {
            instances: SqliteTableProviderFactory::new()
                .with_batch_insert_use_prepared_statements(true),
        }
    }
}

/// A SQLite table's options.
pub(crate) struct SqliteSettings {
    path: String,
    busy_ms: u64,
    on_conflict: Option<Conflict>,
}

#[async_trait]
impl Backend for SqliteBackend {
    type Settings = SqliteSettings;

    fn display_name(&self) -> &'static str {
        "SQLite"
    }

    fn settings(&self, options: &mut TableOptions<'_>) -> Result<SqliteSettings> {
        let path = options
            .expanded("path")?
            .ok_or_else(|| options.error("option `path` (the SQLite database file) is required"))?;
        Ok(SqliteSettings {
            path,
            busy_ms: opt::number(options, "busy_timeout_ms")?.unwrap_or(5000),
            on_conflict: opt::on_conflict(options)?,
        })
    }

    async fn open(
        &self,
        settings: &SqliteSettings,
        table: TableReference,
        declared: Option<&CreateExternalTable>,
    ) -> Result<Arc<dyn TableProvider>> {
        let path = settings.path.clone();
        let busy_ms = settings.busy_ms;
        let on_conflict = settings.on_conflict.as_ref().map(|c| c.rule.clone());
        let file = std::path::Path::new(&path);
        if !file.exists() {
            if declared.is_none() {
                return Err(DataFusionError::Plan(format!(
                    "database file {path} does not exist (declare the columns to create the table)"
                )));
            }
            if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
                tokio::fs::create_dir_all(dir).await.map_err(|e| {
                    DataFusionError::Plan(format!("cannot create {}: {e}", dir.display()))
                })?;
            }
        }
        // Separate handles for reading and writing, as the providers crate does: SQLite
        // serialises writers itself, and a scan must not wait behind a load.
        let open = || {
            self.instances.get_or_init_instance(
                path.as_str(),
                Mode::File,
                Duration::from_millis(busy_ms),
            )
        };
        let read_pool = Arc::new(open().await.map_err(external)?);
        let factory = SqliteTableFactory::new(Arc::clone(&read_pool));
        match factory.table_provider(table.clone()).await {
            Ok(inferred) => {
                let schema = declared_schema(&read_pool, &table, &inferred.schema()).await?;
                let dyn_pool: Arc<DynSqliteConnectionPool> = read_pool;
                let read = Arc::new(SQLiteTable::new_with_schema(
                    &dyn_pool,
                    Arc::clone(&schema),
                    table.clone(),
                ));
                let read: Arc<dyn TableProvider> =
                    Arc::new(read.create_federated_table_provider()?);
                let write_pool = Arc::new(open().await.map_err(external)?);
                let sqlite = Sqlite::new(table, schema, write_pool, Constraints::default())
                    .with_batch_insert_use_prepared_statements(true);
                let writer = SqliteTableWriter::create(Arc::clone(&read), sqlite, on_conflict);
                let writer = CastingWriter::wrap(writer, sqlite_storage_type);
                Ok(federated(&read, writer))
            }
            Err(e) => match declared {
                Some(cmd) if table.schema().is_none() => {
                    let mut params: std::collections::HashMap<String, String> =
                        [("file".to_string(), path)].into_iter().collect();
                    params.insert("busy_timeout".into(), format!("{busy_ms}ms"));
                    // The providers crate's factory defaults to an in-memory database.
                    params.insert("mode".into(), "file".into());
                    if let Some(c) = &settings.on_conflict {
                        params.insert("on_conflict".into(), c.text.clone());
                    }
                    create_declared(&self.instances, cmd, table.clone(), params, e).await?;
                    self.open(settings, table, None).await
                }
                _ => Err(external(e)),
            },
        }
    }
}

/// The table's schema from its declared column types (`PRAGMA table_info`), so an empty table
/// has columns and a NULL in the first row does not decide a column's type. Columns declared
/// without a type keep the type inferred from the data.
async fn declared_schema(
    pool: &Arc<SqliteConnectionPool>,
    table: &TableReference,
    inferred: &SchemaRef,
) -> Result<SchemaRef> {
    let mut conn = pool.connect().await.map_err(external)?;
    let sqlite_conn = Sqlite::sqlite_conn(&mut conn).map_err(external)?;
    let quoted = table.table().replace('"', "\"\"");
    let sql = match table.schema() {
        Some(schema) => format!(
            "PRAGMA \"{}\".table_info(\"{quoted}\")",
            schema.replace('"', "\"\"")
        ),
        None => format!("PRAGMA table_info(\"{quoted}\")"),
    };
    let columns: Vec<(String, String, bool)> = sqlite_conn
        .conn
        .call(move |c| {
            let e = |e: &dyn std::fmt::Display| e.to_string();
            let mut stmt = c.prepare(&sql).map_err(|x| e(&x))?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, i64>(3)? != 0 || r.get::<_, i64>(5)? != 0,
                    ))
                })
                .map_err(|x| e(&x))?;
            rows.collect::<Result<Vec<_>, _>>().map_err(|x| e(&x))
        })
        .await
        .map_err(|e| {
            DataFusionError::Execution(format!("reading the columns of {table}: {e:?}"))
        })?;
    if columns.is_empty() {
        return Ok(Arc::clone(inferred));
    }
    let fields: Vec<Field> = columns
        .into_iter()
        .map(|(name, decl, not_null)| {
            let data_type = sqlite_type(&decl).unwrap_or_else(|| {
                inferred
                    .field_with_name(&name)
                    .map(|f| f.data_type().clone())
                    .unwrap_or(DataType::Utf8)
            });
            Field::new(name, data_type, !not_null)
        })
        .collect();
    Ok(Arc::new(Schema::new(fields)))
}

/// Arrow type for a SQLite declared type, after SQLite's affinity rules (section 3.1 of
/// <https://sqlite.org/datatype3.html>), with booleans recognised.
fn sqlite_type(declared: &str) -> Option<DataType> {
    let d = declared.trim().to_ascii_uppercase();
    if d.is_empty() {
        return None;
    }
    // SQLite keeps dates and times as text and decimals as REAL (or integer): they are read as
    // such (CAST them in SQL); the providers crate cannot decode them into typed columns.
    Some(if d.contains("INT") {
        DataType::Int64
    } else if d.contains("CHAR") || d.contains("CLOB") || d.contains("TEXT") {
        DataType::Utf8
    } else if d.contains("BLOB") {
        DataType::Binary
    } else if d.contains("REAL")
        || d.contains("FLOA")
        || d.contains("DOUB")
        || d.starts_with("DECIMAL")
        || d.starts_with("NUMERIC")
    {
        DataType::Float64
    } else if d.starts_with("BOOL") {
        DataType::Boolean
    } else {
        // DATE, DATETIME, TIMESTAMP, TIME and anything else: text.
        DataType::Utf8
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_types_follow_sqlite_affinity() {
        assert_eq!(sqlite_type("INTEGER"), Some(DataType::Int64));
        assert_eq!(sqlite_type("bigint"), Some(DataType::Int64));
        assert_eq!(sqlite_type("VARCHAR(20)"), Some(DataType::Utf8));
        assert_eq!(sqlite_type("decimal(10,2)"), Some(DataType::Float64));
        assert_eq!(sqlite_type("NUMERIC"), Some(DataType::Float64));
        assert_eq!(sqlite_type("date"), Some(DataType::Utf8));
        assert_eq!(sqlite_type("DATETIME"), Some(DataType::Utf8));
        assert_eq!(sqlite_type("blob"), Some(DataType::Binary));
        assert_eq!(sqlite_type("double precision"), Some(DataType::Float64));
        assert_eq!(sqlite_type("boolean"), Some(DataType::Boolean));
        assert_eq!(sqlite_type(""), None);
    }
}
