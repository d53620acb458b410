//! Catalog metadata answers: catalogs, schemas, tables (with their Arrow schemas), table types,
//! and the key commands (FlowEngine declares no keys: empty results of the right shape).

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::array::StringArray;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow_flight::sql::metadata::GetCatalogsBuilder;
use arrow_flight::sql::{CommandGetDbSchemas, CommandGetTables};
use datafusion::common::ResolvedTableReference;
use datafusion::datasource::TableType;
use datafusion::prelude::SessionContext;
use engine::security::{Policy, Principal};
use tonic::Status;

/// Table type names as JDBC knows them.
pub(crate) const TABLE_TYPES: &[&str] = &["TABLE", "VIEW", "LOCAL TEMPORARY"];

pub(crate) fn table_type_name(t: TableType) -> &'static str {
    match t {
        TableType::Base => "TABLE",
        TableType::View => "VIEW",
        TableType::Temporary => "LOCAL TEMPORARY",
    }
}

fn arrow_status(e: impl std::fmt::Display) -> Status {
    Status::internal(format!("building a metadata result: {e}"))
}

/// What one caller may see: tables they hold any privilege on, and the schemas and catalogs
/// holding such tables. Admins see everything.
pub(crate) struct Visible<'a> {
    pub(crate) policy: std::sync::Arc<Policy>,
    pub(crate) who: &'a Principal,
    pub(crate) default_catalog: String,
    pub(crate) default_schema: String,
}

impl Visible<'_> {
    fn table(&self, catalog: &str, schema: &str, table: &str) -> bool {
        let t = ResolvedTableReference {
            catalog: catalog.into(),
            schema: schema.into(),
            table: table.into(),
        };
        self.policy
            .may_see(self.who, &t, &self.default_catalog, &self.default_schema)
    }

    fn schema(&self, ctx: &SessionContext, catalog: &str, schema: &str) -> bool {
        if self.who.is_admin() {
            return true;
        }
        let Some(s) = ctx.catalog(catalog).and_then(|c| c.schema(schema)) else {
            return false;
        };
        s.table_names()
            .iter()
            .any(|t| self.table(catalog, schema, t))
    }

    fn catalog(&self, ctx: &SessionContext, catalog: &str) -> bool {
        if self.who.is_admin() || self.who.home_catalog() == Some(catalog) {
            return true;
        }
        ctx.catalog(catalog).is_some_and(|c| {
            c.schema_names()
                .iter()
                .any(|s| self.schema(ctx, catalog, s))
        })
    }
}

pub(crate) fn catalogs(ctx: &SessionContext, visible: &Visible<'_>) -> Result<RecordBatch, Status> {
    let mut b = GetCatalogsBuilder::new();
    let mut names = ctx.catalog_names();
    names.sort();
    for name in names {
        if visible.catalog(ctx, &name) {
            b.append(name);
        }
    }
    b.build().map_err(arrow_status)
}

pub(crate) fn catalogs_schema() -> SchemaRef {
    GetCatalogsBuilder::new().schema()
}

pub(crate) fn db_schemas(
    ctx: &SessionContext,
    cmd: CommandGetDbSchemas,
    visible: &Visible<'_>,
) -> Result<RecordBatch, Status> {
    let mut b = cmd.into_builder();
    let mut catalogs = ctx.catalog_names();
    catalogs.sort();
    for catalog_name in catalogs {
        let Some(catalog) = ctx.catalog(&catalog_name) else {
            continue;
        };
        let mut schemas = catalog.schema_names();
        schemas.sort();
        for schema in schemas {
            if visible.schema(ctx, &catalog_name, &schema) {
                b.append(&catalog_name, schema);
            }
        }
    }
    b.build().map_err(arrow_status)
}

pub(crate) async fn tables(
    ctx: &SessionContext,
    cmd: CommandGetTables,
    visible: &Visible<'_>,
) -> Result<RecordBatch, Status> {
    let catalog_filter = cmd.catalog.clone();
    let mut b = cmd.into_builder();
    let mut catalogs = ctx.catalog_names();
    catalogs.sort();
    for catalog_name in catalogs {
        if catalog_filter.as_ref().is_some_and(|c| c != &catalog_name) {
            continue;
        }
        let Some(catalog) = ctx.catalog(&catalog_name) else {
            continue;
        };
        let mut schemas = catalog.schema_names();
        schemas.sort();
        for schema_name in schemas {
            let Some(schema) = catalog.schema(&schema_name) else {
                continue;
            };
            let mut names = schema.table_names();
            names.sort();
            for table_name in names {
                if !visible.table(&catalog_name, &schema_name, &table_name) {
                    continue;
                }
                // A provider that fails to load (e.g. an unreachable remote table) is listed
                // without failing the whole call.
                let Ok(Some(table)) = schema.table(&table_name).await else {
                    continue;
                };
                b.append(
                    &catalog_name,
                    &schema_name,
                    &table_name,
                    table_type_name(table.table_type()),
                    table.schema().as_ref(),
                )
                .map_err(arrow_status)?;
            }
        }
    }
    b.build().map_err(arrow_status)
}

pub(crate) fn table_types() -> Result<RecordBatch, Status> {
    RecordBatch::try_new(
        table_types_schema(),
        vec![Arc::new(StringArray::from(TABLE_TYPES.to_vec()))],
    )
    .map_err(arrow_status)
}

pub(crate) fn table_types_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new(
        "table_type",
        DataType::Utf8,
        false,
    )]))
}

/// Schema of `GetPrimaryKeys` results.
pub(crate) fn primary_keys_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("catalog_name", DataType::Utf8, true),
        Field::new("db_schema_name", DataType::Utf8, true),
        Field::new("table_name", DataType::Utf8, false),
        Field::new("column_name", DataType::Utf8, false),
        Field::new("key_name", DataType::Utf8, true),
        Field::new("key_sequence", DataType::Int32, false),
    ]))
}

/// Schema of `GetExportedKeys`, `GetImportedKeys` and `GetCrossReference` results.
pub(crate) fn foreign_keys_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("pk_catalog_name", DataType::Utf8, true),
        Field::new("pk_db_schema_name", DataType::Utf8, true),
        Field::new("pk_table_name", DataType::Utf8, false),
        Field::new("pk_column_name", DataType::Utf8, false),
        Field::new("fk_catalog_name", DataType::Utf8, true),
        Field::new("fk_db_schema_name", DataType::Utf8, true),
        Field::new("fk_table_name", DataType::Utf8, false),
        Field::new("fk_column_name", DataType::Utf8, false),
        Field::new("key_sequence", DataType::Int32, false),
        Field::new("fk_key_name", DataType::Utf8, true),
        Field::new("pk_key_name", DataType::Utf8, true),
        Field::new("update_rule", DataType::UInt8, false),
        Field::new("delete_rule", DataType::UInt8, false),
    ]))
}
