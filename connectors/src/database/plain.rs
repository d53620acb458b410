//! Type adjustments between Arrow and a database's writer:
//! - [`PlainRead`]: a read provider whose dictionary-encoded columns (database enums) are
//!   presented as their value type, so one table schema serves reads and the database writers,
//!   which insert plain values only.
//! - [`CastingWriter`]: a writer whose input columns are cast first (SQLite stores dates and
//!   times as ISO-8601 text, which its readers and SQLite's own date functions understand).
//! - [`SortedHere`]: keeps DataFusion from pushing a sort into a MySQL scan, whose `ORDER BY`
//!   cannot say where NULLs go (MySQL puts them first ascending) while the providers crate
//!   reports the requested order as met.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::Constraints;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::TableType;
use datafusion::error::DataFusionError;
use datafusion::error::Result;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::{CastExpr, Column};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};

/// `schema` with dictionary-encoded columns as their value type.
fn plain_schema(schema: &SchemaRef) -> SchemaRef {
    if !has_dictionary(schema) {
        return Arc::clone(schema);
    }
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Dictionary(_, value) => {
                f.as_ref().clone().with_data_type(value.as_ref().clone())
            }
            _ => f.as_ref().clone(),
        })
        .collect();
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

fn has_dictionary(schema: &SchemaRef) -> bool {
    schema
        .fields()
        .iter()
        .any(|f| matches!(f.data_type(), DataType::Dictionary(..)))
}

/// `inner` with [`plain_schema`]; scans decode dictionary columns.
#[derive(Debug)]
pub(crate) struct PlainRead {
    inner: Arc<dyn TableProvider>,
    schema: SchemaRef,
    /// Wrap scans in [`SortedHere`].
    sort_here: bool,
    /// Scans fail after this long (see [`super::deadline`]).
    timeout: Option<std::time::Duration>,
}

impl PlainRead {
    /// `inner` itself when it has no dictionary columns.
    pub(crate) fn wrap(inner: Arc<dyn TableProvider>) -> Arc<dyn TableProvider> {
        let schema = inner.schema();
        if !has_dictionary(&schema) {
            return inner;
        }
        Arc::new(Self {
            schema: plain_schema(&schema),
            inner,
            sort_here: false,
            timeout: None,
        })
    }

    /// [`PlainRead::wrap`], and sorts stay in DataFusion (MySQL); scans fail after `timeout`.
    pub(crate) fn wrap_sorting_here(
        inner: Arc<dyn TableProvider>,
        timeout: Option<std::time::Duration>,
    ) -> Arc<dyn TableProvider> {
        Arc::new(Self {
            schema: plain_schema(&inner.schema()),
            inner,
            sort_here: true,
            timeout,
        })
    }
}

#[async_trait]
impl TableProvider for PlainRead {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        self.inner.table_type()
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let mut plan = self.inner.scan(state, projection, filters, limit).await?;
        if self.sort_here {
            plan = Arc::new(SortedHere {
                input: plan,
                timeout: self.timeout,
            });
        }
        cast_columns(plan, |t| match t {
            DataType::Dictionary(_, value) => Some(value.as_ref().clone()),
            _ => None,
        })
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        self.inner.supports_filters_pushdown(filters)
    }
}

/// `plan` with the columns whose type `target` maps cast to that type (`plan` itself when none).
fn cast_columns(
    plan: Arc<dyn ExecutionPlan>,
    target: impl Fn(&DataType) -> Option<DataType>,
) -> Result<Arc<dyn ExecutionPlan>> {
    let schema = plan.schema();
    if !schema
        .fields()
        .iter()
        .any(|f| target(f.data_type()).is_some())
    {
        return Ok(plan);
    }
    let exprs = schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let col: Arc<dyn PhysicalExpr> = Arc::new(Column::new(f.name(), i));
            let expr: Arc<dyn PhysicalExpr> = match target(f.data_type()) {
                Some(t) => Arc::new(CastExpr::new(col, t, None)),
                None => col,
            };
            (expr, f.name().to_string())
        })
        .collect::<Vec<_>>();
    Ok(Arc::new(ProjectionExec::try_new(exprs, plan)?))
}

/// How SQLite stores a type its writer would otherwise store in a form readers misread: dates
/// and times as ISO-8601 text (the writer would store epoch numbers), decimals as REAL (the
/// writer stores a NULL decimal as empty text).
pub(crate) fn sqlite_storage_type(t: &DataType) -> Option<DataType> {
    match t {
        DataType::Date32
        | DataType::Date64
        | DataType::Time32(_)
        | DataType::Time64(_)
        | DataType::Timestamp(_, _) => Some(DataType::Utf8),
        DataType::Decimal32(..)
        | DataType::Decimal64(..)
        | DataType::Decimal128(..)
        | DataType::Decimal256(..) => Some(DataType::Float64),
        DataType::Dictionary(_, value) => Some(value.as_ref().clone()),
        _ => None,
    }
}

/// A writer whose inserts cast their input columns with `target` first.
pub(crate) struct CastingWriter {
    inner: Arc<dyn TableProvider>,
    target: fn(&DataType) -> Option<DataType>,
}

impl std::fmt::Debug for CastingWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CastingWriter")
            .field("inner", &self.inner)
            .finish()
    }
}

impl CastingWriter {
    pub(crate) fn wrap(
        inner: Arc<dyn TableProvider>,
        target: fn(&DataType) -> Option<DataType>,
    ) -> Arc<dyn TableProvider> {
        Arc::new(Self { inner, target })
    }
}

#[async_trait]
impl TableProvider for CastingWriter {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    fn table_type(&self) -> TableType {
        self.inner.table_type()
    }

    fn constraints(&self) -> Option<&Constraints> {
        self.inner.constraints()
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.inner.scan(state, projection, filters, limit).await
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        self.inner.supports_filters_pushdown(filters)
    }

    async fn insert_into(
        &self,
        state: &dyn Session,
        input: Arc<dyn ExecutionPlan>,
        op: InsertOp,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let input = cast_columns(input, self.target)?;
        self.inner.insert_into(state, input, op).await
    }

    async fn delete_from(
        &self,
        state: &dyn Session,
        filters: Vec<Expr>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.inner.delete_from(state, filters).await
    }

    async fn update(
        &self,
        state: &dyn Session,
        assignments: Vec<(String, Expr)>,
        filters: Vec<Expr>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.inner.update(state, assignments, filters).await
    }
}

/// Passes its input through and declines sort pushdown, so a `SortExec` above it sorts; with a
/// `timeout`, its streams fail once that has passed.
#[derive(Debug)]
pub(crate) struct SortedHere {
    input: Arc<dyn ExecutionPlan>,
    timeout: Option<std::time::Duration>,
}

impl DisplayAs for SortedHere {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SortedHere")
    }
}

impl ExecutionPlan for SortedHere {
    fn name(&self) -> &str {
        "SortedHere"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    /// Declared `false` so that sorts are neither moved below this node nor pushed through it.
    fn maintains_input_order(&self) -> Vec<bool> {
        vec![false]
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
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
            (Some(input), true) => Ok(Arc::new(Self {
                input,
                timeout: self.timeout,
            })),
            _ => Err(DataFusionError::Internal("SortedHere has one child".into())),
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let stream = self.input.execute(partition, context)?;
        Ok(match self.timeout {
            Some(t) => super::deadline::with_deadline(stream, t, "MySQL"),
            None => stream,
        })
    }
}
