//! `EXPECT` checks evaluated inside the scan of the write that follows them, so a check on a
//! source costs a predicate per batch instead of a second read of the source.
//!
//! ```sql
//! CREATE CHECK discount_range ON lineitem EXPECT l_discount BETWEEN 0 AND 0.1;
//! COPY (SELECT ... FROM lineitem WHERE ...) TO 'out.parquet';
//! ```
//!
//! While the write is planned, the checked table is replaced in the catalog by an
//! [`ObservedTable`]: its scans read every row (no filter or limit is pushed into them, and the
//! predicate's columns are added to the projection) through an [`ObserverExec`] that counts the
//! rows for which the predicate is not true and keeps the first five. The write itself is
//! unchanged above the scan. When the last partition of the scan ends, a failing `ERROR` check
//! fails the stream before its end, so the sink never commits, as if the check had run first.
//!
//! Only plans that read the whole table exactly once qualify: no joins (a hash join may stop
//! reading its probe side), no limits, no subqueries, one scan of the table. The caller checks
//! [`FusedChecks::plan_is_fusable`] and [`FusedChecks::each_scanned_once`] and otherwise runs
//! the checks on their own; it always calls [`FusedChecks::restore`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::cast::as_boolean_array;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{Constraints, DFSchema, TableReference};
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{Expr, LogicalPlan, TableProviderFilterPushDown};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use futures::StreamExt;

use super::quality::{Check, CheckOutcome, Severity};
use crate::Engine;

/// Rows of a failing sample.
const SAMPLE_ROWS: usize = 5;

/// What one check observed during the scan.
#[derive(Debug)]
struct Probe {
    check: Check,
    failing: AtomicU64,
    sample: Mutex<Vec<RecordBatch>>,
    /// Partitions of the scan, known when it executes, and how many have ended.
    partitions: AtomicUsize,
    finished: AtomicUsize,
    started: Instant,
}

impl Probe {
    fn observe(&self, failing: &Arc<dyn PhysicalExpr>, batch: &RecordBatch) -> Result<()> {
        let mask = failing.evaluate(batch)?.into_array(batch.num_rows())?;
        let mask = as_boolean_array(&mask)?;
        let n = mask.true_count();
        if n == 0 {
            return Ok(());
        }
        self.failing.fetch_add(n as u64, Ordering::Relaxed);
        let mut sample = self.sample.lock().unwrap_or_else(|p| p.into_inner());
        let have: usize = sample.iter().map(RecordBatch::num_rows).sum();
        if have < SAMPLE_ROWS {
            let rows = filter_record_batch(batch, mask)?;
            sample.push(rows.slice(0, rows.num_rows().min(SAMPLE_ROWS - have)));
        }
        Ok(())
    }

    fn complete(&self) -> bool {
        let total = self.partitions.load(Ordering::Acquire);
        total > 0 && self.finished.load(Ordering::Acquire) >= total
    }

    fn outcome(&self) -> Result<CheckOutcome> {
        let failing_rows = self.failing.load(Ordering::Relaxed);
        let sample = self.sample.lock().unwrap_or_else(|p| p.into_inner());
        Ok(CheckOutcome {
            failing_rows,
            sample: if failing_rows > 0 {
                Some(pretty_format_batches(&sample)?.to_string())
            } else {
                None
            },
            duration_ms: self.started.elapsed().as_millis() as u64,
        })
    }
}

/// The checks installed for one write.
#[derive(Debug)]
pub struct FusedChecks {
    probes: Vec<Arc<Probe>>,
    /// Per checked table: its name, its own provider, the observing one.
    tables: Vec<(TableReference, Arc<dyn TableProvider>, Arc<ObservedTable>)>,
}

/// Whether `check` could be evaluated in a scan at all (an `EXPECT` rule on a table, without a
/// dead-letter file, whose failing rows would have to be written in full).
pub fn fusable(check: &Check) -> bool {
    check.expect.is_some() && check.table.is_some() && check.dead_letter.is_none()
}

impl Engine {
    /// Install observers for `checks` (each [`fusable`]) in place of their tables; `None` when
    /// one of them cannot be evaluated in a scan (its table is unknown, its predicate has a
    /// subquery or does not compile), and nothing was changed.
    pub async fn observe_checks(&self, checks: &[Check]) -> Result<Option<FusedChecks>> {
        let ctx = self.context();
        let state = ctx.state();
        let mut by_table: BTreeMap<String, Vec<&Check>> = BTreeMap::new();
        for c in checks {
            match (&c.table, &c.expect, &c.dead_letter) {
                (Some(t), Some(_), None) => by_table.entry(t.clone()).or_default().push(c),
                _ => return Ok(None),
            }
        }
        let mut probes = Vec::new();
        let mut planned = Vec::new();
        for (table, checks) in by_table {
            let table = TableReference::parse_str(&table);
            let Ok(original) = ctx.table_provider(table.clone()).await else {
                return Ok(None);
            };
            let schema = original.schema();
            let df_schema = DFSchema::try_from(schema.as_ref().clone())?;
            let mut predicates = Vec::new();
            let mut needed = Vec::new();
            for check in checks {
                let Some(p) = &check.expect else {
                    return Ok(None);
                };
                let Ok(expr) = state.create_logical_expr(p, &df_schema) else {
                    return Ok(None);
                };
                if has_subquery(&expr)? {
                    return Ok(None);
                }
                let failing = Expr::IsNotTrue(Box::new(expr));
                if state
                    .create_physical_expr(failing.clone(), &df_schema)
                    .is_err()
                {
                    return Ok(None);
                }
                for c in failing.column_refs() {
                    if let Ok(i) = schema.index_of(c.name())
                        && !needed.contains(&i)
                    {
                        needed.push(i);
                    }
                }
                let probe = Arc::new(Probe {
                    check: check.clone(),
                    failing: AtomicU64::new(0),
                    sample: Mutex::default(),
                    partitions: AtomicUsize::new(0),
                    finished: AtomicUsize::new(0),
                    started: Instant::now(),
                });
                probes.push(Arc::clone(&probe));
                predicates.push((failing, probe));
            }
            let observed = Arc::new(ObservedTable {
                inner: Arc::clone(&original),
                predicates,
                needed,
                scans: AtomicUsize::new(0),
            });
            planned.push((table, original, observed));
        }
        for (table, _, observed) in &planned {
            ctx.deregister_table(table.clone())?;
            ctx.register_table(
                table.clone(),
                Arc::clone(observed) as Arc<dyn TableProvider>,
            )?;
        }
        Ok(Some(FusedChecks {
            probes,
            tables: planned,
        }))
    }
}

fn has_subquery(expr: &Expr) -> Result<bool> {
    expr.exists(|e| {
        Ok(matches!(
            e,
            Expr::InSubquery(_) | Expr::Exists(_) | Expr::ScalarSubquery(_)
        ))
    })
}

impl FusedChecks {
    /// Whether `plan` reads its tables in full: no joins, limits or subqueries.
    pub fn plan_is_fusable(&self, plan: &LogicalPlan) -> Result<bool> {
        let mut ok = true;
        plan.apply_with_subqueries(|node| {
            let bad = match node {
                LogicalPlan::Join(_)
                | LogicalPlan::Limit(_)
                | LogicalPlan::Subquery(_)
                | LogicalPlan::RecursiveQuery(_)
                | LogicalPlan::Extension(_) => true,
                LogicalPlan::Sort(s) => s.fetch.is_some(),
                _ => {
                    let mut sub = false;
                    for e in node.expressions() {
                        sub |= has_subquery(&e)?;
                    }
                    sub
                }
            };
            if bad {
                ok = false;
                return Ok(TreeNodeRecursion::Stop);
            }
            Ok(TreeNodeRecursion::Continue)
        })?;
        Ok(ok)
    }

    /// Whether planning scanned every observed table exactly once.
    pub fn each_scanned_once(&self) -> bool {
        self.tables
            .iter()
            .all(|(_, _, o)| o.scans.load(Ordering::Acquire) == 1)
    }

    /// Put the tables' own providers back in the catalog.
    pub fn restore(&self, engine: &Engine) -> Result<()> {
        let ctx = engine.context();
        for (table, original, _) in &self.tables {
            ctx.deregister_table(table.clone())?;
            ctx.register_table(table.clone(), Arc::clone(original))?;
        }
        Ok(())
    }

    /// Each check with its outcome, `None` when its scan did not run to the end (the write
    /// failed or was cancelled before).
    pub fn outcomes(&self) -> Result<Vec<(Check, Option<CheckOutcome>)>> {
        self.probes
            .iter()
            .map(|p| {
                let outcome = if p.complete() {
                    Some(p.outcome()?)
                } else {
                    None
                };
                Ok((p.check.clone(), outcome))
            })
            .collect()
    }
}

/// A table whose scans are observed by checks.
#[derive(Debug)]
struct ObservedTable {
    inner: Arc<dyn TableProvider>,
    /// Each check's failing-row predicate (`(p) IS NOT TRUE`) and its probe.
    predicates: Vec<(Expr, Arc<Probe>)>,
    /// Columns (of the table) the predicates read.
    needed: Vec<usize>,
    scans: AtomicUsize,
}

#[async_trait]
impl TableProvider for ObservedTable {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    fn table_type(&self) -> TableType {
        self.inner.table_type()
    }

    fn constraints(&self) -> Option<&Constraints> {
        self.inner.constraints()
    }

    /// No filter goes into the scan: the checks see every row.
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
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.scans.fetch_add(1, Ordering::AcqRel);
        let width = self.inner.schema().fields().len();
        let wanted: Vec<usize> = projection.cloned().unwrap_or_else(|| (0..width).collect());
        let mut columns = wanted.clone();
        for i in &self.needed {
            if !columns.contains(i) {
                columns.push(*i);
            }
        }
        let plan = self.inner.scan(state, Some(&columns), &[], None).await?;
        let df_schema = DFSchema::try_from(plan.schema().as_ref().clone())?;
        let probes = self
            .predicates
            .iter()
            .map(|(e, p)| {
                Ok((
                    state.create_physical_expr(e.clone(), &df_schema)?,
                    Arc::clone(p),
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let observed: Arc<dyn ExecutionPlan> = Arc::new(ObserverExec {
            input: plan,
            probes,
        });
        if columns.len() == wanted.len() {
            return Ok(observed);
        }
        // Drop the columns only the checks needed.
        let schema = observed.schema();
        let exprs = (0..wanted.len())
            .map(|i| {
                let name = schema.field(i).name().to_string();
                (
                    Arc::new(Column::new(&name, i)) as Arc<dyn PhysicalExpr>,
                    name,
                )
            })
            .collect::<Vec<_>>();
        Ok(Arc::new(ProjectionExec::try_new(exprs, observed)?))
    }

    async fn insert_into(
        &self,
        state: &dyn Session,
        input: Arc<dyn ExecutionPlan>,
        op: InsertOp,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.inner.insert_into(state, input, op).await
    }
}

/// Passes its input through, evaluating the checks' predicates on every batch.
#[derive(Debug)]
struct ObserverExec {
    input: Arc<dyn ExecutionPlan>,
    probes: Vec<(Arc<dyn PhysicalExpr>, Arc<Probe>)>,
}

impl DisplayAs for ObserverExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self
            .probes
            .iter()
            .map(|(_, p)| p.check.name.as_str())
            .collect();
        write!(f, "CheckObserverExec: checks=[{}]", names.join(", "))
    }
}

impl ExecutionPlan for ObserverExec {
    fn name(&self) -> &str {
        "CheckObserverExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        for (e, _) in &self.probes {
            if f(e)? == TreeNodeRecursion::Stop {
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        match (children.pop(), children.is_empty()) {
            (Some(input), true) => Ok(Arc::new(Self {
                input,
                probes: self.probes.clone(),
            })),
            _ => Err(DataFusionError::Internal(
                "CheckObserverExec has one child".into(),
            )),
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let partitions = self.properties().partitioning.partition_count();
        for (_, p) in &self.probes {
            p.partitions.store(partitions, Ordering::Release);
        }
        let input = self.input.execute(partition, context)?;
        let schema = input.schema();
        let probes = self.probes.clone();
        let observed = input.map(move |batch| {
            let batch = batch?;
            for (failing, probe) in &probes {
                probe.observe(failing, &batch)?;
            }
            Ok(batch)
        });
        let probes = self.probes.clone();
        // After the partition's last batch: the last partition to end fails a failing ERROR
        // check before the stream ends, so the sink above never commits.
        let end = futures::stream::once(async move {
            let mut last = false;
            for (_, p) in &probes {
                last |= p.finished.fetch_add(1, Ordering::AcqRel) + 1 == partitions;
            }
            if !last {
                return None;
            }
            let failed: Vec<String> = probes
                .iter()
                .filter(|(_, p)| {
                    p.check.severity == Severity::Error && p.failing.load(Ordering::Relaxed) > 0
                })
                .map(|(_, p)| {
                    format!(
                        "check {}: {} failing row(s)",
                        p.check.name,
                        p.failing.load(Ordering::Relaxed)
                    )
                })
                .collect();
            (!failed.is_empty())
                .then(|| Err::<RecordBatch, _>(DataFusionError::Execution(failed.join("; "))))
        })
        .filter_map(|end| async move { end });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            schema,
            observed.chain(end),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::quality;

    fn check(sql: &str) -> Check {
        quality::parse(sql).expect("a check").expect("valid")
    }

    #[tokio::test]
    async fn checks_observe_every_row_of_a_filtered_scan() {
        let engine = Engine::try_new(&Default::default(), &Default::default()).expect("engine");
        let ctx = engine.context();
        ctx.sql(
            "CREATE TABLE t AS SELECT value AS id, value % 10 AS d FROM generate_series(1, 1000)",
        )
        .await
        .expect("create")
        .collect()
        .await
        .expect("run");
        let checks = [
            check("CREATE CHECK small ON t EXPECT d < 9 WARN"),
            check("CREATE CHECK ids ON t EXPECT id > 0"),
        ];
        let fused = engine
            .observe_checks(&checks)
            .await
            .expect("observe")
            .expect("fusable");
        // The query reads one column and filters most rows away; the checks still see all.
        let df = ctx
            .sql("SELECT id FROM t WHERE id <= 10")
            .await
            .expect("plan");
        assert!(fused.plan_is_fusable(df.logical_plan()).expect("walk"));
        let rows = df.collect().await.expect("run");
        assert_eq!(rows.iter().map(RecordBatch::num_rows).sum::<usize>(), 10);
        assert!(fused.each_scanned_once());
        let outcomes = fused.outcomes().expect("outcomes");
        let small = outcomes[0].1.as_ref().expect("complete");
        assert_eq!(small.failing_rows, 100);
        assert!(
            small.sample.as_deref().unwrap_or("").contains("| 9 "),
            "{small:?}"
        );
        assert_eq!(outcomes[1].1.as_ref().expect("complete").failing_rows, 0);
        fused.restore(&engine).expect("restore");
        // A failing ERROR check fails the stream.
        let fused = engine
            .observe_checks(&[check("CREATE CHECK few ON t EXPECT id < 500")])
            .await
            .expect("observe")
            .expect("fusable");
        let err = ctx
            .sql("SELECT count(*) FROM t")
            .await
            .expect("plan")
            .collect()
            .await
            .expect_err("the check fails the query");
        assert!(
            err.to_string().contains("check few: 501 failing row(s)"),
            "{err}"
        );
        fused.restore(&engine).expect("restore");
        // Subqueries and joins are not evaluated in a scan.
        assert!(
            engine
                .observe_checks(&[check("CREATE CHECK s ON t EXPECT id IN (SELECT id FROM t)")])
                .await
                .expect("observe")
                .is_none()
        );
        let fused = engine
            .observe_checks(&[check("CREATE CHECK j ON t EXPECT id > 0")])
            .await
            .expect("observe")
            .expect("fusable");
        let join = ctx
            .sql("SELECT a.id FROM t a JOIN t b ON a.id = b.id")
            .await
            .expect("plan");
        assert!(!fused.plan_is_fusable(join.logical_plan()).expect("walk"));
        fused.restore(&engine).expect("restore");
        assert_eq!(
            ctx.sql("SELECT count(*) FROM t WHERE id > 995")
                .await
                .expect("plan")
                .collect()
                .await
                .expect("run")[0]
                .num_rows(),
            1
        );
    }
}
