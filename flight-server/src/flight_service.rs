//! The gRPC `FlightService` the server exposes: arrow-flight's Flight SQL dispatch for every
//! call, plus `PollFlightInfo` (which that dispatch does not route) for long-running queries.
//!
//! Poll protocol: `PollFlightInfo` with a Flight SQL query command starts the query at once and
//! returns a `PollInfo` whose `flight_descriptor` is a poll token; the client polls with that
//! descriptor (reading `progress`) until the `PollInfo` has no descriptor, then fetches the
//! ticket in `info` with `DoGet`. No single call blocks while the query runs.

use std::sync::Arc;

use arrow_flight::flight_service_server::FlightService;
use arrow_flight::sql::{Any, Command};
use arrow_flight::{
    Action, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo, HandshakeRequest,
    HandshakeResponse, PollInfo, SchemaResult, Ticket,
};
use prost::Message;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::{self, Caller};
use crate::exec::{self, Kind};
use crate::handles::PreparedHandle;
use crate::service::FlowSqlService;

const POLL_MAGIC: &str = "FEPOLL1";

/// The service registered with tonic.
pub(crate) struct FlowFlightService {
    pub(crate) sql: FlowSqlService,
}

type Inner = FlowSqlService;

impl FlowFlightService {
    /// Authenticate a call and attach the [`Caller`] its handler reads.
    async fn authed<T>(&self, mut request: Request<T>) -> Result<Request<T>, Status> {
        let client = auth::client_of(&request);
        let auth = &self.sql.state.auth;
        // Mutual TLS: without an authorization header, a verified client certificate whose
        // subject common name is a configured user authenticates as that user.
        let certificate = (auth.enabled() && request.metadata().get("authorization").is_none())
            .then(|| request.peer_certs())
            .flatten();
        let principal = match certificate {
            Some(certs) => certs
                .first()
                .and_then(crate::tls::user_of_certificate)
                .and_then(|name| auth.certificate_user(&name))
                .ok_or_else(|| {
                    Status::unauthenticated(
                        "the client certificate's common name is not a configured user",
                    )
                })?,
            None => auth.authenticate(request.metadata(), &client).await?,
        };
        self.sql.state.activity.seen(
            &principal.name,
            principal.tenant.as_ref().map(|t| t.tenant.as_str()),
            &client,
        );
        let session = auth::session_of(request.metadata(), &client);
        request.extensions_mut().insert(Caller {
            principal,
            client,
            session,
        });
        Ok(request)
    }

    fn poll_descriptor(&self, id: &str) -> FlightDescriptor {
        FlightDescriptor::new_cmd(format!("{POLL_MAGIC}:{}:{id}", self.sql.state.instance))
    }

    /// The id of a poll token issued by this instance, if `cmd` is one.
    fn poll_id(&self, cmd: &[u8]) -> Option<Result<String, Status>> {
        let text = std::str::from_utf8(cmd).ok()?;
        let rest = text.strip_prefix(POLL_MAGIC)?.strip_prefix(':')?;
        let (instance, id) = rest.split_once(':')?;
        if instance != self.sql.state.instance {
            return Some(Err(Status::not_found(
                "poll token was issued by another server instance; resubmit the query",
            )));
        }
        Some(Ok(id.to_string()))
    }

    /// Status of a submitted query.
    fn poll_status(&self, id: &str, info: FlightInfo) -> Result<PollInfo, Status> {
        let progress = self
            .sql
            .state
            .tickets
            .with(id, |e| {
                e.started.as_ref().map(|o| {
                    (
                        o.progress.ready.load(std::sync::atomic::Ordering::Acquire),
                        o.progress.fraction(),
                    )
                })
            })
            .ok_or_else(|| {
                Status::not_found("query expired, was fetched or cancelled; resubmit it")
            })?;
        let (ready, fraction) = progress.unwrap_or((true, Some(1.0)));
        if ready {
            return Ok(PollInfo {
                info: Some(info),
                flight_descriptor: None,
                progress: Some(1.0),
                expiration_time: None,
            });
        }
        Ok(PollInfo {
            info: Some(FlightInfo {
                endpoint: Vec::new(),
                ..info
            }),
            flight_descriptor: Some(self.poll_descriptor(id)),
            progress: fraction,
            expiration_time: None,
        })
    }
}

#[tonic::async_trait]
impl FlightService for FlowFlightService {
    type HandshakeStream = <Inner as FlightService>::HandshakeStream;
    type ListFlightsStream = <Inner as FlightService>::ListFlightsStream;
    type DoGetStream = <Inner as FlightService>::DoGetStream;
    type DoPutStream = <Inner as FlightService>::DoPutStream;
    type DoActionStream = <Inner as FlightService>::DoActionStream;
    type ListActionsStream = <Inner as FlightService>::ListActionsStream;
    type DoExchangeStream = <Inner as FlightService>::DoExchangeStream;

    async fn handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        let client = auth::client_of(&request);
        let (_, token) = self
            .sql
            .state
            .auth
            .login(request.metadata(), &client)
            .await?;
        let payload = token.clone().unwrap_or_default().into_bytes().into();
        let reply = HandshakeResponse {
            protocol_version: 0,
            payload,
        };
        let stream: Self::HandshakeStream = Box::pin(futures::stream::iter(vec![Ok(reply)]));
        let mut response = Response::new(stream);
        if let Some(token) = token {
            let value = format!("Bearer {token}")
                .parse()
                .map_err(|_| Status::internal("cannot encode the token header"))?;
            response.metadata_mut().insert("authorization", value);
        }
        Ok(response)
    }

    async fn list_flights(
        &self,
        request: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        self.authed(request).await?;
        Err(Status::unimplemented(
            "ListFlights is not offered; use Flight SQL GetTables",
        ))
    }

    async fn get_flight_info(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let request = self.authed(request).await?;
        if Any::decode(&*request.get_ref().cmd).is_err() {
            return Err(Status::invalid_argument(
                "malformed descriptor: not a Flight SQL command",
            ));
        }
        FlightService::get_flight_info(&self.sql, request).await
    }

    async fn poll_flight_info(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        let request = self.authed(request).await?;
        let who = auth::caller(&request)?;
        let descriptor = request.get_ref().clone();
        if let Some(id) = self.poll_id(&descriptor.cmd) {
            let id = id?;
            // The stored FlightInfo is rebuilt from the ticket entry.
            let (info, owner) = self
                .sql
                .state
                .tickets
                .with(&id, |e| (Arc::clone(&e.schema), e.owner.clone()))
                .ok_or_else(|| {
                    Status::not_found("query expired, was fetched or cancelled; resubmit it")
                })?;
            if owner != who.principal.name {
                return Err(Status::permission_denied(
                    "this query belongs to another user",
                ));
            }
            let info = self.sql.info_for(&id, &info, descriptor)?;
            return Ok(Response::new(self.poll_status(&id, info)?));
        }
        let any = Any::decode(&*descriptor.cmd)
            .map_err(|_| Status::invalid_argument("PollFlightInfo: malformed command"))?;
        let command = Command::try_from(any)
            .map_err(|e| Status::invalid_argument(format!("PollFlightInfo: {e}")))?;
        let (sql, params) = match command {
            Command::CommandStatementQuery(q) => (q.query, Vec::new()),
            Command::CommandPreparedStatementQuery(p) => {
                let handle = PreparedHandle::decode_handle(&p.prepared_statement_handle)?;
                let params = handle.param_batches()?;
                (handle.sql, params)
            }
            _ => {
                // Metadata commands answer at once: wrap their FlightInfo.
                let info = FlightService::get_flight_info(&self.sql, request)
                    .await?
                    .into_inner();
                return Ok(Response::new(PollInfo {
                    info: Some(info),
                    flight_descriptor: None,
                    progress: Some(1.0),
                    expiration_time: None,
                }));
            }
        };
        let planned = self.sql.plan(&who, &sql, &params, Kind::Query).await?;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let output = exec::spawn_query(
            Arc::clone(&self.sql.state),
            id.clone(),
            planned.sql.clone(),
            Kind::Query,
            (Arc::clone(&planned.engine), planned.plans.clone()),
            planned.audit.clone(),
        );
        let (id, info) = self
            .sql
            .ticket_info(planned, descriptor, Some(output))
            .await?;
        Ok(Response::new(self.poll_status(&id, info)?))
    }

    async fn get_schema(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        let request = self.authed(request).await?;
        let who = auth::caller(&request)?;
        let any = Any::decode(&*request.get_ref().cmd)
            .map_err(|_| Status::invalid_argument("GetSchema: malformed command"))?;
        let command = Command::try_from(any)
            .map_err(|e| Status::invalid_argument(format!("GetSchema: {e}")))?;
        // Statements are only planned: GetSchema must never run a write.
        let planned = match command {
            Command::CommandStatementQuery(q) => {
                Some(self.sql.plan(&who, &q.query, &[], Kind::Query).await?)
            }
            Command::CommandPreparedStatementQuery(p) => {
                let handle = PreparedHandle::decode_handle(&p.prepared_statement_handle)?;
                let params = handle.param_batches()?;
                Some(
                    self.sql
                        .plan(&who, &handle.sql, &params, Kind::Query)
                        .await?,
                )
            }
            _ => None,
        };
        let schema = match planned {
            Some(planned) => crate::statements::schema_bytes(&planned.schema)?,
            None => {
                // Metadata commands have no side effects.
                FlightService::get_flight_info(&self.sql, request)
                    .await?
                    .into_inner()
                    .schema
            }
        };
        Ok(Response::new(SchemaResult { schema }))
    }

    async fn do_get(
        &self,
        request: Request<Ticket>,
    ) -> Result<Response<Self::DoGetStream>, Status> {
        let request = self.authed(request).await?;
        if Any::decode(&*request.get_ref().ticket).is_err() {
            return Err(Status::invalid_argument(
                "malformed ticket: not a ticket this server issued",
            ));
        }
        FlightService::do_get(&self.sql, request).await
    }

    async fn do_put(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        let request = self.authed(request).await?;
        FlightService::do_put(&self.sql, request).await
    }

    async fn do_exchange(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        self.authed(request).await?;
        Err(Status::unimplemented("DoExchange is not supported"))
    }

    async fn do_action(
        &self,
        request: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        let request = self.authed(request).await?;
        FlightService::do_action(&self.sql, request).await
    }

    async fn list_actions(
        &self,
        request: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        let request = self.authed(request).await?;
        FlightService::list_actions(&self.sql, request).await
    }
}
