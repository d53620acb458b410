//! The `system` schema: the engine's and the server's own tables, queryable over SQL like any
//! other (and so over Flight). Access is restricted by the policy: admins, or roles whose grant
//! names `system`.
//!
//! One extension point: a [`SystemRows`] produces a table's rows when it is scanned (so every
//! query sees the current state), and [`register_system_table`] puts it in the schema. Tables:
//!
//! * `system.settings` (every session): FlowEngine's effective configuration (secrets redacted)
//!   and the session's DataFusion settings, one row each;
//! * `system.audit` (`serve` with `security.audit_file`): the audit log, read fresh on every scan
//!   so the latest records show; a record being written (a line without its newline yet) is
//!   skipped;
//! * the server adds `system.queries`, `system.sessions` and `system.metrics`, the state store
//!   `system.runs`, `system.steps`, `system.watermarks` and `system.quality_results`.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{RecordBatch, StringBuilder};
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

/// Produces the rows of one system table, computed afresh for every scan.
#[async_trait]
pub trait SystemRows: std::fmt::Debug + Send + Sync {
    fn schema(&self) -> SchemaRef;
    /// The table's rows now, as seen by `session` (whose settings and extensions it may read).
    async fn rows(&self, session: &dyn Session) -> Result<Vec<RecordBatch>>;
}

/// A [`SystemRows`] as a table provider.
#[derive(Debug)]
pub struct SystemTable(Arc<dyn SystemRows>);

impl SystemTable {
    pub fn new(rows: Arc<dyn SystemRows>) -> Self {
        Self(rows)
    }
}

#[async_trait]
impl TableProvider for SystemTable {
    fn schema(&self) -> SchemaRef {
        self.0.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        session: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let batches = self.0.rows(session).await?;
        Ok(MemorySourceConfig::try_new_exec(
            &[batches],
            self.0.schema(),
            projection.cloned(),
        )?)
    }
}

/// Register `system.<name>` (replacing a table of that name).
pub fn register_system_table(
    ctx: &SessionContext,
    name: &str,
    rows: Arc<dyn SystemRows>,
) -> Result<()> {
    let schema = system_schema(ctx)?;
    schema.deregister_table(name)?;
    schema.register_table(name.to_string(), Arc::new(SystemTable::new(rows)))?;
    Ok(())
}

/// Register `system.audit` over the audit log at `path`.
pub fn register_audit_table(ctx: &SessionContext, path: PathBuf) -> Result<()> {
    register_system_table(ctx, "audit", Arc::new(AuditTable::new(path)))
}

/// `system.settings`: one row per setting in effect, FlowEngine's own (`source` = `flowengine`,
/// from the configuration the session was built with, secrets redacted) and DataFusion's
/// (`source` = `datafusion`, as the querying session has them, `SET` included).
#[derive(Debug)]
pub struct SettingsTable {
    schema: SchemaRef,
}

impl Default for SettingsTable {
    fn default() -> Self {
        Self {
            schema: Arc::new(Schema::new(vec![
                Field::new("name", DataType::Utf8, false),
                Field::new("value", DataType::Utf8, true),
                Field::new("source", DataType::Utf8, false),
                Field::new("description", DataType::Utf8, false),
            ])),
        }
    }
}

#[async_trait]
impl SystemRows for SettingsTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    async fn rows(&self, session: &dyn Session) -> Result<Vec<RecordBatch>> {
        let mut name = StringBuilder::new();
        let mut value = StringBuilder::new();
        let mut source = StringBuilder::new();
        let mut description = StringBuilder::new();
        if let Some(config) = session.config().get_extension::<crate::EngineConfig>() {
            for (key, v) in config.effective_settings() {
                name.append_value(key);
                value.append_value(v);
                source.append_value("flowengine");
                description.append_value("");
            }
        }
        for entry in session.config_options().entries() {
            name.append_value(&entry.key);
            value.append_option(entry.value.as_deref());
            source.append_value("datafusion");
            description.append_value(entry.description);
        }
        let batch = RecordBatch::try_new(
            Arc::clone(&self.schema),
            vec![
                Arc::new(name.finish()),
                Arc::new(value.finish()),
                Arc::new(source.finish()),
                Arc::new(description.finish()),
            ],
        )?;
        Ok(vec![batch])
    }
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
            text("trace_id"),
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
impl SystemRows for AuditTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    async fn rows(&self, _session: &dyn Session) -> Result<Vec<RecordBatch>> {
        self.read().await
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

    #[tokio::test]
    async fn settings_show_flowengine_and_session_values_without_secrets() {
        let config = crate::EngineConfig {
            batch_size: Some(4096),
            state_url: Some("postgresql://u:${secret:PW}@db/x".into()),
            ..Default::default()
        };
        let engine = crate::Engine::try_new(&config, &crate::ConnectorRegistry::default()).unwrap();
        let ctx = engine.context();
        ctx.sql("SET datafusion.execution.time_zone = 'Europe/Paris'")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let batches = ctx
            .sql(
                "SELECT name, value, source FROM system.settings WHERE name IN \
                 ('batch_size', 'state_url', 'datafusion.execution.time_zone') ORDER BY name",
            )
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let text = datafusion::arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string();
        assert!(text.contains("| batch_size"), "{text}");
        assert!(text.contains("| 4096"), "{text}");
        assert!(text.contains("Europe/Paris"), "{text}");
        assert!(text.contains("postgresql://u:***@db/x"), "{text}");
        assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 3);
    }
}
