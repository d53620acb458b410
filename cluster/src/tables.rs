//! FlowEngine's own tables on a Ballista cluster: databases, NATS subjects and REST sources read
//! by the executors themselves.
//!
//! Ballista ships file tables natively; any other table provider needs an extension codec.
//! These codecs ship a table as the `CREATE EXTERNAL TABLE` it was created from (recorded by
//! [`engine::table_defs`], secret references unresolved), never as the provider object:
//! - on the client, [`TableCodec`] encodes such a table's scan as its definition;
//! - on the scheduler it decodes into a [`DeferredTable`], which plans a [`DeferredScanExec`]
//!   carrying the definition, projection, pushed-down filters and limit, without connecting
//!   anywhere;
//! - on the executor, [`ScanCodec`] decodes that node with the node's own [`NodeTables`]: the
//!   scan opens the table through the node's connectors (secrets resolved from the node's own
//!   `secrets_file` / `FLOWENGINE_SECRET_*`), checks its columns still match, and streams it.
//!
//! One task reads the whole table (the scan has one partition); joins, aggregates and writes
//! above it are distributed as usual. Tables whose reads this process settles after the run
//! (consuming queues acknowledged at commit) are not [`distributable`]: the client reads them
//! ([`crate::client_tables`]), and their rows travel in the plan under their own marker.

use std::fmt;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::TableReference;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, SessionStateBuilder, TaskContext};
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{
    CreateExternalTable, DdlStatement, Expr, LogicalPlan, TableProviderFilterPushDown,
};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};
use datafusion_proto::logical_plan::{
    AsLogicalPlan, DefaultLogicalExtensionCodec, LogicalExtensionCodec,
};
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use datafusion_proto::protobuf::{LogicalExprNode, LogicalPlanNode};
use engine::table_defs::TableDefinitions;
use futures::TryStreamExt;
use prost::Message;

/// Marks our payloads, so anything else goes to Ballista's codecs.
const TABLE_MAGIC: &[u8] = b"flowengine-table:1\0";
const SCAN_MAGIC: &[u8] = b"flowengine-scan:1\0";

/// Whether a table of this `STORED AS` type can be read by an executor (as its connector
/// declares it); the reason if not.
pub(crate) fn distributable(file_type: &str) -> std::result::Result<(), &'static str> {
    match connectors::registry().table_type(file_type) {
        Some(t) => t.not_distributable().map_or(Ok(()), Err),
        None => Err("its connector cannot be opened on executors"),
    }
}

/// The first option of `cmd` that holds a credential other than as a `${secret:NAME}`
/// reference: a secret-named option (`password`, `token`, ...) or a URL's password.
fn literal_credential(cmd: &CreateExternalTable) -> Option<String> {
    // `Bearer ${secret:TOKEN}` is fine: the credential part is a reference.
    let reference = |v: &str| v.trim().is_empty() || v.contains("${secret:");
    let mut keys: Vec<&String> = cmd.options.keys().collect();
    keys.sort();
    keys.into_iter().find_map(|key| {
        let value = &cmd.options[key];
        let lower = key.to_ascii_lowercase();
        let secret_key = [
            "password",
            "secret",
            "token",
            "credential",
            "key",
            "sas",
            "authorization",
        ]
            .iter()
            .any(|w| lower.contains(w))
            // Options naming a key or a column, not holding one.
            && !["key_column", "message_id", "primary_key", "on_conflict"]
                .iter()
                .any(|w| lower.ends_with(w));
        let url_password = value.split_once("://").and_then(|(_, rest)| {
            let authority = rest.split('/').next().unwrap_or(rest);
            let (userinfo, _) = authority.rsplit_once('@')?;
            userinfo.split_once(':').map(|(_, password)| password)
        });
        let literal =
            (secret_key && !reference(value)) || url_password.is_some_and(|p| !reference(p));
        literal.then(|| key.clone())
    })
}

/// The definition of a table as it travels: the `CREATE EXTERNAL TABLE` as a DataFusion
/// protobuf logical plan (secret references unresolved, so no credential travels).
#[derive(Clone, PartialEq, Message)]
struct TableNode {
    #[prost(bytes = "vec", tag = "1")]
    create: Vec<u8>,
}

/// A [`DeferredScanExec`] as it travels from the scheduler to executors.
#[derive(Clone, PartialEq, Message)]
struct ScanNode {
    #[prost(bytes = "vec", tag = "1")]
    create: Vec<u8>,
    #[prost(string, tag = "2")]
    table: String,
    #[prost(message, optional, tag = "3")]
    schema: Option<datafusion_proto::protobuf::Schema>,
    #[prost(bool, tag = "4")]
    projected: bool,
    #[prost(uint64, repeated, tag = "5")]
    projection: Vec<u64>,
    #[prost(message, repeated, tag = "6")]
    filters: Vec<LogicalExprNode>,
    #[prost(uint64, optional, tag = "7")]
    limit: Option<u64>,
}

fn encode_create(cmd: &CreateExternalTable) -> Result<Vec<u8>> {
    let plan = LogicalPlan::Ddl(DdlStatement::CreateExternalTable(Box::new(cmd.clone())));
    let node = LogicalPlanNode::try_from_logical_plan(&plan, &DefaultLogicalExtensionCodec {})?;
    Ok(node.encode_to_vec())
}

fn decode_create(bytes: &[u8], ctx: &TaskContext) -> Result<CreateExternalTable> {
    let node = LogicalPlanNode::decode(bytes)
        .map_err(|e| DataFusionError::Internal(format!("table definition: {e}")))?;
    match node.try_into_logical_plan(ctx, &DefaultLogicalExtensionCodec {})? {
        LogicalPlan::Ddl(DdlStatement::CreateExternalTable(cmd)) => Ok(*cmd),
        other => Err(DataFusionError::Internal(format!(
            "table definition holds a {} plan",
            other.display()
        ))),
    }
}

fn strip<'a>(buf: &'a [u8], magic: &[u8]) -> Option<&'a [u8]> {
    buf.strip_prefix(magic)
}

/// Ballista's logical codec, plus FlowEngine's recorded tables.
#[derive(Debug)]
pub(crate) struct TableCodec {
    inner: Arc<dyn LogicalExtensionCodec>,
    /// The client's recorded definitions (none on the scheduler, which only decodes).
    definitions: Option<Arc<TableDefinitions>>,
}

impl TableCodec {
    pub(crate) fn new(
        inner: Arc<dyn LogicalExtensionCodec>,
        definitions: Option<Arc<TableDefinitions>>,
    ) -> Self {
        Self { inner, definitions }
    }
}

impl LogicalExtensionCodec for TableCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[LogicalPlan],
        ctx: &TaskContext,
    ) -> Result<datafusion::logical_expr::Extension> {
        self.inner.try_decode(buf, inputs, ctx)
    }

    fn try_encode(
        &self,
        node: &datafusion::logical_expr::Extension,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        self.inner.try_encode(node, buf)
    }

    fn try_decode_table_provider(
        &self,
        buf: &[u8],
        table_ref: &TableReference,
        schema: SchemaRef,
        ctx: &TaskContext,
    ) -> Result<Arc<dyn TableProvider>> {
        if let Some(rows) = strip(buf, crate::client_tables::CLIENT_MAGIC) {
            return Ok(Arc::new(crate::client_tables::decode(
                rows, table_ref, schema,
            )?));
        }
        match strip(buf, TABLE_MAGIC) {
            Some(rest) => {
                let node = TableNode::decode(rest)
                    .map_err(|e| DataFusionError::Internal(format!("table `{table_ref}`: {e}")))?;
                // Decoded once here to fail early on a definition this node cannot read.
                let cmd = decode_create(&node.create, ctx)?;
                Ok(Arc::new(DeferredTable {
                    table: table_ref.clone(),
                    file_type: cmd.file_type,
                    create: node.create,
                    schema,
                }))
            }
            None => self
                .inner
                .try_decode_table_provider(buf, table_ref, schema, ctx),
        }
    }

    fn try_encode_table_provider(
        &self,
        table_ref: &TableReference,
        node: Arc<dyn TableProvider>,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        if let Some(client) = (node.as_ref() as &dyn std::any::Any)
            .downcast_ref::<crate::client_tables::ClientTable>()
        {
            return client.encode(buf);
        }
        let definition = self
            .definitions
            .as_ref()
            .and_then(|d| d.definition_of(&node));
        match definition {
            Some(cmd) => {
                distributable(&cmd.file_type).map_err(|why| refused(table_ref, why))?;
                if let Some(key) = literal_credential(&cmd) {
                    return Err(refused(
                        table_ref,
                        &format!(
                            "option `{key}` holds a literal credential, and credentials travel \
                             to cluster nodes only as ${{secret:NAME}} references that each node \
                             resolves from its own secrets"
                        ),
                    ));
                }
                buf.extend_from_slice(TABLE_MAGIC);
                TableNode {
                    create: encode_create(&cmd)?,
                }
                .encode(buf)
                .map_err(|e| DataFusionError::Internal(format!("table `{table_ref}`: {e}")))
            }
            None => self.inner.try_encode_table_provider(table_ref, node, buf),
        }
    }

    fn try_decode_file_format(
        &self,
        buf: &[u8],
        ctx: &TaskContext,
    ) -> Result<Arc<dyn datafusion::datasource::file_format::FileFormatFactory>> {
        self.inner.try_decode_file_format(buf, ctx)
    }

    fn try_encode_file_format(
        &self,
        buf: &mut Vec<u8>,
        node: Arc<dyn datafusion::datasource::file_format::FileFormatFactory>,
    ) -> Result<()> {
        self.inner.try_encode_file_format(buf, node)
    }
}

/// The error for a table that cannot be read on the cluster.
pub(crate) fn refused(table: &TableReference, why: &str) -> DataFusionError {
    DataFusionError::Plan(format!(
        "table `{table}` cannot be read on the cluster: {why}. Copy it to Parquet on a path \
         every node shares (COPY ... TO), or run without --cluster"
    ))
}

/// A table as the scheduler sees it: its definition and columns, planned without connecting.
#[derive(Debug)]
pub(crate) struct DeferredTable {
    table: TableReference,
    file_type: String,
    create: Vec<u8>,
    schema: SchemaRef,
}

#[async_trait]
impl TableProvider for DeferredTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    /// No new filters: those the client's table accepted are already in the scan, and only
    /// the executor's table can say what else it would take.
    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(vec![
            TableProviderFilterPushDown::Unsupported;
            filters.len()
        ])
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        DeferredScanExec::try_new(
            ScanRequest {
                table: self.table.clone(),
                create: self.create.clone(),
                schema: Arc::clone(&self.schema),
                projection: projection.cloned(),
                filters: filters.to_vec(),
                limit,
            },
            None,
        )
        .map(|exec| Arc::new(exec) as Arc<dyn ExecutionPlan>)
    }

    async fn insert_into(
        &self,
        _state: &dyn Session,
        _input: Arc<dyn ExecutionPlan>,
        _op: InsertOp,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Err(DataFusionError::Plan(format!(
            "writing to {} table `{}` is not done on the cluster: run the INSERT without \
             --cluster",
            self.file_type, self.table
        )))
    }
}

/// A scan of a FlowEngine table, opened by the executor that runs it.
pub(crate) struct DeferredScanExec {
    scan: Arc<ScanRequest>,
    properties: Arc<PlanProperties>,
    /// The node's connectors; `None` where the plan was made (the scheduler never runs it).
    node: Option<Arc<NodeTables>>,
}

impl fmt::Debug for DeferredScanExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The definition (with its options) is left out: it is not for logs.
        f.debug_struct("DeferredScanExec")
            .field("table", &self.scan.table)
            .field("projection", &self.scan.projection)
            .field("filters", &self.scan.filters.len())
            .field("limit", &self.scan.limit)
            .finish()
    }
}

impl DeferredScanExec {
    fn try_new(scan: ScanRequest, node: Option<Arc<NodeTables>>) -> Result<Self> {
        let projected = match &scan.projection {
            Some(p) => Arc::new(scan.schema.project(p)?),
            None => Arc::clone(&scan.schema),
        };
        let properties = PlanProperties::new(
            EquivalenceProperties::new(projected),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(Self {
            scan: Arc::new(scan),
            properties: Arc::new(properties),
            node,
        })
    }

    fn to_proto(&self) -> Result<ScanNode> {
        let scan = &self.scan;
        Ok(ScanNode {
            create: scan.create.clone(),
            table: scan.table.to_string(),
            schema: Some(scan.schema.as_ref().try_into()?),
            projected: scan.projection.is_some(),
            projection: scan
                .projection
                .iter()
                .flatten()
                .map(|&i| i as u64)
                .collect(),
            filters: datafusion_proto::logical_plan::to_proto::serialize_exprs(
                &scan.filters,
                &DefaultLogicalExtensionCodec {},
            )?,
            limit: scan.limit.map(|l| l as u64),
        })
    }

    fn from_proto(node: ScanNode, ctx: &TaskContext, tables: Arc<NodeTables>) -> Result<Self> {
        let schema = node
            .schema
            .as_ref()
            .ok_or_else(|| DataFusionError::Internal("scan without a schema".into()))?;
        let schema: datafusion::arrow::datatypes::Schema = schema.try_into()?;
        let filters = datafusion_proto::logical_plan::from_proto::parse_exprs(
            &node.filters,
            ctx,
            &DefaultLogicalExtensionCodec {},
        )?;
        Self::try_new(
            ScanRequest {
                table: TableReference::parse_str(&node.table),
                create: node.create,
                schema: Arc::new(schema),
                projection: node
                    .projected
                    .then(|| node.projection.iter().map(|&i| i as usize).collect()),
                filters,
                limit: node.limit.map(|l| l as usize),
            },
            Some(tables),
        )
    }
}

impl DisplayAs for DeferredScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeferredScanExec: table={}", self.scan.table)?;
        if let Some(limit) = self.scan.limit {
            write!(f, ", limit={limit}")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for DeferredScanExec {
    fn name(&self) -> &str {
        "DeferredScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if children.is_empty() {
            Ok(self)
        } else {
            Err(DataFusionError::Internal(
                "DeferredScanExec has no children".into(),
            ))
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!(
                "DeferredScanExec has one partition, asked for {partition}"
            )));
        }
        let Some(node) = self.node.clone() else {
            return Err(DataFusionError::Execution(format!(
                "table `{}` is read by executors; this process cannot open it",
                self.scan.table
            )));
        };
        let scan = Arc::clone(&self.scan);
        let out_schema = self.schema();
        let stream =
            futures::stream::once(async move { node.scan(scan, context).await }).try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(out_schema, stream)))
    }
}

/// What one executor task reads.
struct ScanRequest {
    table: TableReference,
    create: Vec<u8>,
    schema: SchemaRef,
    projection: Option<Vec<usize>>,
    filters: Vec<Expr>,
    limit: Option<usize>,
}

/// A node's connectors, to open FlowEngine tables: one engine built from the node's own
/// configuration (its secrets, state directory), shared by every task, so database pools and
/// circuit breakers are shared too.
pub(crate) struct NodeTables {
    config: engine::EngineConfig,
    engine: OnceLock<std::result::Result<engine::Engine, String>>,
}

impl fmt::Debug for NodeTables {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeTables").finish_non_exhaustive()
    }
}

impl NodeTables {
    pub(crate) fn new(config: engine::EngineConfig) -> Self {
        Self {
            config,
            engine: OnceLock::new(),
        }
    }

    fn engine(&self) -> Result<&engine::Engine> {
        self.engine
            .get_or_init(|| {
                let mut config = self.config.clone();
                // The node's engine opens tables only; queries run in Ballista's sessions.
                config.cluster = None;
                engine::Engine::try_new(&config, &connectors::registry()).map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| DataFusionError::Execution(format!("this node's connectors: {e}")))
    }

    async fn scan(
        &self,
        scan: Arc<ScanRequest>,
        task: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let engine = self.engine()?;
        // The node's factories and secrets, with the task's runtime (its memory pool, stores).
        let state = SessionStateBuilder::new_from_existing(engine.context().state())
            .with_runtime_env(task.runtime_env())
            .build();
        let cmd = decode_create(&scan.create, &task)?;
        let file_type = cmd.file_type.to_ascii_uppercase();
        let factory = state.table_factories().get(&file_type).ok_or_else(|| {
            DataFusionError::Plan(format!(
                "table `{}`: this executor has no connector for STORED AS {file_type}",
                scan.table
            ))
        })?;
        let provider = factory.create(&state, &cmd).await?;
        let found = provider.schema();
        let same = found.fields().len() == scan.schema.fields().len()
            && found
                .fields()
                .iter()
                .zip(scan.schema.fields())
                .all(|(a, b)| a.name() == b.name() && a.data_type() == b.data_type());
        if !same {
            return Err(DataFusionError::Execution(format!(
                "table `{}` changed since the query was planned: the executor found columns \
                 {found} where the client saw {}",
                scan.table, scan.schema
            )));
        }
        let plan = provider
            .scan(&state, scan.projection.as_ref(), &scan.filters, scan.limit)
            .await?;
        datafusion::physical_plan::execute_stream(plan, task)
    }
}

/// Ballista's physical codec, plus [`DeferredScanExec`].
#[derive(Debug)]
pub(crate) struct ScanCodec {
    inner: Arc<dyn PhysicalExtensionCodec>,
    node: Arc<NodeTables>,
}

impl ScanCodec {
    pub(crate) fn new(inner: Arc<dyn PhysicalExtensionCodec>, node: Arc<NodeTables>) -> Self {
        Self { inner, node }
    }
}

impl PhysicalExtensionCodec for ScanCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        match strip(buf, SCAN_MAGIC) {
            Some(rest) => {
                let node = ScanNode::decode(rest)
                    .map_err(|e| DataFusionError::Internal(format!("deferred scan: {e}")))?;
                Ok(Arc::new(DeferredScanExec::from_proto(
                    node,
                    ctx,
                    Arc::clone(&self.node),
                )?))
            }
            None => self.inner.try_decode(buf, inputs, ctx, proto_converter),
        }
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        match node.downcast_ref::<DeferredScanExec>() {
            Some(scan) => {
                buf.extend_from_slice(SCAN_MAGIC);
                scan.to_proto()?
                    .encode(buf)
                    .map_err(|e| DataFusionError::Internal(format!("deferred scan: {e}")))
            }
            None => self.inner.try_encode(node, buf, proto_converter),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::common::DFSchema;

    fn table(options: &[(&str, &str)]) -> CreateExternalTable {
        CreateExternalTable::builder(
            TableReference::bare("t"),
            "public.t".to_string(),
            "POSTGRES".to_string(),
            Arc::new(DFSchema::empty()),
        )
        .with_options(
            options
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
        .build()
    }

    #[test]
    fn credentials_travel_only_as_references() {
        for ok in [
            vec![("connection", "postgresql://app:${secret:PG}@db:5432/x")],
            vec![
                ("connection", "postgresql://app@db/x"),
                ("password", "${secret:PG}"),
            ],
            vec![("header.authorization", "Bearer ${secret:TOKEN}")],
            vec![("on_conflict", "upsert:id"), ("message_id", "id")],
        ] {
            assert_eq!(literal_credential(&table(&ok)), None, "{ok:?}");
        }
        for (bad, key) in [
            (
                vec![("connection", "postgresql://app:hunter2@db/x")],
                "connection",
            ),
            (vec![("password", "hunter2")], "password"),
            (
                vec![("header.Authorization", "Bearer abc")],
                "header.Authorization",
            ),
            (
                vec![("aws.secret_access_key", "abc")],
                "aws.secret_access_key",
            ),
        ] {
            assert_eq!(
                literal_credential(&table(&bad)).as_deref(),
                Some(key),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn consuming_queues_and_sinks_stay_on_one_node() {
        for ok in ["postgres", "MYSQL", "SQLITE", "HTTP_JSON", "NATS"] {
            assert!(distributable(ok).is_ok(), "{ok}");
        }
        for no in ["RABBITMQ", "REDIS_STREAM", "MQTT", "WEBHOOK", "SOMETHING"] {
            assert!(distributable(no).is_err(), "{no}");
        }
    }

    #[test]
    fn a_table_definition_survives_the_round_trip() {
        let cmd = table(&[("connection", "postgresql://app:${secret:PG}@db/x")]);
        let bytes = encode_create(&cmd).unwrap();
        let back = decode_create(&bytes, &TaskContext::default()).unwrap();
        assert_eq!(back.name, cmd.name);
        assert_eq!(back.file_type, "POSTGRES");
        assert_eq!(back.locations, cmd.locations);
        assert_eq!(back.options, cmd.options);
    }
}
