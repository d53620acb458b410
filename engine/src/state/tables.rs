//! The state store as live system tables: `system.runs`, `system.steps`, `system.watermarks`
//! and `system.quality_results` read the store on every scan, so a long-running server (or a
//! pipeline querying its own history) sees runs recorded after it started.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::error::{DataFusionError, Result};

use super::{StateStore, checks_batch, runs_batch, steps_batch, watermarks_batch};
use crate::system::SystemRows;

/// One of the state store's tables.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Which {
    Runs,
    Steps,
    Watermarks,
    QualityResults,
}

pub(crate) const ALL: [Which; 4] = [
    Which::Runs,
    Which::Steps,
    Which::Watermarks,
    Which::QualityResults,
];

impl Which {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Which::Runs => "runs",
            Which::Steps => "steps",
            Which::Watermarks => "watermarks",
            Which::QualityResults => "quality_results",
        }
    }
}

/// A state store table, read when scanned.
#[derive(Debug)]
pub(crate) struct StateTable {
    which: Which,
    store: Arc<dyn StateStore>,
    schema: SchemaRef,
}

impl StateTable {
    pub(crate) fn new(
        which: Which,
        store: Arc<dyn StateStore>,
    ) -> std::result::Result<Self, arrow::error::ArrowError> {
        let empty = match which {
            Which::Runs => runs_batch(&[])?,
            Which::Steps => steps_batch(&[])?,
            Which::Watermarks => watermarks_batch(&[])?,
            Which::QualityResults => checks_batch(&[])?,
        };
        Ok(Self {
            which,
            store,
            schema: empty.schema(),
        })
    }
}

fn store_err(e: impl std::error::Error + Send + Sync + 'static) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

#[async_trait]
impl SystemRows for StateTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    async fn rows(&self, _session: &dyn Session) -> Result<Vec<RecordBatch>> {
        let batch = match self.which {
            Which::Runs => runs_batch(&self.store.runs(None).await.map_err(store_err)?)?,
            Which::Steps => {
                let mut steps = Vec::new();
                for run in self.store.runs(None).await.map_err(store_err)? {
                    steps.extend(self.store.steps(&run.run_id).await.map_err(store_err)?);
                }
                steps_batch(&steps)?
            }
            Which::Watermarks => {
                watermarks_batch(&self.store.watermarks(None).await.map_err(store_err)?)?
            }
            Which::QualityResults => checks_batch(&self.store.checks().await.map_err(store_err)?)?,
        };
        Ok(vec![batch])
    }
}
