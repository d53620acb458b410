//! Lineage from logical plans: for a statement that writes (`INSERT`, `COPY`, `CREATE TABLE AS`)
//! or defines a view, which tables it reads and which source columns feed each target column.
//!
//! Column lineage follows the plan bottom-up: a table scan's columns are themselves; a projection,
//! aggregate or window column is fed by the columns its expression references; joins concatenate
//! their sides, unions merge by position, and views are followed into their own plans. Tables read
//! only by subqueries (`IN (SELECT ...)`, `EXISTS`) are inputs without feeding a column.
//! [`openlineage_event`] renders one write as an OpenLineage `RunEvent`; [`sink`] sends it where
//! the configuration says.

pub mod sink;

use std::collections::BTreeSet;

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::source_as_provider;
use datafusion::logical_expr::{DdlStatement, Expr, JoinType, LogicalPlan};
use serde_json::{Value, json};

/// A source column: table (or file) and column name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ColumnRef {
    pub table: String,
    pub column: String,
}

/// What one statement writes and where its data comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lineage {
    /// `table`, `file` or `view`.
    pub kind: &'static str,
    /// Table name, or the file/directory URL a `COPY` writes.
    pub target: String,
    /// Every table the statement reads.
    pub inputs: BTreeSet<String>,
    /// Each target column and the source columns that feed it.
    pub columns: Vec<(String, BTreeSet<ColumnRef>)>,
}

/// The lineage of `plan` when it writes or defines a view; `None` for queries and other DDL.
pub fn of_plan(plan: &LogicalPlan) -> Option<Lineage> {
    let (kind, target, input) = match plan {
        LogicalPlan::Dml(d) => ("table", d.table_name.to_string(), d.input.as_ref()),
        LogicalPlan::Copy(c) => ("file", c.output_url.clone(), c.input.as_ref()),
        LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(t)) => {
            ("table", t.name.to_string(), t.input.as_ref())
        }
        LogicalPlan::Ddl(DdlStatement::CreateView(v)) => {
            ("view", v.name.to_string(), v.input.as_ref())
        }
        _ => return None,
    };
    let names = input.schema().fields().iter().map(|f| f.name().clone());
    Some(Lineage {
        kind,
        target,
        inputs: inputs(input),
        columns: names.zip(columns(input)).collect(),
    })
}

/// Every table scanned by `plan`, its subqueries and the views it reads.
fn inputs(plan: &LogicalPlan) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            match view_plan(scan) {
                Some(view) => out.extend(inputs(&view)),
                None => {
                    out.insert(scan.table_name.to_string());
                }
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    out
}

/// The plan behind a scanned view, if the scanned table is one.
fn view_plan(scan: &datafusion::logical_expr::TableScan) -> Option<LogicalPlan> {
    let provider = source_as_provider(&scan.source).ok()?;
    provider.get_logical_plan().map(|p| p.into_owned())
}

type Sets = Vec<BTreeSet<ColumnRef>>;

/// For each output column of `plan`, the source columns feeding it.
fn columns(plan: &LogicalPlan) -> Sets {
    let width = plan.schema().fields().len();
    let inputs: Vec<&LogicalPlan> = plan.inputs();
    let from_exprs = |exprs: &[Expr], input: &LogicalPlan| -> Sets {
        let cols = columns(input);
        exprs.iter().map(|e| feed(e, input, &cols)).collect()
    };
    let sets = match plan {
        LogicalPlan::TableScan(scan) => match view_plan(scan) {
            Some(view) => {
                let cols = columns(&view);
                match &scan.projection {
                    Some(p) => p
                        .iter()
                        .map(|&i| cols.get(i).cloned().unwrap_or_default())
                        .collect(),
                    None => cols,
                }
            }
            None => {
                let table = scan.table_name.to_string();
                scan.projected_schema
                    .fields()
                    .iter()
                    .map(|f| {
                        BTreeSet::from([ColumnRef {
                            table: table.clone(),
                            column: f.name().clone(),
                        }])
                    })
                    .collect()
            }
        },
        LogicalPlan::Projection(p) => from_exprs(&p.expr, &p.input),
        LogicalPlan::Aggregate(a) => {
            let mut exprs = a.group_expr.clone();
            exprs.extend(a.aggr_expr.iter().cloned());
            from_exprs(&exprs, &a.input)
        }
        LogicalPlan::Window(w) => {
            let mut sets = columns(&w.input);
            sets.extend(from_exprs(&w.window_expr, &w.input));
            sets
        }
        LogicalPlan::Join(j) => {
            let (l, r) = (columns(&j.left), columns(&j.right));
            match j.join_type {
                JoinType::LeftSemi | JoinType::LeftAnti | JoinType::LeftMark => l,
                JoinType::RightSemi | JoinType::RightAnti | JoinType::RightMark => r,
                _ => l.into_iter().chain(r).collect(),
            }
        }
        LogicalPlan::Union(_) => {
            let mut sets: Sets = vec![BTreeSet::new(); width];
            for input in &inputs {
                for (i, s) in columns(input).into_iter().enumerate().take(width) {
                    sets[i].extend(s);
                }
            }
            sets
        }
        _ => match inputs.as_slice() {
            [] => Vec::new(),
            // Filters, sorts, limits, aliases, distinct, repartitions: columns pass through.
            [one] if one.schema().fields().len() == width => columns(one),
            many => {
                let all: BTreeSet<ColumnRef> =
                    many.iter().flat_map(|p| columns(p)).flatten().collect();
                vec![all; width]
            }
        },
    };
    let mut sets = sets;
    sets.resize(width, BTreeSet::new());
    sets
}

/// The source columns an expression over `input` reads.
fn feed(expr: &Expr, input: &LogicalPlan, cols: &Sets) -> BTreeSet<ColumnRef> {
    let schema = input.schema();
    expr.column_refs()
        .into_iter()
        .filter_map(|c| schema.index_of_column(c).ok())
        .filter_map(|i| cols.get(i))
        .flatten()
        .cloned()
        .collect()
}

/// The lineage as an indented tree.
pub fn render_text(l: &Lineage) -> String {
    let mut out = format!("{} {}\n", l.kind, l.target);
    let inputs: Vec<&str> = l.inputs.iter().map(String::as_str).collect();
    out.push_str(&format!(
        "  reads: {}\n",
        if inputs.is_empty() {
            "(nothing)".into()
        } else {
            inputs.join(", ")
        }
    ));
    for (col, sources) in &l.columns {
        let from: Vec<String> = sources
            .iter()
            .map(|c| format!("{}.{}", c.table, c.column))
            .collect();
        let from = if from.is_empty() {
            "(computed)".to_string()
        } else {
            from.join(", ")
        };
        out.push_str(&format!("  {col} <- {from}\n"));
    }
    out
}

/// Graphviz edges (`"table.col" -> "target.col"`) for a set of lineages, one digraph.
pub fn render_dot(all: &[Lineage]) -> String {
    let q = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
    let mut out = String::from("digraph lineage {\n  rankdir=LR;\n  node [shape=box];\n");
    for l in all {
        for input in &l.inputs {
            out.push_str(&format!(
                "  {} -> {} [style=bold];\n",
                q(input),
                q(&l.target)
            ));
        }
        for (col, sources) in &l.columns {
            for s in sources {
                out.push_str(&format!(
                    "  {} -> {};\n",
                    q(&format!("{}.{}", s.table, s.column)),
                    q(&format!("{}.{col}", l.target))
                ));
            }
        }
    }
    out.push_str("}\n");
    out
}

/// The lineage as plain JSON.
pub fn to_json(l: &Lineage) -> Value {
    json!({
        "kind": l.kind,
        "target": l.target,
        "inputs": l.inputs,
        "columns": l.columns.iter().map(|(c, s)| json!({
            "column": c,
            "sources": s.iter().map(|r| json!({"table": r.table, "column": r.column})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

/// An OpenLineage `RunEvent` (COMPLETE) for one write of `job`.
pub fn openlineage_event(l: &Lineage, job: &str, run_id: &str, event_time: &str) -> Value {
    const NS: &str = "flowengine";
    let fields: serde_json::Map<String, Value> = l
        .columns
        .iter()
        .map(|(col, sources)| {
            (
                col.clone(),
                json!({"inputFields": sources.iter().map(|s| json!({
                    "namespace": NS, "name": s.table, "field": s.column,
                })).collect::<Vec<_>>()}),
            )
        })
        .collect();
    json!({
        "eventType": "COMPLETE",
        "eventTime": event_time,
        "producer": "https://github.com/flowengine/flowengine",
        "schemaURL": "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent",
        "run": {"runId": run_id},
        "job": {"namespace": NS, "name": job},
        "inputs": l.inputs.iter().map(|i| json!({"namespace": NS, "name": i})).collect::<Vec<_>>(),
        "outputs": [{
            "namespace": NS,
            "name": l.target,
            "facets": {"columnLineage": {
                "_producer": "https://github.com/flowengine/flowengine",
                "_schemaURL": "https://openlineage.io/spec/facets/1-1-0/ColumnLineageDatasetFacet.json",
                "fields": fields,
            }},
        }],
    })
}
