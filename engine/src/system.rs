//! The `system` schema: the server's own tables, queryable over SQL like any other (and so over
//! Flight). Access is restricted by the policy: admins, or roles whose grant names `system`.
//!
//! * `system.audit`: the audit log (`security.audit_file`), read fresh on every scan so the
//!   latest records show; a record being written (a line without its newline yet) is skipped.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::json::ReaderBuilder;
use datafusion::catalog::{MemorySchemaProvider, SchemaProvider, Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;

use crate::security::SYSTEM_SCHEMA;

/// The `system` schema of the context's default catalog, created when missing.
pub fn system_schema(ctx: &SessionContext) -> Result<Arc<dyn SchemaProvider>> {
    let state = ctx.state();
    let catalog_name = &state.config().options().catalog.default_catalog;
    let catalog = ctx.catalog(catalog_name).ok_or_else(|| {
        DataFusionError::Plan(format!("default catalog `{catalog_name}` does not exist"))
    })?;
    if let Some(schema) = catalog.schema(SYSTEM_SCHEMA) {
        return Ok(schema);
    }
    let schema: Arc<dyn SchemaProvider> = Arc::new(MemorySchemaProvider::new());
    catalog.register_schema(SYSTEM_SCHEMA, Arc::clone(&schema))?;
    Ok(schema)
}

/// Register `system.audit` over the audit log at `path`.
pub fn register_audit_table(ctx: &SessionContext, path: PathBuf) -> Result<()> {
    system_schema(ctx)?.register_table("audit".into(), Arc::new(AuditTable::new(path)))?;
    Ok(())
}

/// The audit log as a table; columns are the fields of [`crate::security::AuditRecord`].
#[derive(Debug)]
pub struct AuditTable {
    path: PathBuf,
    schema: SchemaRef,
}

impl AuditTable {
    pub fn new(path: PathBuf) -> Self {
        let text = |name: &str| Field::new(name, DataType::Utf8, true);
        let list = |name: &str| {
            Field::new(
                name,
                DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true))),
                true,
            )
        };
        let schema = Schema::new(vec![
            Field::new(
                "time",
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                false,
            ),
            Field::new("event", DataType::Utf8, false),
            Field::new("user", DataType::Utf8, false),
            text("tenant"),
            text("client"),
            text("query_id"),
            text("statement"),
            list("reads"),
            list("writes"),
            Field::new("decision", DataType::Utf8, false),
            text("reason"),
            Field::new("rows", DataType::UInt64, true),
            Field::new("bytes", DataType::UInt64, true),
            Field::new("duration_ms", DataType::UInt64, true),
            text("error"),
        ]);
        Self {
            path,
            schema: Arc::new(schema),
        }
    }

    /// Every complete record in the file.
    async fn read(&self) -> Result<Vec<RecordBatch>> {
        let bytes = match tokio::fs::read(&self.path).await {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(DataFusionError::External(
                    format!("reading the audit log {}: {e}", self.path.display()).into(),
                ));
            }
        };
        let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        let reader = ReaderBuilder::new(Arc::clone(&self.schema))
            .build(std::io::Cursor::new(&bytes[..complete]))?;
        reader
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| {
                DataFusionError::External(
                    format!("the audit log {} is not valid: {e}", self.path.display()).into(),
                )
            })
    }
}

#[async_trait]
impl TableProvider for AuditTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let batches = self.read().await?;
        Ok(MemorySourceConfig::try_new_exec(
            &[batches],
            Arc::clone(&self.schema),
            projection.cloned(),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn audit_records_are_rows_and_a_partial_last_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        std::fs::write(
            &path,
            concat!(
                r#"{"time":"2026-11-28T10:00:00.000Z","event":"login","user":"ana","client":"127.0.0.1:5","reads":[],"writes":[],"decision":"allow"}"#,
                "\n",
                r#"{"time":"2026-11-28T10:00:01.500Z","event":"statement","user":"bob","client":"x","statement":"SELECT 1","reads":["datafusion.public.t"],"writes":[],"decision":"deny","reason":"no grant","duration_ms":3}"#,
                "\n",
                r#"{"time":"2026-11-28T10:00:02.000Z","event":"stat"#,
            ),
        )
        .unwrap();
        let ctx = SessionContext::new();
        register_audit_table(&ctx, path).unwrap();
        let batches = ctx
            .sql("SELECT user, decision, reads[1] AS r, duration_ms, CAST(time AS VARCHAR) AS t FROM system.audit ORDER BY time")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let text = datafusion::arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string();
        assert!(text.contains("| ana  | allow    |"), "{text}");
        assert!(
            text.contains("| bob  | deny     | datafusion.public.t | 3"),
            "{text}"
        );
        assert!(text.contains("2026-11-28T10:00:01.500"), "{text}");
        assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 2);
    }
}
