//! Single-threaded decode speed of the tolerant CSV decoder against arrow-csv on one file, for
//! profiling the decoder itself (the end-to-end benchmark is `benches/tolerant.py`).
//!
//! `cargo run --release -p flowengine-connectors --example csv_decode -- lineitem.csv`
//! (TPC-H lineitem schema).

use std::sync::Arc;
use std::time::Instant;

use arrow::datatypes::{DataType, Field, Schema};
use flowengine_connectors::files::tolerant::csv_decoder::{CsvDecoder, CsvDialect};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .ok_or("usage: csv_decode FILE.csv")?;
    let bytes = std::fs::read(&path)?;
    let t = |n: &str, d: DataType| Field::new(n, d, true);
    let dec = DataType::Decimal128(15, 2);
    let schema = Arc::new(Schema::new(vec![
        t("l_orderkey", DataType::Int64),
        t("l_partkey", DataType::Int64),
        t("l_suppkey", DataType::Int64),
        t("l_linenumber", DataType::Int32),
        t("l_quantity", dec.clone()),
        t("l_extendedprice", dec.clone()),
        t("l_discount", dec.clone()),
        t("l_tax", dec),
        t("l_returnflag", DataType::Utf8),
        t("l_linestatus", DataType::Utf8),
        t("l_shipdate", DataType::Date32),
        t("l_commitdate", DataType::Date32),
        t("l_receiptdate", DataType::Date32),
        t("l_shipinstruct", DataType::Utf8),
        t("l_shipmode", DataType::Utf8),
        t("l_comment", DataType::Utf8),
    ]));
    let all: Vec<usize> = (0..16).collect();

    let started = Instant::now();
    let mut d = CsvDecoder::new(
        Arc::new(CsvDialect::default()),
        Arc::clone(&schema),
        all,
        8192,
        true,
    )?;
    let (mut rows, mut bad) = (0, 0);
    for chunk in bytes.chunks(1 << 20) {
        d.push(chunk);
        while let Some(o) = d.next_output() {
            rows += o.batch.map_or(0, |b| b.num_rows());
            bad += o.bad.len();
        }
    }
    d.finish();
    while let Some(o) = d.next_output() {
        rows += o.batch.map_or(0, |b| b.num_rows());
        bad += o.bad.len();
    }
    let ours = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let reader = arrow_csv::ReaderBuilder::new(schema)
        .with_header(true)
        .with_batch_size(8192)
        .build(std::io::Cursor::new(&bytes[..]))?;
    let mut theirs_rows = 0;
    for b in reader {
        match b {
            Ok(b) => theirs_rows += b.num_rows(),
            Err(e) => {
                println!("arrow-csv stopped: {e}");
                break;
            }
        }
    }
    let theirs = started.elapsed().as_secs_f64();
    println!(
        "tolerant: {rows} rows + {bad} bad in {ours:.2}s; arrow-csv: {theirs_rows} rows in {theirs:.2}s; ratio {:.2}x",
        theirs / ours
    );
    Ok(())
}
