//! Printing query results: a table (first N rows), or CSV / newline-delimited JSON streamed
//! batch by batch so large results never sit in memory.

use std::io::Write;

use anyhow::Result;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::pretty::pretty_format_batches;

use crate::cli::Format;

/// Receives the batches of one query result.
pub(crate) struct ResultPrinter<W: Write> {
    out: W,
    format: Format,
    max_rows: usize,
    /// Table format: rows kept for display.
    kept: Vec<RecordBatch>,
    kept_rows: usize,
    /// Rows seen in total.
    pub(crate) rows: u64,
    wrote_csv_header: bool,
}

impl<W: Write> ResultPrinter<W> {
    pub(crate) fn new(out: W, format: Format, max_rows: usize) -> Self {
        Self {
            out,
            format,
            max_rows,
            kept: Vec::new(),
            kept_rows: 0,
            rows: 0,
            wrote_csv_header: false,
        }
    }

    pub(crate) fn push(&mut self, batch: &RecordBatch) -> Result<()> {
        self.rows += batch.num_rows() as u64;
        match self.format {
            Format::Table => {
                if self.kept_rows < self.max_rows {
                    let take = (self.max_rows - self.kept_rows).min(batch.num_rows());
                    self.kept.push(batch.slice(0, take));
                    self.kept_rows += take;
                } else if self.kept.is_empty() {
                    // keep the schema for an all-hidden result
                    self.kept.push(batch.slice(0, 0));
                }
            }
            Format::Csv => {
                let mut writer = datafusion::arrow::csv::WriterBuilder::new()
                    .with_header(!self.wrote_csv_header)
                    .build(Vec::new());
                writer.write(batch)?;
                self.wrote_csv_header = true;
                self.out.write_all(&writer.into_inner())?;
            }
            Format::Json => {
                let mut writer = datafusion::arrow::json::LineDelimitedWriter::new(Vec::new());
                writer.write(batch)?;
                writer.finish()?;
                self.out.write_all(&writer.into_inner())?;
            }
        }
        Ok(())
    }

    /// Flush what remains; for tables, print the kept rows and a footer when rows were hidden.
    pub(crate) fn finish(mut self, schema_if_empty: Option<RecordBatch>) -> Result<u64> {
        if self.format == Format::Csv
            && !self.wrote_csv_header
            && let Some(empty) = &schema_if_empty
        {
            self.push(empty)?;
        }
        if self.format == Format::Table {
            if self.kept.is_empty()
                && let Some(empty) = schema_if_empty
            {
                self.kept.push(empty);
            }
            if !self.kept.is_empty() {
                writeln!(self.out, "{}", pretty_format_batches(&self.kept)?)?;
            }
            let hidden = self.rows.saturating_sub(self.kept_rows as u64);
            if hidden > 0 {
                writeln!(
                    self.out,
                    "({} rows, showing the first {}; use --max-rows or --format csv for all)",
                    self.rows, self.kept_rows
                )?;
            }
        }
        self.out.flush()?;
        Ok(self.rows)
    }
}
