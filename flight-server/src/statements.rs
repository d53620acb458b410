//! Client statements on the server: planning through the engine (with `?` numbering, the `SET`
//! allow-list and parameter binding), holding planned statements behind tickets, running
//! updates, and streaming results as Flight data.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};
use arrow::ipc::writer::IpcWriteOptions;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::sql::{Any, ProstMessageExt, TicketStatementQuery};
use arrow_flight::{
    CancelStatus, FlightDescriptor, FlightEndpoint, FlightInfo, IpcMessage, SchemaAsIpc, Ticket,
};
use datafusion::logical_expr::{LogicalPlan, Statement as PlanStatement};
use engine::error::SourceLocation;
use engine::pipeline::{PipelineStatement, Prepared, StatementClass};
use engine::security::AuditRecord;
use futures::{FutureExt, TryStreamExt};
use prost::Message;
use tonic::{Response, Status};

use crate::auth::Caller;
use crate::error::engine_status;
use crate::exec::{self, Kind, QueryOutput, panic_status};
use crate::handles::{decode_ticket, encode_ticket};
use crate::params::{bind_row, param_rows, parameter_types};
use crate::service::{BoxStream, FlowSqlService};
use crate::state::TicketEntry;

/// A planned statement ready to be ticketed or executed.
pub(crate) struct Planned {
    pub(crate) sql: String,
    pub(crate) plans: Vec<Prepared>,
    pub(crate) schema: SchemaRef,
    /// Who planned it (only they may fetch the result).
    pub(crate) owner: String,
    /// The allow record, completed with rows and duration when the statement ends.
    pub(crate) audit: AuditRecord,
    /// The caller's session view of the engine: it plans and runs there.
    pub(crate) engine: Arc<engine::Engine>,
}

impl FlowSqlService {
    /// Plan `sql`, binding each parameter row (one plan per row). A statement that fails here
    /// is counted and logged like one that fails while executing.
    pub(crate) async fn plan(
        &self,
        who: &Caller,
        sql: &str,
        params: &[RecordBatch],
        kind: Kind,
    ) -> Result<Planned, Status> {
        let started = std::time::Instant::now();
        let planned = self.plan_inner(who, sql, params).await;
        if let Err(status) = &planned {
            exec::record_failure(&self.state, who, kind, sql, status, started.elapsed());
        }
        planned
    }

    /// Plan one client statement through the engine (panics isolated), checking `SET` and
    /// authorizing the plan for the caller (which adds their row filters and masks). Every
    /// decision is audited.
    pub(crate) async fn prepare_checked(
        &self,
        who: &Caller,
        sql: &str,
    ) -> Result<(Prepared, AuditRecord, Arc<engine::Engine>), Status> {
        let statement = self.statement(sql);
        let tenant = who.principal.tenant.as_ref().map(|t| t.tenant.clone());
        let engine = self.state.session_engine(who)?;
        let mut prepared = AssertUnwindSafe(engine.prepare(&statement))
            .catch_unwind()
            .await
            .map_err(panic_status)?
            .map_err(engine_status)?;
        let mut record = AuditRecord {
            event: "statement",
            user: who.principal.name.clone(),
            client: who.client.clone(),
            statement: Some(sql.to_string()),
            decision: "allow",
            tenant,
            ..Default::default()
        };
        if let Err(status) = self.check_allowed(&prepared) {
            record.decision = "deny";
            record.reason = Some(status.message().to_string());
            self.state.audit.record(record);
            return Err(status);
        }
        self.set_in_session(who, &engine, &mut prepared)?;
        let state = engine.context().state();
        let authorized = self
            .state
            .policy()
            .authorize(&who.principal, prepared.logical.clone(), &state, sql)
            .await;
        match authorized {
            Ok(a) => {
                prepared.logical = a.plan;
                record.reads = a.reads.into_iter().collect();
                record.writes = a.writes.into_iter().collect();
                Ok((prepared, record, engine))
            }
            Err(e) => {
                record.decision = "deny";
                record.reason = Some(e.to_string());
                self.state.audit.record(record);
                Err(Status::permission_denied(e.to_string()))
            }
        }
    }

    pub(crate) async fn plan_inner(
        &self,
        who: &Caller,
        sql: &str,
        params: &[RecordBatch],
    ) -> Result<Planned, Status> {
        let (prepared, audit, engine) = self.prepare_checked(who, sql).await?;
        let rows = param_rows(params)?;
        let plans = if rows.is_empty() {
            let declared = parameter_types(&prepared.logical)?;
            if !declared.is_empty() {
                return Err(Status::invalid_argument(format!(
                    "the statement has {} parameter(s) but none were bound",
                    declared.len()
                )));
            }
            vec![prepared]
        } else {
            let types = parameter_types(&prepared.logical)?;
            let mut plans = Vec::with_capacity(rows.len());
            for row in rows {
                let values = bind_row(&types, row)?;
                let mut bound = prepared.clone();
                bound.logical = prepared
                    .logical
                    .clone()
                    .with_param_values(values)
                    .map_err(|e| Status::invalid_argument(format!("binding parameters: {e}")))?;
                plans.push(bound);
            }
            plans
        };
        let schema = flight_schema(plans[0].output_schema());
        Ok(Planned {
            sql: sql.to_string(),
            plans,
            schema,
            owner: who.principal.name.clone(),
            audit,
            engine,
        })
    }

    /// A `SET`/`RESET` changes the caller's session only: the value is checked on a copy of
    /// the session's settings, recorded for the session, and the statement itself becomes a
    /// no-op (it never runs on the shared engine).
    fn set_in_session(
        &self,
        who: &Caller,
        engine: &engine::Engine,
        prepared: &mut Prepared,
    ) -> Result<(), Status> {
        let (name, value) = match &prepared.logical {
            LogicalPlan::Statement(PlanStatement::SetVariable(s)) => {
                (s.variable.clone(), Some(s.value.clone()))
            }
            LogicalPlan::Statement(PlanStatement::ResetVariable(s)) => (s.variable.clone(), None),
            _ => return Ok(()),
        };
        if let Some(value) = &value {
            engine
                .for_session(&engine::SessionScope {
                    settings: vec![(name.clone(), value.clone())],
                    ..Default::default()
                })
                .map_err(|e| Status::invalid_argument(format!("SET {name}: {e}")))?;
        }
        self.state
            .sessions
            .apply(&who.session, &name, value.as_deref());
        prepared.logical = LogicalPlan::EmptyRelation(datafusion::logical_expr::EmptyRelation {
            produce_one_row: false,
            schema: Arc::new(datafusion::common::DFSchema::empty()),
        });
        Ok(())
    }

    /// A client statement for the engine, `?` placeholders numbered `$1`, `$2`, ...
    pub(crate) fn statement(&self, sql: &str) -> PipelineStatement {
        let dialect = self
            .state
            .engine
            .context()
            .state()
            .config()
            .options()
            .sql_parser
            .dialect
            .to_string();
        PipelineStatement {
            index: 1,
            location: SourceLocation {
                file: "<flight>".into(),
                line: 1,
                column: 1,
            },
            sql: engine::placeholders::number_question_marks(sql, &dialect),
        }
    }

    /// `SET`/`RESET` are limited to the configured allow-list, so a client cannot raise its
    /// own memory limit or change settings the operator fixed.
    pub(crate) fn check_allowed(&self, prepared: &Prepared) -> Result<(), Status> {
        if let engine::pipeline::Action::Check(check) = &prepared.action
            && check.dead_letter.is_some()
        {
            return Err(Status::permission_denied(format!(
                "check {}: DEAD_LETTER writes a file on the server's host, which clients cannot; \
                 write the failing rows with COPY to an allowed location instead",
                check.name
            )));
        }
        let variable = match &prepared.logical {
            LogicalPlan::Statement(PlanStatement::SetVariable(s)) => &s.variable,
            LogicalPlan::Statement(PlanStatement::ResetVariable(s)) => &s.variable,
            _ => return Ok(()),
        };
        let key = variable.to_ascii_lowercase();
        let live = self.state.live();
        let allowed = &live.server.set_allowlist;
        // An entry ending in `*` allows every key it prefixes (`flowengine.optimizer.*`).
        let permits = |k: &String| match k.strip_suffix('*') {
            Some(prefix) => key.starts_with(&prefix.to_ascii_lowercase()),
            None => k.eq_ignore_ascii_case(&key),
        };
        if allowed.iter().any(permits) {
            return Ok(());
        }
        Err(Status::permission_denied(format!(
            "SET {key} is not allowed on this server; allowed keys: {}",
            if allowed.is_empty() {
                "none".to_string()
            } else {
                allowed.join(", ")
            }
        )))
    }

    /// Hold a planned statement for a later `DoGet`; the flight info names its ticket.
    /// Statements with side effects run now (see [`TicketEntry::results`]).
    pub(crate) async fn ticket_info(
        &self,
        planned: Planned,
        descriptor: FlightDescriptor,
        started: Option<QueryOutput>,
    ) -> Result<(String, FlightInfo), Status> {
        let schema = Arc::clone(&planned.schema);
        let id = match started {
            Some(output) => {
                let id = output.id.clone();
                self.state
                    .tickets
                    .insert_with_id(id.clone(), entry(planned, Some(output), None));
                id
            }
            None if planned
                .plans
                .iter()
                .any(|p| p.class != StatementClass::Query) =>
            {
                let id = uuid::Uuid::new_v4().simple().to_string();
                let output = exec::spawn_query(
                    Arc::clone(&self.state),
                    id.clone(),
                    planned.sql.clone(),
                    Kind::Update,
                    (Arc::clone(&planned.engine), planned.plans.clone()),
                    planned.audit.clone(),
                );
                let batches = exec::collect(output).await?;
                self.state
                    .tickets
                    .insert_with_id(id.clone(), entry(planned, None, Some(batches)));
                id
            }
            None => self.state.tickets.insert(entry(planned, None, None)),
        };
        let info = self.info_for(&id, &schema, descriptor)?;
        Ok((id, info))
    }

    /// The flight info for held query `id`.
    pub(crate) fn info_for(
        &self,
        id: &str,
        schema: &Schema,
        descriptor: FlightDescriptor,
    ) -> Result<FlightInfo, Status> {
        let ticket = TicketStatementQuery {
            statement_handle: encode_ticket(&self.state.instance, id).into(),
        };
        Ok(FlightInfo::new()
            .try_with_schema(schema)
            .map_err(|e| Status::internal(format!("encoding schema: {e}")))?
            .with_endpoint(
                FlightEndpoint::new().with_ticket(Ticket::new(ticket.as_any().encode_to_vec())),
            )
            .with_descriptor(descriptor)
            .with_total_records(-1)
            .with_total_bytes(-1))
    }

    pub(crate) fn metadata_info(
        &self,
        command: impl ProstMessageExt,
        schema: &Schema,
        descriptor: FlightDescriptor,
    ) -> Result<Response<FlightInfo>, Status> {
        // The ticket is the command itself, so DoGet decodes it through FlightSqlService's
        // command dispatch.
        let ticket = Ticket::new(command.as_any().encode_to_vec());
        let info = FlightInfo::new()
            .try_with_schema(schema)
            .map_err(|e| Status::internal(format!("encoding schema: {e}")))?
            .with_endpoint(FlightEndpoint::new().with_ticket(ticket))
            .with_descriptor(descriptor);
        Ok(Response::new(info))
    }

    pub(crate) fn stream(
        &self,
        schema: SchemaRef,
        output: QueryOutput,
    ) -> BoxStream<arrow_flight::FlightData> {
        let batches = futures::stream::unfold(output.rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|item| (item.map_err(FlightError::from), rx))
        });
        // Batches arrive split to `flight_data_size` by what they send (`split.rs`); the
        // encoder's own split counts the shared buffers of slices, so it only guards the limit.
        let encoded = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .with_max_flight_data_size(self.state.config.max_message_size.as_u64() as usize / 2)
            .build(batches)
            .map_err(Status::from);
        Box::pin(encoded)
    }

    pub(crate) fn batch_stream(&self, batch: RecordBatch) -> BoxStream<arrow_flight::FlightData> {
        let schema = batch.schema();
        let encoded = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .with_max_flight_data_size(self.state.config.flight_data_size.as_u64() as usize)
            .build(futures::stream::once(async move { Ok(batch) }))
            .map_err(Status::from);
        Box::pin(encoded)
    }

    /// Execute a planned statement now and return the number of rows it affected.
    pub(crate) async fn execute_update(&self, planned: Planned) -> Result<i64, Status> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let output = exec::spawn_query(
            Arc::clone(&self.state),
            id,
            planned.sql,
            Kind::Update,
            (planned.engine, planned.plans),
            planned.audit,
        );
        let batches = exec::collect(output).await?;
        // Writes return one `count` batch per executed plan (one per parameter row); other
        // statements (a SELECT sent as an update, as JDBC does) count their rows.
        let rows: u64 = batches
            .iter()
            .map(|b| {
                engine::pipeline::runner::rows_affected(std::slice::from_ref(b))
                    .unwrap_or(b.num_rows() as u64)
            })
            .sum();
        Ok(rows as i64)
    }

    /// Start the query behind a ticket (or take the one a poll started).
    pub(crate) fn redeem(
        &self,
        who: &Caller,
        id: &str,
    ) -> Result<(SchemaRef, QueryOutput), Status> {
        let gone = || {
            Status::not_found(
                "ticket expired, was already used or cancelled; request a new one with GetFlightInfo",
            )
        };
        // Another user's ticket is left in place and reported as unknown.
        let mine = self
            .state
            .tickets
            .with(id, |e| e.owner == who.principal.name)
            .ok_or_else(gone)?;
        if !mine {
            return Err(gone());
        }
        let entry = self.state.tickets.take(id).ok_or_else(gone)?;
        let output = match (entry.started, entry.results) {
            (Some(output), _) => output,
            (None, Some(batches)) => exec::ready_output(id.to_string(), batches),
            (None, None) => exec::spawn_query(
                Arc::clone(&self.state),
                id.to_string(),
                entry.sql,
                Kind::Query,
                (entry.engine, entry.plans),
                entry.audit,
            ),
        };
        Ok((entry.schema, output))
    }

    /// What `who` may see in metadata answers.
    pub(crate) fn visible<'a>(&'a self, who: &'a Caller) -> crate::metadata::Visible<'a> {
        let state = self.state.engine.context().state();
        let options = state.config().options();
        crate::metadata::Visible {
            policy: self.state.policy(),
            who: &who.principal,
            default_catalog: who
                .principal
                .home_catalog()
                .unwrap_or(&options.catalog.default_catalog)
                .to_string(),
            default_schema: options.catalog.default_schema.clone(),
        }
    }

    /// Cancel the query a flight info's ticket names (the caller's own, or any for admins).
    pub(crate) fn cancel_info(&self, who: &Caller, info: &FlightInfo) -> CancelStatus {
        let mut status = CancelStatus::NotCancellable;
        for endpoint in &info.endpoint {
            let Some(ticket) = &endpoint.ticket else {
                continue;
            };
            let Ok(any) = Any::decode(&*ticket.ticket) else {
                continue;
            };
            let Ok(Some(t)) = any.unpack::<TicketStatementQuery>() else {
                continue;
            };
            let Ok(id) = decode_ticket(&self.state.instance, &t.statement_handle) else {
                continue;
            };
            let owned = |owner: &str| who.principal.is_admin() || owner == who.principal.name;
            let removed = self
                .state
                .tickets
                .with(&id, |e| owned(&e.owner))
                .unwrap_or(false)
                && self.state.tickets.remove(&id);
            let cancelled = self.state.running.cancel(&id, owned);
            if removed || cancelled {
                status = CancelStatus::Cancelled;
            }
        }
        status
    }
}

fn entry(
    planned: Planned,
    started: Option<QueryOutput>,
    results: Option<Vec<RecordBatch>>,
) -> TicketEntry {
    TicketEntry {
        sql: planned.sql,
        plans: planned.plans,
        schema: planned.schema,
        expires: std::time::Instant::now(),
        started,
        results,
        owner: planned.owner,
        audit: planned.audit,
        engine: planned.engine,
    }
}

/// The schema as Flight clients will receive it (dictionaries hydrated), so `GetFlightInfo`
/// announces exactly what `DoGet` streams.
pub(crate) fn flight_schema(schema: SchemaRef) -> SchemaRef {
    let encoder = FlightDataEncoderBuilder::new()
        .with_schema(Arc::clone(&schema))
        .build(futures::stream::empty());
    encoder.known_schema().unwrap_or(schema)
}

pub(crate) fn schema_bytes(schema: &Schema) -> Result<bytes::Bytes, Status> {
    let message: IpcMessage = SchemaAsIpc::new(schema, &IpcWriteOptions::default())
        .try_into()
        .map_err(|e: arrow::error::ArrowError| Status::internal(format!("encoding schema: {e}")))?;
    Ok(message.0)
}
