//! Cluster mode (`--cluster df://HOST:PORT`, `cluster` in flowengine.toml): every query of the
//! engine is planned here and executed by an Apache DataFusion Ballista scheduler and its
//! executors, started from this binary (`flowengine scheduler`, `flowengine executor`).
//!
//! Ballista ships a query's logical plan to the scheduler, so only tables Ballista can
//! serialize and every node can read may be distributed: file tables (`CREATE EXTERNAL TABLE
//! ... STORED AS PARQUET|CSV|JSON|AVRO|ARROW`) over paths all nodes share or object stores. A
//! plan touching any other table (databases, queues, HTTP sources, in-memory tables, tolerant
//! CSV readers) is refused before it is sent, with an error naming the table and why. Plans that
//! read only this process's own catalog tables (`information_schema`, `system`) run here.

use anyhow::Result;
use engine::{Engine, EngineConfig};

/// The engine for `config`: in this process, or on the cluster `config.cluster` names.
pub(crate) fn engine(config: &EngineConfig) -> Result<Engine> {
    let connectors = connectors::registry();
    match &config.cluster {
        None => Ok(Engine::try_new(config, &connectors)?),
        Some(url) => distributed(config, &connectors, url),
    }
}

#[cfg(not(feature = "cluster"))]
fn distributed(
    _config: &EngineConfig,
    _connectors: &engine::ConnectorRegistry,
    _url: &str,
) -> Result<Engine> {
    Err(crate::UsageError(
        "this flowengine was built without the `cluster` feature: rebuild with \
         `--features cluster` to use --cluster"
            .into(),
    )
    .into())
}

#[cfg(feature = "cluster")]
fn distributed(
    config: &EngineConfig,
    connectors: &engine::ConnectorRegistry,
    url: &str,
) -> Result<Engine> {
    let (host, port) = engine::config::cluster_address(url).map_err(anyhow::Error::msg)?;
    let scheduler = format!("http://{host}:{port}");
    Ok(Engine::try_new_distributed(config, connectors, &|state| {
        remote::distribute(state, &scheduler)
    })?)
}

#[cfg(feature = "cluster")]
mod remote {
    use std::sync::Arc;

    use async_trait::async_trait;
    use ballista_core::extension::SessionStateExt;
    use datafusion::catalog::Session;
    use datafusion::common::tree_node::TreeNodeRecursion;
    use datafusion::datasource::listing::ListingTable;
    use datafusion::datasource::source_as_provider;
    use datafusion::error::DataFusionError;
    use datafusion::execution::SessionState;
    use datafusion::execution::context::QueryPlanner;
    use datafusion::execution::session_state::SessionStateBuilder;
    use datafusion::logical_expr::{LogicalPlan, TableScan};
    use datafusion::physical_plan::ExecutionPlan;
    use datafusion::physical_planner::{DefaultPhysicalPlanner, PhysicalPlanner};

    /// Schemas of this process's own tables: a plan reading only these runs here.
    const LOCAL_SCHEMAS: [&str; 2] = ["information_schema", "system"];

    /// Install Ballista's planner (sending plans to `scheduler`) behind FlowEngine's check.
    pub(super) fn distribute(
        state: SessionState,
        scheduler: &str,
    ) -> datafusion::error::Result<SessionState> {
        let state = state.upgrade_for_ballista(scheduler.to_string())?;
        let remote = Arc::clone(state.query_planner());
        Ok(SessionStateBuilder::new_from_existing(state)
            .with_query_planner(Arc::new(ClusterPlanner { remote }))
            .build())
    }

    /// Checks a plan can run on the cluster, then hands it to Ballista's planner; plans reading
    /// only local catalog tables are planned here.
    #[derive(Debug)]
    struct ClusterPlanner {
        remote: Arc<dyn QueryPlanner + Send + Sync>,
    }

    /// Where a plan can run.
    #[derive(Debug, PartialEq, Eq)]
    enum Placement {
        /// Reads only this process's catalog tables.
        Local,
        /// Reads only tables every node can read (or none).
        Cluster,
    }

    fn placement(plan: &LogicalPlan) -> datafusion::error::Result<Placement> {
        let mut local = Vec::new();
        let mut distributed = false;
        let mut refused: Option<DataFusionError> = None;
        plan.apply_with_subqueries(|node| {
            if let LogicalPlan::TableScan(TableScan {
                table_name, source, ..
            }) = node
            {
                if table_name
                    .schema()
                    .is_some_and(|s| LOCAL_SCHEMAS.contains(&s))
                {
                    local.push(table_name.to_string());
                } else {
                    let provider = source_as_provider(source)?;
                    if (provider.as_ref() as &dyn std::any::Any).downcast_ref::<ListingTable>().is_none() {
                        refused = Some(DataFusionError::Plan(format!(
                            "table `{table_name}` cannot be read on the cluster: only file tables \
                             (CREATE EXTERNAL TABLE ... STORED AS PARQUET, CSV, JSON, AVRO or ARROW, \
                             without on_error) are sent to executors, and `{table_name}` is a \
                             {} table read by this process (a database, queue, HTTP or in-memory \
                             table, or a tolerant reader). Copy it to Parquet on a path every node \
                             shares (COPY ... TO), or run without --cluster",
                            describe(provider.as_ref())
                        )));
                        return Ok(TreeNodeRecursion::Stop);
                    }
                    distributed = true;
                }
            }
            Ok(TreeNodeRecursion::Continue)
        })?;
        if let Some(e) = refused {
            return Err(e);
        }
        match (local.first(), distributed) {
            (Some(table), true) => Err(DataFusionError::Plan(format!(
                "`{table}` is a table of this process and cannot be joined with cluster tables in \
                 one query; query it on its own"
            ))),
            (Some(_), false) => Ok(Placement::Local),
            (None, _) => Ok(Placement::Cluster),
        }
    }

    /// A short name of a provider's kind, from its table type.
    fn describe(provider: &dyn datafusion::catalog::TableProvider) -> &'static str {
        match provider.table_type() {
            datafusion::datasource::TableType::Base => "non-file",
            datafusion::datasource::TableType::View => "view-like",
            datafusion::datasource::TableType::Temporary => "temporary",
        }
    }

    #[async_trait]
    impl QueryPlanner for ClusterPlanner {
        async fn create_physical_plan(
            &self,
            logical_plan: &LogicalPlan,
            session: &dyn Session,
        ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
            match placement(logical_plan)? {
                Placement::Local => {
                    DefaultPhysicalPlanner::default()
                        .create_physical_plan(logical_plan, session)
                        .await
                }
                Placement::Cluster => {
                    self.remote
                        .create_physical_plan(logical_plan, session)
                        .await
                }
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use datafusion::prelude::SessionContext;

        #[tokio::test]
        async fn only_file_tables_go_to_the_cluster() {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("t.csv"), "a,b\n1,2\n").unwrap();
            let ctx = SessionContext::new_with_config(
                datafusion::prelude::SessionConfig::new().with_information_schema(true),
            );
            ctx.sql(&format!(
                "CREATE EXTERNAL TABLE files STORED AS CSV LOCATION '{}/t.csv' \
                 OPTIONS ('format.has_header' 'true')",
                dir.path().display()
            ))
            .await
            .unwrap();
            ctx.sql("CREATE TABLE mem AS VALUES (1, 2)").await.unwrap();
            let plan = |sql: &'static str| {
                let ctx = ctx.clone();
                async move { ctx.sql(sql).await.unwrap().into_optimized_plan().unwrap() }
            };
            assert_eq!(
                placement(&plan("SELECT a FROM files WHERE b > 1").await).unwrap(),
                Placement::Cluster
            );
            assert_eq!(
                placement(&plan("SELECT 1").await).unwrap(),
                Placement::Cluster
            );
            assert_eq!(
                placement(&plan("SELECT * FROM information_schema.tables").await).unwrap(),
                Placement::Local
            );
            let err =
                placement(&plan("SELECT * FROM files WHERE a IN (SELECT column1 FROM mem)").await)
                    .unwrap_err()
                    .to_string();
            assert!(
                err.contains("table `mem` cannot be read on the cluster") && err.contains("COPY"),
                "{err}"
            );
            let err = placement(
                &plan("SELECT * FROM files CROSS JOIN information_schema.schemata").await,
            )
            .unwrap_err()
            .to_string();
            assert!(err.contains("cannot be joined"), "{err}");
        }
    }
}
