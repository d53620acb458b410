//! Tables the client reads for the cluster: tables only this process can read correctly, shipped
//! to the cluster inside the query's plan.
//!
//! Some tables cannot be opened by an executor: a consuming queue (`RABBITMQ`, `REDIS_STREAM`,
//! `MQTT`), whose messages this process acknowledges only after the run commits; a tolerant
//! reader (`on_error`), whose bad records this process counts and dead-letters; an in-memory
//! table (`CREATE TABLE AS`, Flight ingest) or a `system` table, which only this process holds.
//! In a cluster query, [`read_on_client`] replaces each scan of such a table by a scan of a
//! [`ClientTable`], whose columns are the original scan's output. When the query runs,
//! [`ClientScansExec`] first reads those scans here (with their projection, filters and limit,
//! through the table's own provider, so acknowledgements, bad-record counts and dead letters
//! are settled as on a single node) and only then sends the plan: the rows travel inside it as
//! Arrow IPC ([`TableCodec`](crate::tables::TableCodec)), and the scheduler and
//! executors see an in-memory table. Planning alone (`--dry-run`, `EXPLAIN`) reads nothing.
//!
//! The rows of all such scans of one query are capped by `cluster_inline_limit` (a plan is one
//! gRPC message); beyond it the query fails with an error naming the table.

use std::fmt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::{Transformed, TreeNodeRecursion};
use datafusion::common::{Result, TableReference};
use datafusion::datasource::{MemTable, TableType, provider_as_source};
use datafusion::error::DataFusionError;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Expr, LogicalPlan, SubqueryAlias, TableScan, TableScanBuilder};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use datafusion::physical_planner::{DefaultPhysicalPlanner, PhysicalPlanner};
use futures::{StreamExt, TryStreamExt};

/// Marks a client table's payload in a logical plan.
pub(crate) const CLIENT_MAGIC: &[u8] = b"flowengine-client-table:1\0";

/// One scan of a table this process reads for the cluster: the original scan, planned here,
/// and (once the query runs) its rows.
pub(crate) struct ClientTable {
    table: TableReference,
    /// Why executors cannot read it, for messages.
    why: String,
    /// The original scan's output columns.
    schema: SchemaRef,
    /// The original scan, planned in this process.
    scan: Arc<dyn ExecutionPlan>,
    /// Its rows as Arrow IPC, once read.
    rows: Mutex<Option<Arc<Vec<u8>>>>,
}

impl fmt::Debug for ClientTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTable")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

impl ClientTable {
    /// Read the scan here, into Arrow IPC of at most `budget` bytes; returns the bytes used.
    async fn read(&self, task: Arc<TaskContext>, budget: u64, limit: u64) -> Result<u64> {
        let mut stream = datafusion::physical_plan::execute_stream(Arc::clone(&self.scan), task)?;
        let mut writer = StreamWriter::try_new(Vec::new(), &self.schema)?;
        while let Some(batch) = stream.next().await {
            writer.write(&batch?)?;
            if writer.get_ref().len() as u64 > budget {
                return Err(DataFusionError::ResourcesExhausted(format!(
                    "table `{}` is read by this process for the cluster ({}), and its rows in \
                     this query exceed cluster_inline_limit ({}): copy it to Parquet on a path \
                     every node shares (COPY ... TO), raise cluster_inline_limit, or run \
                     without --cluster",
                    self.table,
                    self.why,
                    bytesize::ByteSize(limit).display().iec()
                )));
            }
        }
        writer.finish()?;
        let bytes = writer.into_inner()?;
        let used = bytes.len() as u64;
        *self.rows.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(bytes));
        Ok(used)
    }

    /// The payload the logical codec sends: the rows read, or none when the plan is only
    /// shown (`EXPLAIN`).
    pub(crate) fn encode(&self, buf: &mut Vec<u8>) -> Result<()> {
        buf.extend_from_slice(CLIENT_MAGIC);
        let rows = self.rows.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match rows {
            Some(bytes) => buf.extend_from_slice(&bytes),
            None => {
                let mut writer = StreamWriter::try_new(Vec::new(), &self.schema)?;
                writer.finish()?;
                buf.extend_from_slice(&writer.into_inner()?);
            }
        }
        Ok(())
    }
}

/// What a node makes of a client table's payload: an in-memory table of its rows, with the
/// columns the client announced.
pub(crate) fn decode(
    payload: &[u8],
    table: &TableReference,
    schema: SchemaRef,
) -> Result<MemTable> {
    let bad = |e: &dyn fmt::Display| {
        DataFusionError::Internal(format!("rows of table `{table}` read by the client: {e}"))
    };
    let reader = StreamReader::try_new(std::io::Cursor::new(payload), None).map_err(|e| bad(&e))?;
    let batches = reader
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad(&e))?;
    // The announced schema names the columns as the plan does; the batches carry them.
    let batches = batches
        .into_iter()
        .map(|b| {
            RecordBatch::try_new_with_options(
                Arc::clone(&schema),
                b.columns().to_vec(),
                &datafusion::arrow::array::RecordBatchOptions::new()
                    .with_row_count(Some(b.num_rows())),
            )
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad(&e))?;
    MemTable::try_new(schema, vec![batches])
}

#[async_trait]
impl TableProvider for ClientTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        _projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        // Only ever planned on the cluster, from its payload.
        Err(DataFusionError::Internal(format!(
            "table `{}` is read by the client for the cluster, not planned here",
            self.table
        )))
    }
}

/// `plan` with every scan that `readable` refuses turned into a [`ClientTable`] planned in
/// `session`; the tables to read before the plan is sent.
pub(crate) async fn read_on_client(
    plan: &LogicalPlan,
    session: &dyn Session,
    readable: &(dyn Fn(&TableScan) -> std::result::Result<(), String> + Sync),
) -> Result<(LogicalPlan, Vec<Arc<ClientTable>>)> {
    // Collect first (planning a scan is async), then replace in one pass.
    let mut refused: Vec<(TableScan, String)> = Vec::new();
    plan.apply_with_subqueries(|node| {
        // The same scan twice (a self-join) is read once.
        if let LogicalPlan::TableScan(scan) = node
            && !refused.iter().any(|(s, _)| s == scan)
            && let Err(why) = readable(scan)
        {
            refused.push((scan.clone(), why));
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    if refused.is_empty() {
        return Ok((plan.clone(), Vec::new()));
    }
    let mut tables = Vec::with_capacity(refused.len());
    for (scan, why) in &refused {
        let physical = DefaultPhysicalPlanner::default()
            .create_physical_plan(&LogicalPlan::TableScan(scan.clone()), session)
            .await?;
        tables.push(Arc::new(ClientTable {
            table: scan.table_name.clone(),
            why: why.clone(),
            schema: Arc::clone(scan.projected_schema.inner()),
            scan: physical,
            rows: Mutex::new(None),
        }));
    }
    let rewritten = plan
        .clone()
        .transform_up_with_subqueries(|node| {
            let LogicalPlan::TableScan(scan) = &node else {
                return Ok(Transformed::no(node));
            };
            let Some(index) = refused.iter().position(|(s, _)| s == scan) else {
                return Ok(Transformed::no(node));
            };
            let table = Arc::clone(&tables[index]);
            // The scan is named by one bare identifier (Ballista refuses plans that scan
            // `information_schema` next to other tables) and aliased back to the table's name,
            // so the columns above it keep their qualifiers.
            let bare = TableReference::bare(scan.table_name.to_string());
            let replaced = TableScanBuilder::new(bare, provider_as_source(table)).build()?;
            let aliased = SubqueryAlias::try_new(
                Arc::new(LogicalPlan::TableScan(replaced)),
                scan.table_name.clone(),
            )?;
            Ok(Transformed::yes(LogicalPlan::SubqueryAlias(aliased)))
        })?
        .data;
    Ok((rewritten, tables))
}

/// Runs the query's client tables, then the cluster plan that carries their rows.
pub(crate) struct ClientScansExec {
    cluster: Arc<dyn ExecutionPlan>,
    tables: Vec<Arc<ClientTable>>,
    limit: u64,
}

impl fmt::Debug for ClientScansExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientScansExec")
            .field("tables", &self.tables)
            .finish_non_exhaustive()
    }
}

impl ClientScansExec {
    pub(crate) fn new(
        cluster: Arc<dyn ExecutionPlan>,
        tables: Vec<Arc<ClientTable>>,
        limit: u64,
    ) -> Self {
        Self {
            cluster,
            tables,
            limit,
        }
    }
}

impl DisplayAs for ClientScansExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self.tables.iter().map(|t| t.table.to_string()).collect();
        write!(
            f,
            "ClientScansExec: read here for the cluster: {}",
            names.join(", ")
        )
    }
}

impl ExecutionPlan for ClientScansExec {
    fn name(&self) -> &str {
        "ClientScansExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.cluster.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.cluster]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        match (children.pop(), children.is_empty()) {
            (Some(cluster), true) => Ok(Arc::new(Self {
                cluster,
                tables: self.tables.clone(),
                limit: self.limit,
            })),
            _ => Err(DataFusionError::Internal(
                "ClientScansExec has one child".into(),
            )),
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let cluster = Arc::clone(&self.cluster);
        let tables = self.tables.clone();
        let limit = self.limit;
        let schema = self.schema();
        let run = async move {
            let mut budget = limit;
            for table in &tables {
                budget -= table.read(Arc::clone(&context), budget, limit).await?;
            }
            cluster.execute(partition, context)
        };
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            schema,
            futures::stream::once(run).try_flatten(),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::prelude::SessionContext;

    #[tokio::test]
    async fn client_tables_carry_the_scans_output_through_ipc() {
        let ctx = SessionContext::new();
        ctx.sql("CREATE TABLE mem (a BIGINT, b VARCHAR) AS VALUES (1, 'x'), (2, 'y'), (3, NULL)")
            .await
            .unwrap();
        ctx.sql("CREATE TABLE other (k BIGINT) AS VALUES (2)")
            .await
            .unwrap();
        let plan = ctx
            .sql("SELECT a FROM mem WHERE a IN (SELECT k FROM other) UNION ALL SELECT count(*) FROM mem")
            .await
            .unwrap()
            .into_optimized_plan()
            .unwrap();
        let state = ctx.state();
        let readable = |scan: &TableScan| {
            if scan.table_name.table() == "mem" {
                Err("held here".to_string())
            } else {
                Ok(())
            }
        };
        let (rewritten, tables) = read_on_client(&plan, &state, &readable).await.unwrap();
        // Both scans of `mem` (one column, then none) are replaced; `other` is not.
        assert_eq!(tables.len(), 2);
        assert_eq!(rewritten.schema(), plan.schema());
        let mut scans = Vec::new();
        rewritten
            .apply_with_subqueries(|n| {
                if let LogicalPlan::TableScan(s) = n {
                    scans.push((s.table_name.to_string(), s.projection.is_none()));
                }
                Ok(TreeNodeRecursion::Continue)
            })
            .unwrap();
        scans.sort();
        assert_eq!(
            scans,
            vec![
                ("mem".to_string(), true),
                ("mem".to_string(), true),
                ("other".to_string(), false)
            ]
        );
        // Read, encoded and decoded as a node would.
        let mut rows = Vec::new();
        for table in &tables {
            table.read(ctx.task_ctx(), 1 << 20, 1 << 20).await.unwrap();
            let mut buf = Vec::new();
            table.encode(&mut buf).unwrap();
            let payload = buf.strip_prefix(CLIENT_MAGIC).unwrap();
            let mem = decode(payload, &table.table, table.schema()).unwrap();
            let batches = ctx
                .read_table(Arc::new(mem))
                .unwrap()
                .collect()
                .await
                .unwrap();
            rows.push(batches.iter().map(|b| b.num_rows()).sum::<usize>());
        }
        rows.sort();
        assert_eq!(rows, vec![3, 3]);
    }

    #[tokio::test]
    async fn a_scan_over_the_limit_fails_naming_the_table() {
        let ctx = SessionContext::new();
        let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![Arc::new(Int64Array::from_iter_values(0..100_000))],
        )
        .unwrap();
        ctx.register_batch("big", batch).unwrap();
        let plan = ctx
            .sql("SELECT a FROM big")
            .await
            .unwrap()
            .into_optimized_plan()
            .unwrap();
        let (_, tables) = read_on_client(&plan, &ctx.state(), &|_| Err("in memory".into()))
            .await
            .unwrap();
        let err = tables[0]
            .read(ctx.task_ctx(), 64 * 1024, 64 * 1024)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("table `big`") && err.contains("cluster_inline_limit"),
            "{err}"
        );
        // Not read: an EXPLAIN's payload has the columns and no rows.
        let mut buf = Vec::new();
        tables[0].encode(&mut buf).unwrap();
        let mem = decode(
            buf.strip_prefix(CLIENT_MAGIC).unwrap(),
            &tables[0].table,
            schema,
        )
        .unwrap();
        let rows = ctx
            .read_table(Arc::new(mem))
            .unwrap()
            .count()
            .await
            .unwrap();
        assert_eq!(rows, 0);
    }
}
