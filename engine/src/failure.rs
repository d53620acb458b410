//! Where a statement failed, when the error that stopped it does not say.
//!
//! Some readers report a bad record without naming its file, or with a line number counted
//! from the start of the byte range they read (DataFusion's CSV reader: `Csv error: incorrect
//! number of fields for line 3`). A connector can offer a [`FailureLocator`]: when a
//! statement's stream fails, the locators look at the statement's plan and the error and may
//! return an error that names the file, line and byte offset. They run only on the failure
//! path; a statement that succeeds never pays for them.

use std::fmt::Debug;
use std::sync::Arc;

use datafusion::error::DataFusionError;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::StreamExt;
use futures::future::BoxFuture;

/// A connector's way of finding where a failure happened.
pub trait FailureLocator: Debug + Send + Sync {
    /// An error saying where `error`, raised while executing `plan`, happened; `None` when this
    /// locator cannot tell.
    fn locate<'a>(
        &'a self,
        plan: &'a Arc<dyn ExecutionPlan>,
        error: &'a DataFusionError,
        task: &'a Arc<TaskContext>,
    ) -> BoxFuture<'a, Option<DataFusionError>>;
}

/// The locators the session's connectors offer (a session config extension).
#[derive(Debug, Default, Clone)]
pub struct FailureLocators(pub Vec<Arc<dyn FailureLocator>>);

impl FailureLocators {
    /// `stream`, whose first error is handed to the locators before it reaches the caller.
    pub fn watch(
        &self,
        stream: SendableRecordBatchStream,
        plan: &Arc<dyn ExecutionPlan>,
        task: &Arc<TaskContext>,
    ) -> SendableRecordBatchStream {
        if self.0.is_empty() {
            return stream;
        }
        let schema = stream.schema();
        let locators = Arc::new(self.0.clone());
        let plan = Arc::clone(plan);
        let task = Arc::clone(task);
        let watched = stream.then(move |item| {
            let locators = Arc::clone(&locators);
            let plan = Arc::clone(&plan);
            let task = Arc::clone(&task);
            async move {
                let error = match item {
                    Ok(batch) => return Ok(batch),
                    Err(e) => e,
                };
                for locator in locators.iter() {
                    if let Some(located) = locator.locate(&plan, &error, &task).await {
                        return Err(located);
                    }
                }
                Err(error)
            }
        });
        Box::pin(RecordBatchStreamAdapter::new(schema, watched))
    }
}
