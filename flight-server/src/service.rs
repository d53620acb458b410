//! The Flight SQL service: arrow-flight's [`FlightSqlService`] dispatch, with FlowEngine's
//! planning, tickets, prepared statements, ingest and metadata behind it.

use std::pin::Pin;
use std::sync::Arc;

use arrow::array::RecordBatch;
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
    CommandStatementUpdate, DoPutPreparedStatementResult, SqlInfo, TicketStatementQuery,
};
use arrow_flight::{
    Action, ActionType, CancelFlightInfoRequest, CancelFlightInfoResult, CancelStatus,
    FlightDescriptor, FlightInfo, HandshakeRequest, HandshakeResponse, Ticket,
};
use futures::Stream;
use prost::Message;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::caller;
use crate::exec::{self, Kind};
use crate::handles::{PreparedHandle, decode_ticket};
use crate::metadata;
use crate::params::{decode_params, parameter_schema};
use crate::state::ServerState;
use crate::statements::{flight_schema, schema_bytes};

pub(crate) type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Action name of Flight's `CancelFlightInfo`.
const CANCEL_FLIGHT_INFO: &str = "CancelFlightInfo";
/// Action revoking a bearer token (its holder's or, for admins, anyone's).
const REVOKE_TOKEN: &str = "RevokeToken";
/// Cancel a running statement by its `query_id` (as `system.queries` and the logs show it).
const KILL_QUERY: &str = "KillQuery";

/// The Flight SQL handler. Cheap to clone.
#[derive(Clone)]
pub(crate) struct FlowSqlService {
    pub(crate) state: Arc<ServerState>,
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
        // Never reached: FlowFlightService answers handshakes (authentication) itself.
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
        let who = caller(&request)?;
        let planned = self.plan(&who, &query.query, &[], Kind::Query).await?;
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
        let who = caller(&request)?;
        let planned = self
            .plan(&who, &handle.sql, &handle.param_batches()?, Kind::Query)
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
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let who = caller(&request)?;
        let id = decode_ticket(&self.state.instance, &ticket.statement_handle)?;
        let (schema, output) = self.redeem(&who, &id)?;
        Ok(Response::new(self.stream(schema, output)))
    }

    async fn do_get_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        // Some clients use the command itself as the ticket.
        let who = caller(&request)?;
        let handle = PreparedHandle::decode_handle(&cmd.prepared_statement_handle)?;
        let planned = self
            .plan(&who, &handle.sql, &handle.param_batches()?, Kind::Query)
            .await?;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let schema = Arc::clone(&planned.schema);
        let output = exec::spawn_query(
            Arc::clone(&self.state),
            id,
            planned.sql,
            Kind::Query,
            (planned.engine, planned.plans),
            planned.audit,
        );
        Ok(Response::new(self.stream(schema, output)))
    }

    async fn do_get_catalogs(
        &self,
        _query: CommandGetCatalogs,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let who = caller(&request)?;
        let batch = metadata::catalogs(self.state.engine.context(), &self.visible(&who))?;
        Ok(Response::new(self.batch_stream(batch)))
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let who = caller(&request)?;
        let batch = metadata::db_schemas(self.state.engine.context(), query, &self.visible(&who))?;
        Ok(Response::new(self.batch_stream(batch)))
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let who = caller(&request)?;
        let batch =
            metadata::tables(self.state.engine.context(), query, &self.visible(&who)).await?;
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
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        if cmd.transaction_id.is_some() {
            return Err(Status::unimplemented("transactions are not supported"));
        }
        let who = caller(&request)?;
        let planned = self.plan(&who, &cmd.query, &[], Kind::Update).await?;
        self.execute_update(planned).await
    }

    async fn do_put_statement_ingest(
        &self,
        cmd: CommandStatementIngest,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let who = caller(&request)?;
        self.ingest(&who, cmd, request.into_inner()).await
    }

    async fn do_put_prepared_statement_query(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        let who = caller(&request)?;
        let handle = PreparedHandle::decode_handle(&cmd.prepared_statement_handle)?;
        let params = decode_params(request.into_inner()).await?;
        // Check the binding now, so a wrong type fails at bind time with a clear message.
        self.plan(&who, &handle.sql, &params, Kind::Query).await?;
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
        let who = caller(&request)?;
        let handle = PreparedHandle::decode_handle(&cmd.prepared_statement_handle)?;
        let mut params = decode_params(request.into_inner()).await?;
        if params.iter().all(|b| b.num_rows() == 0) {
            params = handle.param_batches()?;
        }
        let planned = self.plan(&who, &handle.sql, &params, Kind::Update).await?;
        self.execute_update(planned).await
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        if query.transaction_id.is_some() {
            return Err(Status::unimplemented("transactions are not supported"));
        }
        let who = caller(&request)?;
        let started = std::time::Instant::now();
        let (prepared, _, _) =
            self.prepare_checked(&who, &query.query)
                .await
                .inspect_err(|status| {
                    exec::record_failure(
                        &self.state,
                        &who,
                        Kind::Query,
                        &query.query,
                        status,
                        started.elapsed(),
                    )
                })?;
        let dataset = flight_schema(prepared.output_schema());
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
        request: Request<Action>,
    ) -> Result<ActionCancelQueryResult, Status> {
        let who = caller(&request)?;
        let info = FlightInfo::decode(&*query.info)
            .map_err(|_| Status::invalid_argument("CancelQuery: malformed FlightInfo"))?;
        let result = match self.cancel_info(&who, &info) {
            CancelStatus::Cancelled => 1,
            _ => 3,
        };
        Ok(ActionCancelQueryResult { result })
    }

    async fn do_action_fallback(
        &self,
        request: Request<Action>,
    ) -> Result<Response<<Self as FlightService>::DoActionStream>, Status> {
        let who = caller(&request)?;
        let action = request.into_inner();
        if action.r#type == REVOKE_TOKEN {
            let token = String::from_utf8(action.body.to_vec())
                .map_err(|_| Status::invalid_argument("RevokeToken: the body is the token"))?;
            let revoked = self.state.auth.revoke(token.trim(), &who.principal)?;
            let body: &[u8] = if revoked { b"revoked" } else { b"unknown" };
            return Ok(Response::new(Box::pin(futures::stream::iter(vec![Ok(
                arrow_flight::Result {
                    body: bytes::Bytes::from_static(body),
                },
            )]))));
        }
        if action.r#type == KILL_QUERY {
            let id = String::from_utf8(action.body.to_vec())
                .map_err(|_| Status::invalid_argument("KillQuery: the body is a query id"))?;
            let id = id.trim();
            let owned = |owner: &str| who.principal.is_admin() || owner == who.principal.name;
            if !self.state.running.cancel(id, owned) {
                return Err(Status::not_found(format!(
                    "no running query {id} of yours (admins may cancel any)"
                )));
            }
            tracing::info!(target: "flowengine::query", query_id = %id, by = %who.principal.name, "query killed");
            return Ok(Response::new(Box::pin(futures::stream::iter(vec![Ok(
                arrow_flight::Result {
                    body: bytes::Bytes::from_static(b"cancelled"),
                },
            )]))));
        }
        if action.r#type == CANCEL_FLIGHT_INFO {
            let req = CancelFlightInfoRequest::decode(&*action.body)
                .map_err(|_| Status::invalid_argument("CancelFlightInfo: malformed request"))?;
            let info = req
                .info
                .ok_or_else(|| Status::invalid_argument("CancelFlightInfo: no FlightInfo"))?;
            let result = CancelFlightInfoResult::new(self.cancel_info(&who, &info));
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
        Some(vec![
            Ok(ActionType {
                r#type: CANCEL_FLIGHT_INFO.into(),
                description:
                    "Cancel a query: request CancelFlightInfoRequest, result CancelFlightInfoResult"
                        .into(),
            }),
            Ok(ActionType {
                r#type: KILL_QUERY.into(),
                description: "Cancel a running query: body = its query_id (system.queries); \
                              admins may cancel any, others their own"
                    .into(),
            }),
            Ok(ActionType {
                r#type: REVOKE_TOKEN.into(),
                description:
                    "Revoke a bearer token: body = the token; result `revoked` or `unknown`".into(),
            }),
        ])
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}
