//! The Flight SQL service: arrow-flight's [`FlightSqlService`] dispatch, with FlowEngine's
//! planning, tickets, prepared statements, ingest and metadata behind it.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::ipc::writer::IpcWriteOptions;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionBeginSavepointRequest, ActionBeginSavepointResult, ActionBeginTransactionRequest,
    ActionBeginTransactionResult, ActionCancelQueryRequest, ActionCancelQueryResult,
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, ActionEndSavepointRequest, ActionEndTransactionRequest,
    Any, CommandGetCatalogs, CommandGetCrossReference, CommandGetDbSchemas, CommandGetExportedKeys,
    CommandGetImportedKeys, CommandGetPrimaryKeys, CommandGetSqlInfo, CommandGetTableTypes,
    CommandGetTables, CommandGetXdbcTypeInfo, CommandPreparedStatementQuery,
    CommandPreparedStatementUpdate, CommandStatementIngest, CommandStatementQuery,
    CommandStatementUpdate, DoPutPreparedStatementResult, ProstMessageExt, SqlInfo,
    TableExistsOption, TableNotExistOption, TicketStatementQuery,
};
use arrow_flight::{
    Action, ActionType, CancelFlightInfoRequest, CancelFlightInfoResult, CancelStatus,
    FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse, IpcMessage,
    SchemaAsIpc, Ticket,
};
use datafusion::catalog::MemTable;
use datafusion::common::{ScalarValue, TableReference};
use datafusion::logical_expr::{LogicalPlan, Statement as PlanStatement};
use engine::error::SourceLocation;
use engine::pipeline::{PipelineStatement, Prepared, StatementClass};
use futures::{FutureExt, Stream, StreamExt, TryStreamExt};
use prost::Message;
use tonic::{Request, Response, Status, Streaming};

use crate::error::engine_status;
use crate::exec::{self, Kind, QueryOutput, panic_status};
use crate::handles::{PreparedHandle, decode_ticket, encode_ticket};
use crate::metadata;
use crate::state::{ServerState, TicketEntry};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Action name of Flight's `CancelFlightInfo`.
const CANCEL_FLIGHT_INFO: &str = "CancelFlightInfo";

/// The Flight SQL handler. Cheap to clone.
#[derive(Clone)]
pub(crate) struct FlowSqlService {
    pub(crate) state: Arc<ServerState>,
}

/// A planned statement ready to be ticketed or executed.
pub(crate) struct Planned {
    pub(crate) sql: String,
    pub(crate) plans: Vec<Prepared>,
    pub(crate) schema: SchemaRef,
}

impl FlowSqlService {
    /// Plan `sql`, binding each parameter row (one plan per row). A statement that fails here
    /// is counted and logged like one that fails while executing.
    pub(crate) async fn plan(
        &self,
        sql: &str,
        params: &[RecordBatch],
        kind: Kind,
    ) -> Result<Planned, Status> {
        let started = std::time::Instant::now();
        let planned = self.plan_inner(sql, params).await;
        if let Err(status) = &planned {
            exec::record_failure(&self.state, kind, sql, status, started.elapsed());
        }
        planned
    }

    async fn plan_inner(&self, sql: &str, params: &[RecordBatch]) -> Result<Planned, Status> {
        let statement = self.statement(sql);
        let prepared = AssertUnwindSafe(self.state.engine.prepare(&statement))
            .catch_unwind()
            .await
            .map_err(panic_status)?
            .map_err(engine_status)?;
        self.check_allowed(&prepared)?;
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
        let schema = flight_schema(Arc::new(plans[0].logical.schema().as_arrow().clone()));
        Ok(Planned {
            sql: sql.to_string(),
            plans,
            schema,
        })
    }

    /// A client statement for the engine, `?` placeholders numbered `$1`, `$2`, ...
    fn statement(&self, sql: &str) -> PipelineStatement {
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
    fn check_allowed(&self, prepared: &Prepared) -> Result<(), Status> {
        let variable = match &prepared.logical {
            LogicalPlan::Statement(PlanStatement::SetVariable(s)) => &s.variable,
            LogicalPlan::Statement(PlanStatement::ResetVariable(s)) => &s.variable,
            _ => return Ok(()),
        };
        let key = variable.to_ascii_lowercase();
        let allowed = &self.state.config.set_allowlist;
        if allowed.iter().any(|k| k.eq_ignore_ascii_case(&key)) {
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
                    planned.plans.clone(),
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

    fn metadata_info(
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

    fn stream(
        &self,
        schema: SchemaRef,
        output: QueryOutput,
    ) -> BoxStream<arrow_flight::FlightData> {
        let batches = futures::stream::unfold(output.rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|item| (item.map_err(FlightError::from), rx))
        });
        let encoded = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .with_max_flight_data_size(self.state.config.flight_data_size.as_u64() as usize)
            .build(batches)
            .map_err(Status::from);
        Box::pin(encoded)
    }

    fn batch_stream(&self, batch: RecordBatch) -> BoxStream<arrow_flight::FlightData> {
        let schema = batch.schema();
        let encoded = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .with_max_flight_data_size(self.state.config.flight_data_size.as_u64() as usize)
            .build(futures::stream::once(async move { Ok(batch) }))
            .map_err(Status::from);
        Box::pin(encoded)
    }

    /// Execute a planned statement now and return the number of rows it affected.
    async fn execute_update(&self, planned: Planned) -> Result<i64, Status> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let output = exec::spawn_query(
            Arc::clone(&self.state),
            id,
            planned.sql,
            Kind::Update,
            planned.plans,
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
    fn redeem(&self, id: &str) -> Result<(SchemaRef, QueryOutput), Status> {
        let entry = self.state.tickets.take(id).ok_or_else(|| {
            Status::not_found(
                "ticket expired, was already used or cancelled; request a new one with GetFlightInfo",
            )
        })?;
        let output = match (entry.started, entry.results) {
            (Some(output), _) => output,
            (None, Some(batches)) => exec::ready_output(id.to_string(), batches),
            (None, None) => exec::spawn_query(
                Arc::clone(&self.state),
                id.to_string(),
                entry.sql,
                Kind::Query,
                entry.plans,
            ),
        };
        Ok((entry.schema, output))
    }

    /// Cancel the query a flight info's ticket names.
    fn cancel_info(&self, info: &FlightInfo) -> CancelStatus {
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
            let removed = self.state.tickets.remove(&id);
            let cancelled = self.state.running.cancel(&id);
            if removed || cancelled {
                status = CancelStatus::Cancelled;
            }
        }
        status
    }

    async fn ingest(
        &self,
        cmd: CommandStatementIngest,
        stream: PeekableFlightDataStream,
    ) -> Result<i64, Status> {
        if cmd.transaction_id.is_some() {
            return Err(Status::unimplemented("transactions are not supported"));
        }
        if cmd.table.is_empty() {
            return Err(Status::invalid_argument("ingest: no target table named"));
        }
        let mut decoded = arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(
            stream
                .try_filter(|m| futures::future::ready(!m.data_header.is_empty()))
                .map_err(FlightError::from),
        );
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
        let exists = ctx
            .table_exist(table.clone())
            .map_err(|e| crate::error::datafusion_status(&e))?;
        let options = cmd.table_definition_options.unwrap_or_default();
        let if_exists = TableExistsOption::try_from(options.if_exists)
            .unwrap_or(TableExistsOption::Unspecified);
        let if_not_exist = TableNotExistOption::try_from(options.if_not_exist)
            .unwrap_or(TableNotExistOption::Unspecified);
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
                let result = async {
                    let planned = self.plan(&sql, &[], Kind::Ingest).await?;
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

/// `$1`, `$2`, ... in order, with the type DataFusion inferred (None when it could not).
fn parameter_types(plan: &LogicalPlan) -> Result<Vec<(String, Option<DataType>)>, Status> {
    let types: HashMap<String, Option<DataType>> = plan
        .get_parameter_types()
        .map_err(|e| Status::invalid_argument(format!("parameters: {e}")))?;
    let mut params: Vec<_> = types.into_iter().collect();
    params.sort_by_key(|(name, _)| {
        name.trim_start_matches('$')
            .parse::<usize>()
            .unwrap_or(usize::MAX)
    });
    Ok(params)
}

fn parameter_schema(plan: &LogicalPlan) -> Result<Schema, Status> {
    Ok(Schema::new(
        parameter_types(plan)?
            .into_iter()
            .map(|(name, t)| Field::new(name, t.unwrap_or(DataType::Null), true))
            .collect::<Vec<_>>(),
    ))
}

/// Parameter rows of the bound batches: one `Vec` of column arrays per row.
fn param_rows(batches: &[RecordBatch]) -> Result<Vec<Vec<ScalarValue>>, Status> {
    let mut rows = Vec::new();
    for batch in batches {
        for row in 0..batch.num_rows() {
            let values = batch
                .columns()
                .iter()
                .map(|col: &ArrayRef| {
                    ScalarValue::try_from_array(col, row)
                        .map_err(|e| Status::invalid_argument(format!("parameter value: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            rows.push(values);
        }
    }
    Ok(rows)
}

/// Cast one row of client values to the types the statement expects.
fn bind_row(
    types: &[(String, Option<DataType>)],
    row: Vec<ScalarValue>,
) -> Result<Vec<ScalarValue>, Status> {
    if row.len() != types.len() {
        return Err(Status::invalid_argument(format!(
            "the statement has {} parameter(s) but {} value(s) were bound",
            types.len(),
            row.len()
        )));
    }
    row.into_iter()
        .zip(types)
        .map(|(value, (name, expected))| match expected {
            Some(t) if value.data_type() != *t => value.cast_to(t).map_err(|_| {
                Status::invalid_argument(format!(
                    "parameter {name}: cannot use {} value {value} where {t} is expected",
                    value.data_type()
                ))
            }),
            _ => Ok(value),
        })
        .collect()
}

async fn decode_params(stream: PeekableFlightDataStream) -> Result<Vec<RecordBatch>, Status> {
    // The first message may carry only the command (no Arrow data) when nothing is bound.
    let decoded = arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(
        stream
            .try_filter(|m| futures::future::ready(!m.data_header.is_empty()))
            .map_err(FlightError::from),
    );
    decoded
        .try_collect()
        .await
        .map_err(|e| Status::invalid_argument(format!("cannot decode parameters: {e}")))
}

#[tonic::async_trait]
impl FlightSqlService for FlowSqlService {
    type FlightService = FlowSqlService;

    async fn do_handshake(
        &self,
        _request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<
        Response<Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>>,
        Status,
    > {
        // No authentication yet: accept every handshake.
        let response = HandshakeResponse {
            protocol_version: 0,
            payload: Default::default(),
        };
        Ok(Response::new(Box::pin(futures::stream::iter(vec![Ok(
            response,
        )]))))
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        if query.transaction_id.is_some() {
            return Err(Status::unimplemented("transactions are not supported"));
        }
        let planned = self.plan(&query.query, &[], Kind::Query).await?;
        let (_, info) = self
            .ticket_info(planned, request.into_inner(), None)
            .await?;
        Ok(Response::new(info))
    }

    async fn get_flight_info_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let handle = PreparedHandle::decode_handle(&cmd.prepared_statement_handle)?;
        let planned = self
            .plan(&handle.sql, &handle.param_batches()?, Kind::Query)
            .await?;
        let (_, info) = self
            .ticket_info(planned, request.into_inner(), None)
            .await?;
        Ok(Response::new(info))
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.metadata_info(query, &metadata::catalogs_schema(), request.into_inner())
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        self.metadata_info(query, &schema, request.into_inner())
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        self.metadata_info(query, &schema, request.into_inner())
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.metadata_info(query, &metadata::table_types_schema(), request.into_inner())
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder(&self.state.sql_info).schema();
        self.metadata_info(query, &schema, request.into_inner())
    }

    async fn get_flight_info_primary_keys(
        &self,
        query: CommandGetPrimaryKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.metadata_info(
            query,
            &metadata::primary_keys_schema(),
            request.into_inner(),
        )
    }

    async fn get_flight_info_exported_keys(
        &self,
        query: CommandGetExportedKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.metadata_info(
            query,
            &metadata::foreign_keys_schema(),
            request.into_inner(),
        )
    }

    async fn get_flight_info_imported_keys(
        &self,
        query: CommandGetImportedKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.metadata_info(
            query,
            &metadata::foreign_keys_schema(),
            request.into_inner(),
        )
    }

    async fn get_flight_info_cross_reference(
        &self,
        query: CommandGetCrossReference,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.metadata_info(
            query,
            &metadata::foreign_keys_schema(),
            request.into_inner(),
        )
    }

    async fn get_flight_info_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder(&self.state.xdbc_info).schema();
        self.metadata_info(query, &schema, request.into_inner())
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let id = decode_ticket(&self.state.instance, &ticket.statement_handle)?;
        let (schema, output) = self.redeem(&id)?;
        Ok(Response::new(self.stream(schema, output)))
    }

    async fn do_get_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        // Some clients use the command itself as the ticket.
        let handle = PreparedHandle::decode_handle(&cmd.prepared_statement_handle)?;
        let planned = self
            .plan(&handle.sql, &handle.param_batches()?, Kind::Query)
            .await?;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let schema = Arc::clone(&planned.schema);
        let output = exec::spawn_query(
            Arc::clone(&self.state),
            id,
            planned.sql,
            Kind::Query,
            planned.plans,
        );
        Ok(Response::new(self.stream(schema, output)))
    }

    async fn do_get_catalogs(
        &self,
        _query: CommandGetCatalogs,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let batch = metadata::catalogs(self.state.engine.context())?;
        Ok(Response::new(self.batch_stream(batch)))
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let batch = metadata::db_schemas(self.state.engine.context(), query)?;
        Ok(Response::new(self.batch_stream(batch)))
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let batch = metadata::tables(self.state.engine.context(), query).await?;
        Ok(Response::new(self.batch_stream(batch)))
    }

    async fn do_get_table_types(
        &self,
        _query: CommandGetTableTypes,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        Ok(Response::new(self.batch_stream(metadata::table_types()?)))
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let batch = query
            .into_builder(&self.state.sql_info)
            .build()
            .map_err(|e| Status::internal(format!("building SqlInfo: {e}")))?;
        Ok(Response::new(self.batch_stream(batch)))
    }

    async fn do_get_primary_keys(
        &self,
        _query: CommandGetPrimaryKeys,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let batch = RecordBatch::new_empty(metadata::primary_keys_schema());
        Ok(Response::new(self.batch_stream(batch)))
    }

    async fn do_get_exported_keys(
        &self,
        _query: CommandGetExportedKeys,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let batch = RecordBatch::new_empty(metadata::foreign_keys_schema());
        Ok(Response::new(self.batch_stream(batch)))
    }

    async fn do_get_imported_keys(
        &self,
        _query: CommandGetImportedKeys,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let batch = RecordBatch::new_empty(metadata::foreign_keys_schema());
        Ok(Response::new(self.batch_stream(batch)))
    }

    async fn do_get_cross_reference(
        &self,
        _query: CommandGetCrossReference,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let batch = RecordBatch::new_empty(metadata::foreign_keys_schema());
        Ok(Response::new(self.batch_stream(batch)))
    }

    async fn do_get_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let batch = query
            .into_builder(&self.state.xdbc_info)
            .build()
            .map_err(|e| Status::internal(format!("building type info: {e}")))?;
        Ok(Response::new(self.batch_stream(batch)))
    }

    async fn do_get_fallback(
        &self,
        _request: Request<Ticket>,
        message: Any,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        Err(Status::invalid_argument(format!(
            "unknown ticket type {}",
            message.type_url
        )))
    }

    async fn do_put_statement_update(
        &self,
        cmd: CommandStatementUpdate,
        _request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        if cmd.transaction_id.is_some() {
            return Err(Status::unimplemented("transactions are not supported"));
        }
        let planned = self.plan(&cmd.query, &[], Kind::Update).await?;
        self.execute_update(planned).await
    }

    async fn do_put_statement_ingest(
        &self,
        cmd: CommandStatementIngest,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        self.ingest(cmd, request.into_inner()).await
    }

    async fn do_put_prepared_statement_query(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        let handle = PreparedHandle::decode_handle(&cmd.prepared_statement_handle)?;
        let params = decode_params(request.into_inner()).await?;
        // Check the binding now, so a wrong type fails at bind time with a clear message.
        self.plan(&handle.sql, &params, Kind::Query).await?;
        let handle = handle.with_params(&params)?;
        Ok(DoPutPreparedStatementResult {
            prepared_statement_handle: Some(handle.encode_handle().into()),
        })
    }

    async fn do_put_prepared_statement_update(
        &self,
        cmd: CommandPreparedStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let handle = PreparedHandle::decode_handle(&cmd.prepared_statement_handle)?;
        let mut params = decode_params(request.into_inner()).await?;
        if params.iter().all(|b| b.num_rows() == 0) {
            params = handle.param_batches()?;
        }
        let planned = self.plan(&handle.sql, &params, Kind::Update).await?;
        self.execute_update(planned).await
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        _request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        if query.transaction_id.is_some() {
            return Err(Status::unimplemented("transactions are not supported"));
        }
        let statement = self.statement(&query.query);
        let started = std::time::Instant::now();
        let prepared = AssertUnwindSafe(self.state.engine.prepare(&statement))
            .catch_unwind()
            .await
            .map_err(panic_status)
            .and_then(|r| r.map_err(engine_status))
            .and_then(|p| self.check_allowed(&p).map(|()| p))
            .inspect_err(|status| {
                exec::record_failure(
                    &self.state,
                    Kind::Query,
                    &query.query,
                    status,
                    started.elapsed(),
                )
            })?;
        let dataset = flight_schema(Arc::new(prepared.logical.schema().as_arrow().clone()));
        let params = parameter_schema(&prepared.logical)?;
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: PreparedHandle::new(query.query).encode_handle().into(),
            dataset_schema: schema_bytes(&dataset)?,
            parameter_schema: schema_bytes(&params)?,
        })
    }

    async fn do_action_close_prepared_statement(
        &self,
        _query: ActionClosePreparedStatementRequest,
        _request: Request<Action>,
    ) -> Result<(), Status> {
        // Handles are stateless: nothing to free.
        Ok(())
    }

    async fn do_action_begin_transaction(
        &self,
        _query: ActionBeginTransactionRequest,
        _request: Request<Action>,
    ) -> Result<ActionBeginTransactionResult, Status> {
        Err(Status::unimplemented(
            "transactions are not supported (SqlInfo FLIGHT_SQL_SERVER_TRANSACTION = NONE)",
        ))
    }

    async fn do_action_end_transaction(
        &self,
        _query: ActionEndTransactionRequest,
        _request: Request<Action>,
    ) -> Result<(), Status> {
        Err(Status::unimplemented("transactions are not supported"))
    }

    async fn do_action_begin_savepoint(
        &self,
        _query: ActionBeginSavepointRequest,
        _request: Request<Action>,
    ) -> Result<ActionBeginSavepointResult, Status> {
        Err(Status::unimplemented("savepoints are not supported"))
    }

    async fn do_action_end_savepoint(
        &self,
        _query: ActionEndSavepointRequest,
        _request: Request<Action>,
    ) -> Result<(), Status> {
        Err(Status::unimplemented("savepoints are not supported"))
    }

    async fn do_action_cancel_query(
        &self,
        query: ActionCancelQueryRequest,
        _request: Request<Action>,
    ) -> Result<ActionCancelQueryResult, Status> {
        let info = FlightInfo::decode(&*query.info)
            .map_err(|_| Status::invalid_argument("CancelQuery: malformed FlightInfo"))?;
        let result = match self.cancel_info(&info) {
            CancelStatus::Cancelled => 1,
            _ => 3,
        };
        Ok(ActionCancelQueryResult { result })
    }

    async fn do_action_fallback(
        &self,
        request: Request<Action>,
    ) -> Result<Response<<Self as FlightService>::DoActionStream>, Status> {
        let action = request.into_inner();
        if action.r#type == CANCEL_FLIGHT_INFO {
            let req = CancelFlightInfoRequest::decode(&*action.body)
                .map_err(|_| Status::invalid_argument("CancelFlightInfo: malformed request"))?;
            let info = req
                .info
                .ok_or_else(|| Status::invalid_argument("CancelFlightInfo: no FlightInfo"))?;
            let result = CancelFlightInfoResult::new(self.cancel_info(&info));
            let body = result.encode_to_vec();
            return Ok(Response::new(Box::pin(futures::stream::iter(vec![Ok(
                arrow_flight::Result { body: body.into() },
            )]))));
        }
        Err(Status::unimplemented(format!(
            "unknown action {:?}",
            action.r#type
        )))
    }

    async fn list_custom_actions(&self) -> Option<Vec<Result<ActionType, Status>>> {
        Some(vec![Ok(ActionType {
            r#type: CANCEL_FLIGHT_INFO.into(),
            description:
                "Cancel a query: request CancelFlightInfoRequest, result CancelFlightInfoResult"
                    .into(),
        })])
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}
