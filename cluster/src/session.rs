//! The client side of cluster mode: a session whose query planner sends plans to the Ballista
//! scheduler, after checking that the executors can read every table the plan reads (or reading
//! those tables here, see [`crate::client_tables`]). Plans that read only this process's own
//! catalog tables (`information_schema`, `system`) run here.

use std::sync::Arc;

use async_trait::async_trait;
use ballista_core::extension::{SessionConfigExt, SessionStateExt};
use connectors::files::tolerant::source::TolerantFormat;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::TableType;
use datafusion::datasource::listing::ListingTable;
use datafusion::datasource::source_as_provider;
use datafusion::error::DataFusionError;
use datafusion::execution::SessionState;
use datafusion::execution::context::QueryPlanner;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::{LogicalPlan, TableScan};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_planner::{DefaultPhysicalPlanner, PhysicalPlanner};
use engine::table_defs::TableDefinitions;

/// Schemas of this process's own tables: a plan reading only these runs here.
const LOCAL_SCHEMAS: [&str; 2] = ["information_schema", "system"];

/// Install Ballista's planner (sending plans to `scheduler`) behind FlowEngine's check.
pub(crate) fn distribute(
    state: SessionState,
    scheduler: &str,
    inline_limit: u64,
) -> datafusion::error::Result<SessionState> {
    // FlowEngine's tables travel as their definitions (crate::tables).
    let definitions = state
        .config()
        .get_extension::<engine::table_defs::TableDefinitions>();
    let codec = Arc::new(crate::tables::TableCodec::new(
        Arc::new(ballista_core::serde::BallistaLogicalExtensionCodec::default()),
        definitions,
    ));
    // Federation would turn database scans into SQL sent from this process; on the
    // cluster the executors scan those tables themselves, with filters still pushed down.
    let rules = state
        .optimizers()
        .iter()
        .filter(|rule| !rule.name().starts_with("federation_optimizer_rule"))
        .cloned()
        .collect();
    let mut state = SessionStateBuilder::new_from_existing(state)
        .with_optimizer_rules(rules)
        .build();
    // Set on the built state: a builder given a config again would register a fresh default
    // catalog over the session's.
    let mut config = std::mem::take(state.config_mut());
    // The scheduler plans with the same settings (crate::commands::cluster).
    crate::distributable(&mut config);
    // Plans carry the rows of tables this process reads (crate::client_tables).
    *state.config_mut() = config
        .with_ballista_logical_extension_codec(codec)
        .with_ballista_grpc_client_max_message_size(
            engine::config::CLUSTER_GRPC_MESSAGE_LIMIT as usize,
        );
    let state = state.upgrade_for_ballista(scheduler.to_string())?;
    let remote = Arc::clone(state.query_planner());
    Ok(SessionStateBuilder::new_from_existing(state)
        .with_query_planner(Arc::new(ClusterPlanner {
            remote,
            inline_limit,
        }))
        .build())
}

/// Checks a plan can run on the cluster, then hands it to Ballista's planner; plans reading
/// only local catalog tables are planned here.
#[derive(Debug)]
struct ClusterPlanner {
    remote: Arc<dyn QueryPlanner + Send + Sync>,
    /// Bytes of rows read here that one query may send ([`crate::client_tables`]).
    inline_limit: u64,
}

/// Where a plan can run.
#[derive(Debug, PartialEq, Eq)]
enum Placement {
    /// Reads only this process's catalog tables.
    Local,
    /// Reads only tables every node can read (or none).
    Cluster,
}

fn placement(
    plan: &LogicalPlan,
    definitions: Option<&TableDefinitions>,
) -> datafusion::error::Result<Placement> {
    let mut local = false;
    let mut distributed = false;
    let mut refused: Option<DataFusionError> = None;
    plan.apply_with_subqueries(|node| {
        if let LogicalPlan::Dml(dml) = node
            && let Ok(target) = source_as_provider(&dml.target)
            && (target.as_ref() as &dyn std::any::Any)
                .downcast_ref::<ListingTable>()
                .is_none()
            && definitions.is_some_and(|d| d.definition_of(&target).is_some())
        {
            refused = Some(DataFusionError::Plan(format!(
                "writing to table `{}` is not done on the cluster: executors read \
                 FlowEngine's connector tables, but they write only file tables; run this \
                 statement without --cluster",
                dml.table_name
            )));
            return Ok(TreeNodeRecursion::Stop);
        }
        if let LogicalPlan::TableScan(scan) = node {
            if is_local(scan) {
                local = true;
            } else {
                distributed = true;
            }
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    if let Some(e) = refused {
        return Err(e);
    }
    Ok(if local && !distributed {
        Placement::Local
    } else {
        Placement::Cluster
    })
}

/// A table of this process's own catalog.
fn is_local(scan: &TableScan) -> bool {
    scan.table_name
        .schema()
        .is_some_and(|s| LOCAL_SCHEMAS.contains(&s))
}

/// Whether executors can read what `scan` reads; why not, if they cannot.
fn readable(scan: &TableScan, definitions: Option<&TableDefinitions>) -> Result<(), String> {
    if is_local(scan) {
        return Err("it is a table of this process's catalog".into());
    }
    let provider = source_as_provider(&scan.source).map_err(|e| e.to_string())?;
    readable_on_executors(&provider, definitions)
}

/// Whether executors can read `provider`: file tables (not tolerant readers, whose bad
/// records this process counts and dead-letters) and FlowEngine's connector tables that
/// [`crate::tables::distributable`] accepts.
fn readable_on_executors(
    provider: &Arc<dyn TableProvider>,
    definitions: Option<&TableDefinitions>,
) -> Result<(), String> {
    if let Some(listing) = (provider.as_ref() as &dyn std::any::Any).downcast_ref::<ListingTable>()
    {
        let format = listing.options().format.as_ref() as &dyn std::any::Any;
        if format.downcast_ref::<TolerantFormat>().is_some() {
            return Err(
                "it reads with on_error, whose bad-record counts and dead letters \
                        this process keeps"
                    .into(),
            );
        }
        return Ok(());
    }
    match definitions.and_then(|d| d.definition_of(provider)) {
        Some(cmd) => crate::tables::distributable(&cmd.file_type).map_err(|why| {
            format!(
                "it is a {} table and {why}",
                cmd.file_type.to_ascii_uppercase()
            )
        }),
        None => Err(format!(
            "it is a {} table held by this process (an in-memory table or a table created \
             by a query)",
            match provider.table_type() {
                TableType::Base => "base",
                TableType::View => "view-like",
                TableType::Temporary => "temporary",
            }
        )),
    }
}

#[async_trait]
impl QueryPlanner for ClusterPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session: &dyn Session,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let definitions = session.config().get_extension::<TableDefinitions>();
        match placement(logical_plan, definitions.as_deref())? {
            Placement::Local => {
                DefaultPhysicalPlanner::default()
                    .create_physical_plan(logical_plan, session)
                    .await
            }
            Placement::Cluster => {
                let readable = |scan: &TableScan| readable(scan, definitions.as_deref());
                let (plan, tables) =
                    crate::client_tables::read_on_client(logical_plan, session, &readable).await?;
                let cluster = self.remote.create_physical_plan(&plan, session).await?;
                // An EXPLAIN only shows the plan: nothing is read for it.
                if tables.is_empty() || matches!(plan, LogicalPlan::Explain(_)) {
                    return Ok(cluster);
                }
                Ok(Arc::new(crate::client_tables::ClientScansExec::new(
                    cluster,
                    tables,
                    self.inline_limit,
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionContext;

    fn place(plan: &LogicalPlan) -> datafusion::error::Result<Placement> {
        placement(plan, None)
    }

    #[tokio::test]
    async fn plans_go_to_the_cluster_unless_they_read_only_local_tables() {
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
            place(&plan("SELECT a FROM files WHERE b > 1").await).unwrap(),
            Placement::Cluster
        );
        assert_eq!(place(&plan("SELECT 1").await).unwrap(), Placement::Cluster);
        assert_eq!(
            place(&plan("SELECT * FROM information_schema.tables").await).unwrap(),
            Placement::Local
        );
        // Tables executors cannot read go to the cluster as rows this process reads.
        for sql in [
            "SELECT * FROM files WHERE a IN (SELECT column1 FROM mem)",
            "SELECT * FROM files CROSS JOIN information_schema.schemata",
        ] {
            assert_eq!(
                place(&plan(sql).await).unwrap(),
                Placement::Cluster,
                "{sql}"
            );
        }
        let scans = |p: &LogicalPlan| {
            let mut scans = Vec::new();
            p.apply_with_subqueries(|n| {
                if let LogicalPlan::TableScan(s) = n {
                    scans.push((
                        s.table_name.to_string(),
                        readable(s, None).map_err(|why| why.contains("held by this process")),
                    ));
                }
                Ok(TreeNodeRecursion::Continue)
            })
            .unwrap();
            scans.sort();
            scans
        };
        assert_eq!(
            scans(&plan("SELECT * FROM files WHERE a IN (SELECT column1 FROM mem)").await),
            vec![
                ("files".to_string(), Ok(())),
                ("mem".to_string(), Err(true))
            ]
        );
        assert_eq!(
            scans(&plan("SELECT * FROM files CROSS JOIN information_schema.schemata").await),
            vec![
                ("files".to_string(), Ok(())),
                ("information_schema.schemata".to_string(), Err(false))
            ]
        );
    }
}
