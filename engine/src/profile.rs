//! Column profiles of a table, file or query (`flowengine profile`): per column the type, null
//! count and share, approximate distinct count, min/max, mean/stddev (numbers), length range
//! (strings), the most frequent values, and an equal-width histogram (numbers).
//!
//! The statistics come from one aggregate query over the source; the top values and histogram
//! take one grouped query per column.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::error::{DataFusionError, Result};
use datafusion::prelude::SessionContext;

fn q(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `v` to `places` decimal places (statistics, not exact values: `46.81578`, not
/// `46.81577999999999`); values too large for that to matter are left as they are.
fn rounded(v: f64, places: i32) -> f64 {
    let scale = 10f64.powi(places);
    if !v.is_finite() || v.abs() >= 1e15 / scale {
        return v;
    }
    (v * scale).round() / scale
}

fn is_numeric(t: &DataType) -> bool {
    t.is_numeric()
}

fn is_text(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

fn is_orderable(t: &DataType) -> bool {
    t.is_numeric() || is_text(t) || t.is_temporal() || matches!(t, DataType::Boolean)
}

async fn one_row(ctx: &SessionContext, sql: &str) -> Result<RecordBatch> {
    let batches = ctx.sql(sql).await?.collect().await?;
    let schema = batches
        .first()
        .map(|b| b.schema())
        .ok_or_else(|| DataFusionError::Internal("profile query returned nothing".into()))?;
    Ok(arrow::compute::concat_batches(&schema, &batches)?)
}

fn text_at(batch: &RecordBatch, name: &str) -> Option<String> {
    let col = batch.column_by_name(name)?;
    if col.is_null(0) {
        return None;
    }
    let s = cast(col, &DataType::Utf8).ok()?;
    Some(s.as_string::<i32>().value(0).to_string())
}

fn f64_at(batch: &RecordBatch, name: &str) -> Option<f64> {
    let col = batch.column_by_name(name)?;
    if col.is_null(0) {
        return None;
    }
    let v = cast(col, &DataType::Float64).ok()?;
    Some(v.as_primitive::<arrow::datatypes::Float64Type>().value(0))
}

/// Profile `source` (a table name or a query).
pub async fn profile(
    ctx: &SessionContext,
    source: &str,
    top: usize,
    bins: usize,
) -> Result<RecordBatch> {
    let trimmed = source.trim().trim_end_matches(';');
    let lower = trimmed.to_ascii_lowercase();
    let from = if lower.starts_with("select")
        || lower.starts_with("with")
        || lower.starts_with("values")
    {
        format!("({trimmed})")
    } else {
        trimmed.to_string()
    };
    let schema = ctx
        .sql(&format!("SELECT * FROM {from} AS t"))
        .await?
        .schema()
        .as_arrow()
        .clone();

    // Pass 1: every statistic of every column in one aggregate.
    let mut exprs = vec!["count(*) AS \"__rows\"".to_string()];
    for (i, f) in schema.fields().iter().enumerate() {
        let c = q(f.name());
        let t = f.data_type();
        exprs.push(format!("count({c}) AS \"nn{i}\""));
        exprs.push(format!("approx_distinct(CAST({c} AS VARCHAR)) AS \"d{i}\""));
        if is_orderable(t) {
            exprs.push(format!("CAST(min({c}) AS VARCHAR) AS \"min{i}\""));
            exprs.push(format!("CAST(max({c}) AS VARCHAR) AS \"max{i}\""));
        }
        if is_numeric(t) {
            exprs.push(format!("avg(CAST({c} AS DOUBLE)) AS \"avg{i}\""));
            exprs.push(format!("stddev(CAST({c} AS DOUBLE)) AS \"sd{i}\""));
        }
        if is_text(t) {
            exprs.push(format!("min(character_length({c})) AS \"minlen{i}\""));
            exprs.push(format!("max(character_length({c})) AS \"maxlen{i}\""));
        }
    }
    let stats = one_row(
        ctx,
        &format!("SELECT {} FROM {from} AS t", exprs.join(", ")),
    )
    .await?;
    let rows = f64_at(&stats, "__rows").unwrap_or(0.0) as i64;

    let mut out_name = Vec::new();
    let mut out_type = Vec::new();
    let mut out_nulls = Vec::new();
    let mut out_null_pct = Vec::new();
    let mut out_distinct = Vec::new();
    let mut out_min = Vec::new();
    let mut out_max = Vec::new();
    let mut out_mean = Vec::new();
    let mut out_sd = Vec::new();
    let mut out_len = Vec::new();
    let mut out_top = Vec::new();
    let mut out_hist = Vec::new();
    for (i, f) in schema.fields().iter().enumerate() {
        let c = q(f.name());
        let non_null = f64_at(&stats, &format!("nn{i}")).unwrap_or(0.0) as i64;
        out_name.push(f.name().clone());
        out_type.push(f.data_type().to_string());
        out_nulls.push(rows - non_null);
        out_null_pct.push(if rows > 0 {
            rounded(100.0 * (rows - non_null) as f64 / rows as f64, 2)
        } else {
            0.0
        });
        // The estimate can exceed the exact number of values it estimates: never report more
        // distinct values than non-null ones.
        out_distinct.push((f64_at(&stats, &format!("d{i}")).unwrap_or(0.0) as i64).min(non_null));
        out_min.push(text_at(&stats, &format!("min{i}")));
        out_max.push(text_at(&stats, &format!("max{i}")));
        out_mean.push(f64_at(&stats, &format!("avg{i}")).map(|v| rounded(v, 6)));
        out_sd.push(f64_at(&stats, &format!("sd{i}")).map(|v| rounded(v, 6)));
        out_len.push(
            match (
                f64_at(&stats, &format!("minlen{i}")),
                f64_at(&stats, &format!("maxlen{i}")),
            ) {
                (Some(a), Some(b)) => Some(format!("{a}..{b}")),
                _ => None,
            },
        );
        // Most frequent values.
        let top_sql = format!(
            "SELECT CAST({c} AS VARCHAR) AS v, count(*) AS n FROM {from} AS t \
             WHERE {c} IS NOT NULL GROUP BY {c} ORDER BY n DESC, v LIMIT {top}"
        );
        let batches = ctx.sql(&top_sql).await?.collect().await?;
        let mut tops = Vec::new();
        for b in &batches {
            let v = cast(b.column(0), &DataType::Utf8)?;
            let v = v.as_string::<i32>();
            let n = cast(b.column(1), &DataType::Int64)?;
            let n = n.as_primitive::<arrow::datatypes::Int64Type>();
            for r in 0..b.num_rows() {
                tops.push(format!("{} ({})", v.value(r), n.value(r)));
            }
        }
        out_top.push((!tops.is_empty()).then(|| tops.join(", ")));
        // Equal-width histogram for numbers.
        let bound = |name: String| {
            is_numeric(f.data_type())
                .then(|| text_at(&stats, &name))
                .flatten()
                .and_then(|t| t.parse::<f64>().ok())
        };
        let hist = match (bound(format!("min{i}")), bound(format!("max{i}"))) {
            (Some(lo), Some(hi)) if bins > 0 && hi > lo => {
                let width = (hi - lo) / bins as f64;
                let sql = format!(
                    "SELECT least(CAST(floor((CAST({c} AS DOUBLE) - {lo}) / {width}) AS BIGINT), {last}) AS b, \
                     count(*) AS n FROM {from} AS t WHERE {c} IS NOT NULL GROUP BY 1 ORDER BY 1",
                    last = bins - 1
                );
                let mut counts = vec![0i64; bins];
                for b in ctx.sql(&sql).await?.collect().await? {
                    let k = cast(b.column(0), &DataType::Int64)?;
                    let k = k.as_primitive::<arrow::datatypes::Int64Type>();
                    let n = cast(b.column(1), &DataType::Int64)?;
                    let n = n.as_primitive::<arrow::datatypes::Int64Type>();
                    for r in 0..b.num_rows() {
                        let slot = (k.value(r).max(0) as usize).min(bins - 1);
                        counts[slot] += n.value(r);
                    }
                }
                Some(format!(
                    "[{lo:.6}, {hi:.6}] in {bins} bins: {}",
                    counts
                        .iter()
                        .map(i64::to_string)
                        .collect::<Vec<_>>()
                        .join(" ")
                ))
            }
            (Some(lo), Some(_)) => Some(format!("all values = {lo}")),
            _ => None,
        };
        out_hist.push(hist);
    }
    let schema = Arc::new(Schema::new(vec![
        Field::new("column", DataType::Utf8, false),
        Field::new("type", DataType::Utf8, false),
        Field::new("rows", DataType::Int64, false),
        Field::new("nulls", DataType::Int64, false),
        Field::new("null_pct", DataType::Float64, false),
        Field::new("distinct_approx", DataType::Int64, false),
        Field::new("min", DataType::Utf8, true),
        Field::new("max", DataType::Utf8, true),
        Field::new("mean", DataType::Float64, true),
        Field::new("stddev", DataType::Float64, true),
        Field::new("length", DataType::Utf8, true),
        Field::new("top_values", DataType::Utf8, true),
        Field::new("histogram", DataType::Utf8, true),
    ]));
    let n = out_name.len();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(out_name)),
        Arc::new(StringArray::from(out_type)),
        Arc::new(Int64Array::from(vec![rows; n])),
        Arc::new(Int64Array::from(out_nulls)),
        Arc::new(Float64Array::from(out_null_pct)),
        Arc::new(Int64Array::from(out_distinct)),
        Arc::new(StringArray::from(out_min)),
        Arc::new(StringArray::from(out_max)),
        Arc::new(Float64Array::from(out_mean)),
        Arc::new(Float64Array::from(out_sd)),
        Arc::new(StringArray::from(out_len)),
        Arc::new(StringArray::from(out_top)),
        Arc::new(StringArray::from(out_hist)),
    ];
    Ok(RecordBatch::try_new(schema, columns)?)
}
