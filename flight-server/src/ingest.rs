//! Bulk ingest (`CommandStatementIngest`, ADBC's `adbc_ingest`): create a new in-memory table,
//! replace one, or append through the engine's staged, atomic writes.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow_flight::sql::server::PeekableFlightDataStream;
use arrow_flight::sql::{CommandStatementIngest, TableExistsOption, TableNotExistOption};
use datafusion::catalog::MemTable;
use datafusion::common::TableReference;
use futures::StreamExt;
use tonic::Status;

use crate::auth::Caller;
use crate::exec::Kind;
use crate::params::uploaded_batches;
use crate::service::FlowSqlService;
use engine::security::{ADMIN_ROLE, AccessError, AuditRecord, Principal, Privilege};

impl FlowSqlService {
    /// Ingest the uploaded batches into `cmd.table`; returns the rows added.
    pub(crate) async fn ingest(
        &self,
        who: &Caller,
        cmd: CommandStatementIngest,
        stream: PeekableFlightDataStream,
    ) -> Result<i64, Status> {
        if cmd.transaction_id.is_some() {
            return Err(Status::unimplemented("transactions are not supported"));
        }
        if cmd.table.is_empty() {
            return Err(Status::invalid_argument("ingest: no target table named"));
        }
        let mut decoded = uploaded_batches(stream);
        let mut batches = Vec::new();
        while let Some(batch) = decoded.next().await {
            batches.push(batch.map_err(|e| {
                Status::invalid_argument(format!("ingest: cannot decode the uploaded data: {e}"))
            })?);
        }
        let schema = match (decoded.schema(), batches.first()) {
            (Some(s), _) => Arc::clone(s),
            (None, Some(b)) => b.schema(),
            (None, None) => {
                return Err(Status::invalid_argument(
                    "ingest: the upload carried no schema and no data",
                ));
            }
        };
        let rows: i64 = batches.iter().map(|b| b.num_rows() as i64).sum();
        let table = match (&cmd.catalog, &cmd.schema) {
            (Some(c), Some(s)) => TableReference::full(c.as_str(), s.as_str(), cmd.table.as_str()),
            (None, Some(s)) => TableReference::partial(s.as_str(), cmd.table.as_str()),
            _ => TableReference::bare(cmd.table.as_str()),
        };
        let ctx = self.state.engine.context();
        // Fully qualified, so a tenant's upload lands in (and is checked against) its catalog.
        let table = {
            let state = ctx.state();
            let options = state.config().options();
            let catalog = who
                .principal
                .home_catalog()
                .unwrap_or(&options.catalog.default_catalog);
            let r = table.resolve(catalog, &options.catalog.default_schema);
            TableReference::full(r.catalog, r.schema, r.table)
        };
        let exists = ctx
            .table_exist(table.clone())
            .map_err(|e| crate::error::datafusion_status(&e))?;
        let options = cmd.table_definition_options.unwrap_or_default();
        let if_exists = TableExistsOption::try_from(options.if_exists)
            .unwrap_or(TableExistsOption::Unspecified);
        let if_not_exist = TableNotExistOption::try_from(options.if_not_exist)
            .unwrap_or(TableNotExistOption::Unspecified);
        let needed: &[Privilege] = match (exists, if_exists) {
            (false, _) => &[Privilege::Create],
            (true, TableExistsOption::Replace) => &[Privilege::Drop, Privilege::Create],
            (true, _) => &[Privilege::Insert],
        };
        self.authorize_ingest(who, &table, needed)?;
        let create = |batches: Vec<RecordBatch>| -> Result<(), Status> {
            let mem = MemTable::try_new(Arc::clone(&schema), vec![batches])
                .map_err(|e| Status::invalid_argument(format!("ingest: {e}")))?;
            ctx.register_table(table.clone(), Arc::new(mem))
                .map_err(|e| crate::error::datafusion_status(&e))?;
            Ok(())
        };
        match (exists, if_exists, if_not_exist) {
            (false, _, TableNotExistOption::Fail) => Err(Status::not_found(format!(
                "ingest: table {table} does not exist"
            ))),
            (false, _, _) => {
                create(batches)?;
                self.state.metrics.rows_ingested.inc_by(rows as u64);
                self.state.metrics.record(Kind::Ingest.as_str(), "ok", 0.0);
                Ok(rows)
            }
            (true, TableExistsOption::Replace, _) => {
                ctx.deregister_table(table.clone())
                    .map_err(|e| crate::error::datafusion_status(&e))?;
                create(batches)?;
                self.state.metrics.rows_ingested.inc_by(rows as u64);
                self.state.metrics.record(Kind::Ingest.as_str(), "ok", 0.0);
                Ok(rows)
            }
            (true, TableExistsOption::Append, _) => {
                // Through the engine, so file-backed tables get staged, atomic writes.
                let staging = format!("__flowengine_ingest_{}", uuid::Uuid::new_v4().simple());
                let mem = MemTable::try_new(Arc::clone(&schema), vec![batches])
                    .map_err(|e| Status::invalid_argument(format!("ingest: {e}")))?;
                ctx.register_table(staging.as_str(), Arc::new(mem))
                    .map_err(|e| crate::error::datafusion_status(&e))?;
                let sql = format!(
                    "INSERT INTO {} SELECT * FROM {staging}",
                    quote_table(&table)
                );
                // INSERT was authorized above; the statement reads the private staging table,
                // which no grant names, so it runs with the server's own rights.
                let internal = Caller {
                    principal: Principal {
                        name: who.principal.name.clone(),
                        roles: vec![ADMIN_ROLE.into()],
                        attributes: who.principal.attributes.clone(),
                        tenant: None,
                    },
                    client: who.client.clone(),
                    session: who.session.clone(),
                };
                let result = async {
                    let planned = self.plan(&internal, &sql, &[], Kind::Ingest).await?;
                    self.execute_update(planned).await
                }
                .await;
                let _ = ctx.deregister_table(staging.as_str());
                let n = result?;
                self.state.metrics.rows_ingested.inc_by(n as u64);
                Ok(n)
            }
            (true, _, _) => Err(Status::already_exists(format!(
                "ingest: table {table} already exists (ask for append or replace)"
            ))),
        }
    }
}

impl FlowSqlService {
    /// Check (and audit) the privileges a bulk ingest needs on its target.
    fn authorize_ingest(
        &self,
        who: &Caller,
        table: &TableReference,
        needed: &[Privilege],
    ) -> Result<(), Status> {
        let state = self.state.engine.context().state();
        let options = state.config().options();
        let (catalog, schema) = (
            &options.catalog.default_catalog,
            &options.catalog.default_schema,
        );
        let resolved = table.clone().resolve(catalog, schema);
        let mut record = AuditRecord {
            event: "ingest",
            user: who.principal.name.clone(),
            client: who.client.clone(),
            writes: vec![resolved.to_string()],
            decision: "allow",
            ..Default::default()
        };
        let policy = self.state.policy();
        let denied = if policy.read_only() {
            Some(AccessError::ReadOnly {
                what: format!("ingest into {resolved}"),
            })
        } else {
            needed
                .iter()
                .find(|p| !policy.allows(&who.principal, **p, &resolved, catalog, schema))
                .map(|p| AccessError::Denied {
                    user: who.principal.name.clone(),
                    privilege: *p,
                    table: resolved.to_string(),
                })
        };
        if let Some(e) = denied {
            record.decision = "deny";
            record.reason = Some(e.to_string());
            self.state.audit.record(record);
            return Err(Status::permission_denied(e.to_string()));
        }
        self.state.audit.record(record);
        Ok(())
    }
}

fn quote_table(t: &TableReference) -> String {
    let q = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    match t {
        TableReference::Bare { table } => q(table),
        TableReference::Partial { schema, table } => format!("{}.{}", q(schema), q(table)),
        TableReference::Full {
            catalog,
            schema,
            table,
        } => format!("{}.{}.{}", q(catalog), q(schema), q(table)),
    }
}
