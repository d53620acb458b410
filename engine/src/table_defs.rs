//! What each table of a session was created from, so it can be created again elsewhere.
//!
//! A table of FlowEngine's own connectors (a database table, a NATS subject, a REST source) is
//! a provider object living in this process. To read it on a cluster node, the node opens the
//! same table itself from the same `CREATE EXTERNAL TABLE`, with secret references resolved
//! from its own secrets. [`TableDefinitions`] is a session config extension that keeps, for
//! every provider a table factory created, the statement it was created from (as written:
//! `${secret:NAME}` references unresolved); [`record_definitions`] wraps the session's table
//! factories so every `CREATE EXTERNAL TABLE` is recorded.

use std::fmt;
use std::sync::{Arc, Mutex, Weak};

use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider, TableProviderFactory};
use datafusion::error::Result;
use datafusion::execution::SessionStateBuilder;
use datafusion::logical_expr::CreateExternalTable;

/// A provider (held weakly, so dropping a table drops it) and its statement.
type Entry = (Weak<dyn TableProvider>, Arc<CreateExternalTable>);

/// The `CREATE EXTERNAL TABLE` each live provider of a session was created from.
#[derive(Default)]
pub struct TableDefinitions {
    entries: Mutex<Vec<Entry>>,
}

impl fmt::Debug for TableDefinitions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let entries = self.lock();
        let names: Vec<String> = entries.iter().map(|(_, c)| c.name.to_string()).collect();
        f.debug_struct("TableDefinitions")
            .field("tables", &names)
            .finish()
    }
}

impl TableDefinitions {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Remember that `provider` was created from `cmd`; entries of dropped providers go.
    pub fn record(&self, provider: &Arc<dyn TableProvider>, cmd: &CreateExternalTable) {
        let mut entries = self.lock();
        entries.retain(|(weak, _)| weak.strong_count() > 0);
        entries.push((Arc::downgrade(provider), Arc::new(cmd.clone())));
    }

    /// The statement `provider` was created from, when a table factory of this session made it.
    pub fn definition_of(
        &self,
        provider: &Arc<dyn TableProvider>,
    ) -> Option<Arc<CreateExternalTable>> {
        let wanted = Arc::as_ptr(provider);
        self.lock()
            .iter()
            .find(|(weak, _)| std::ptr::addr_eq(weak.as_ptr(), wanted))
            .map(|(_, cmd)| Arc::clone(cmd))
    }
}

/// A table factory that records what it creates in [`TableDefinitions`].
#[derive(Debug)]
struct RecordingFactory {
    inner: Arc<dyn TableProviderFactory>,
    definitions: Arc<TableDefinitions>,
}

#[async_trait]
impl TableProviderFactory for RecordingFactory {
    async fn create(
        &self,
        state: &dyn Session,
        cmd: &CreateExternalTable,
    ) -> Result<Arc<dyn TableProvider>> {
        let provider = self.inner.create(state, cmd).await?;
        self.definitions.record(&provider, cmd);
        Ok(provider)
    }
}

/// Wrap every table factory of `builder` so its tables are recorded in `definitions`.
pub fn record_definitions(
    mut builder: SessionStateBuilder,
    definitions: &Arc<TableDefinitions>,
) -> SessionStateBuilder {
    if let Some(factories) = builder.table_factories() {
        for factory in factories.values_mut() {
            *factory = Arc::new(RecordingFactory {
                inner: Arc::clone(factory),
                definitions: Arc::clone(definitions),
            });
        }
    }
    builder
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionContext;

    #[tokio::test]
    async fn created_tables_are_recorded_until_dropped() {
        let definitions = Arc::new(TableDefinitions::default());
        let builder = SessionStateBuilder::new().with_default_features();
        let state = record_definitions(builder, &definitions).build();
        let ctx = SessionContext::new_with_state(state);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("t.csv"), "a\n1\n").unwrap();
        ctx.sql(&format!(
            "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '{}/t.csv' \
             OPTIONS ('format.has_header' 'true')",
            dir.path().display()
        ))
        .await
        .unwrap();
        let provider = ctx.table_provider("t").await.unwrap();
        let cmd = definitions.definition_of(&provider).unwrap();
        assert_eq!(cmd.name.table(), "t");
        assert_eq!(cmd.file_type, "CSV");
        ctx.sql("CREATE TABLE m AS VALUES (1)").await.unwrap();
        let other = ctx.table_provider("m").await.unwrap();
        assert!(definitions.definition_of(&other).is_none());
        ctx.deregister_table("t").unwrap();
        drop(provider);
        // The next table recorded prunes the dropped one.
        ctx.sql(&format!(
            "CREATE EXTERNAL TABLE t2 STORED AS CSV LOCATION '{}/t.csv'",
            dir.path().display()
        ))
        .await
        .unwrap();
        let names: Vec<String> = definitions
            .lock()
            .iter()
            .map(|(_, c)| c.name.to_string())
            .collect();
        assert_eq!(names, ["t2"]);
    }
}
