//! A push-based newline-delimited JSON decoder that isolates bad lines instead of failing.
//!
//! Lines are gathered into batches and decoded with arrow-json, all at once while the batch is
//! clean. When arrow-json rejects a batch (malformed JSON, a value of the wrong type, invalid
//! UTF-8, a line holding other than exactly one value), the batch is split in halves until each
//! bad line stands alone with arrow-json's reason; every good line is still decoded.

use std::collections::VecDeque;
use std::sync::Arc;

use arrow::array::{RecordBatch, RecordBatchOptions};
use arrow::compute::concat_batches;
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow_json::ReaderBuilder;

use super::input::{BadRow, Decoded, RecordDecoder};

/// A line of the current batch: its bytes in `pending` and its 1-based line number.
#[derive(Debug, Clone, Copy)]
struct Line {
    start: usize,
    end: usize,
    line: u64,
}

/// Decodes a byte stream of JSON lines into batches of `schema`'s projected columns plus bad
/// lines.
#[derive(Debug)]
pub struct JsonDecoder {
    schema: SchemaRef,
    projection: Vec<usize>,
    out_schema: SchemaRef,
    batch_size: usize,
    /// Unconsumed input; `pending[0]` is at stream offset `pending_base`.
    pending: Vec<u8>,
    pending_base: u64,
    /// Where the search for the next line end resumes.
    scan: usize,
    /// Start of the next line in `pending`.
    line_start: usize,
    /// Line number of the line starting at `line_start`.
    next_line: u64,
    lines: Vec<Line>,
    out: VecDeque<Decoded>,
    finished: bool,
}

impl JsonDecoder {
    pub fn new(
        schema: SchemaRef,
        projection: Vec<usize>,
        batch_size: usize,
    ) -> Result<Self, ArrowError> {
        let out_schema = Arc::new(schema.project(&projection)?);
        Ok(Self {
            schema,
            projection,
            out_schema,
            batch_size: batch_size.max(1),
            pending: Vec::new(),
            pending_base: 0,
            scan: 0,
            line_start: 0,
            next_line: 1,
            lines: Vec::new(),
            out: VecDeque::new(),
            finished: false,
        })
    }

    fn take_lines(&mut self, eof: bool) {
        loop {
            let end = match memchr::memchr(b'\n', &self.pending[self.scan..]) {
                Some(i) => self.scan + i,
                None if eof && self.line_start < self.pending.len() => self.pending.len(),
                None => {
                    self.scan = self.pending.len();
                    return;
                }
            };
            let mut text_end = end;
            if text_end > self.line_start && self.pending[text_end - 1] == b'\r' {
                text_end -= 1;
            }
            let blank = self.pending[self.line_start..text_end]
                .iter()
                .all(u8::is_ascii_whitespace);
            if !blank {
                self.lines.push(Line {
                    start: self.line_start,
                    end: text_end,
                    line: self.next_line,
                });
            }
            self.next_line += 1;
            self.line_start = (end + 1).min(self.pending.len());
            self.scan = self.line_start;
            if self.lines.len() >= self.batch_size {
                self.flush_batch();
            }
            if end == self.pending.len() {
                return;
            }
        }
    }

    fn flush_batch(&mut self) {
        if !self.lines.is_empty() {
            let mut good = Vec::new();
            let mut bad = Vec::new();
            self.decode_range(0, self.lines.len(), &mut good, &mut bad);
            let bad: Vec<BadRow> = bad
                .into_iter()
                .map(|(i, reason)| {
                    let l = self.lines[i];
                    BadRow {
                        offset: self.pending_base + l.start as u64,
                        line: l.line,
                        raw: self.pending[l.start..l.end].to_vec(),
                        reason,
                    }
                })
                .collect();
            let batch = self.assemble(good);
            match batch {
                Ok(batch) => self.out.push_back(Decoded { batch, bad }),
                Err(e) => {
                    // Cannot happen for batches arrow-json produced with one schema; never drop.
                    let all = self
                        .lines
                        .iter()
                        .map(|l| BadRow {
                            offset: self.pending_base + l.start as u64,
                            line: l.line,
                            raw: self.pending[l.start..l.end].to_vec(),
                            reason: format!("cannot assemble batch: {e}"),
                        })
                        .collect();
                    self.out.push_back(Decoded {
                        batch: None,
                        bad: all,
                    });
                }
            }
            self.lines.clear();
        }
        let keep_from = self.line_start;
        self.pending.drain(..keep_from);
        self.pending_base += keep_from as u64;
        self.scan -= keep_from;
        self.line_start = 0;
    }

    fn assemble(&self, good: Vec<RecordBatch>) -> Result<Option<RecordBatch>, ArrowError> {
        let rows: usize = good.iter().map(RecordBatch::num_rows).sum();
        if rows == 0 {
            return Ok(None);
        }
        let all = concat_batches(&self.schema, &good)?;
        let columns = self
            .projection
            .iter()
            .map(|&j| Arc::clone(all.column(j)))
            .collect();
        let options = RecordBatchOptions::new().with_row_count(Some(rows));
        RecordBatch::try_new_with_options(Arc::clone(&self.out_schema), columns, &options).map(Some)
    }

    /// Decode lines `a..b`, splitting until every bad line is alone.
    fn decode_range(
        &self,
        a: usize,
        b: usize,
        good: &mut Vec<RecordBatch>,
        bad: &mut Vec<(usize, String)>,
    ) {
        let bytes = &self.pending[self.lines[a].start..self.lines[b - 1].end];
        let n = b - a;
        match self.try_decode(bytes, n) {
            Ok(Some(batch)) if batch.num_rows() == n => good.push(batch),
            Ok(batch) if n == 1 => {
                let found = batch.map_or(0, |b| b.num_rows());
                bad.push((
                    a,
                    format!("expected one JSON object on the line, found {found}"),
                ));
            }
            Err(e) if n == 1 => bad.push((a, e.to_string())),
            _ => {
                let mid = a + n / 2;
                self.decode_range(a, mid, good, bad);
                self.decode_range(mid, b, good, bad);
            }
        }
    }

    fn try_decode(&self, bytes: &[u8], n: usize) -> Result<Option<RecordBatch>, ArrowError> {
        let mut decoder = ReaderBuilder::new(Arc::clone(&self.schema))
            .with_batch_size(n + 1)
            .build_decoder()?;
        let mut at = 0;
        while at < bytes.len() {
            let used = decoder.decode(&bytes[at..])?;
            if used == 0 {
                return Err(ArrowError::JsonError("more values than lines".into()));
            }
            at += used;
        }
        if decoder.has_partial_record() {
            return Err(ArrowError::JsonError("truncated JSON value".into()));
        }
        decoder.flush()
    }
}

impl RecordDecoder for JsonDecoder {
    fn push(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
        self.take_lines(false);
    }

    fn finish(&mut self) {
        if !self.finished {
            self.finished = true;
            self.take_lines(true);
            self.flush_batch();
        }
    }

    fn next_output(&mut self) -> Option<Decoded> {
        self.out.pop_front()
    }

    fn newlines(&self) -> u64 {
        self.next_line.saturating_sub(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::AsArray;
    use arrow::datatypes::{DataType, Field, Int64Type, Schema};

    fn decode(text: &[u8], chunk: usize, batch: usize) -> (Vec<i64>, Vec<BadRow>) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("name", DataType::Utf8, true),
        ]));
        let mut d = JsonDecoder::new(schema, vec![0], batch).unwrap();
        let mut ids = Vec::new();
        let mut bad = Vec::new();
        for c in text.chunks(chunk) {
            d.push(c);
            while let Some(o) = d.next_output() {
                ids.extend(
                    o.batch
                        .iter()
                        .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec()),
                );
                bad.extend(o.bad);
            }
        }
        d.finish();
        while let Some(o) = d.next_output() {
            ids.extend(
                o.batch
                    .iter()
                    .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec()),
            );
            bad.extend(o.bad);
        }
        (ids, bad)
    }

    #[test]
    fn bad_lines_are_isolated_with_their_line_and_offset() {
        let text = b"{\"id\":1,\"name\":\"a\"}\n{\"id\":\"x\"}\n\n{\"id\":3\n{\"id\":4}\n{\"id\":5} {\"id\":6}\n\xff\xfe\n{\"id\":7}";
        for chunk in [1, 3, 7, 1000] {
            for batch in [1, 2, 100] {
                let (ids, bad) = decode(text, chunk, batch);
                assert_eq!(ids, vec![1, 4, 7], "chunk {chunk} batch {batch}");
                let lines: Vec<u64> = bad.iter().map(|b| b.line).collect();
                assert_eq!(
                    lines,
                    vec![2, 4, 6, 7],
                    "chunk {chunk} batch {batch}: {bad:?}"
                );
                assert_eq!(bad[0].offset, 20);
                assert_eq!(bad[0].raw, b"{\"id\":\"x\"}");
            }
        }
    }
}
