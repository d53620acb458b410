//! A push-based CSV decoder that never gives up on a file: every record either becomes a row or
//! a [`BadRow`] with its byte offset, line, raw text and reason.
//!
//! Records are split with `csv_core` (as arrow-csv does) and typed with the same parsers as
//! arrow-csv, column by column, so clean data decodes like the strict reader. What the strict
//! reader would reject or silently mangle is caught per record:
//! - a wrong number of fields;
//! - invalid UTF-8;
//! - a value that does not parse as its column's type (or a NULL in a `NOT NULL` column);
//! - broken quoting: an unbalanced quote, or (unless `newlines_in_values`) a quoted field that
//!   runs over a line end. The bad record is then only its first line, and decoding restarts on
//!   the next line, so one stray quote cannot swallow the rest of the file.

use std::collections::VecDeque;
use std::sync::Arc;

use arrow::array::{BooleanArray, RecordBatch, RecordBatchOptions};
use arrow::compute::filter;
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use csv_core::{ReadRecordResult, Reader, ReaderBuilder, Terminator};
use regex::Regex;

use super::csv_columns::{Fields, build_column};
use super::input::{BadRow, Decoded, RecordDecoder};

/// A record longer than this (quoted newlines allowed) is taken as broken quoting.
const MAX_RECORD_BYTES: usize = 16 * 1024 * 1024;

/// How the CSV text is laid out.
#[derive(Debug, Clone)]
pub struct CsvDialect {
    pub delimiter: u8,
    pub quote: u8,
    pub escape: Option<u8>,
    pub terminator: Option<u8>,
    pub comment: Option<u8>,
    pub double_quote: bool,
    pub newlines_in_values: bool,
    /// Records with fewer fields than columns get NULLs for the missing ones.
    pub truncated_rows: bool,
    /// Values matching this are NULL; without it, the empty string is.
    pub null_regex: Option<Regex>,
}

impl Default for CsvDialect {
    fn default() -> Self {
        Self {
            delimiter: b',',
            quote: b'"',
            escape: None,
            terminator: None,
            comment: None,
            double_quote: true,
            newlines_in_values: false,
            truncated_rows: false,
            null_regex: None,
        }
    }
}

impl CsvDialect {
    fn reader(&self) -> Reader {
        let mut b = ReaderBuilder::new();
        b.delimiter(self.delimiter)
            .quote(self.quote)
            .escape(self.escape)
            .comment(self.comment)
            .double_quote(self.double_quote);
        if let Some(t) = self.terminator {
            b.terminator(Terminator::Any(t));
        }
        b.build()
    }

    pub(super) fn is_null(&self, s: &str) -> bool {
        match &self.null_regex {
            Some(r) => r.is_match(s),
            None => s.is_empty(),
        }
    }

    fn is_terminator(&self, b: u8) -> bool {
        match self.terminator {
            Some(t) => b == t,
            None => b == b'\n' || b == b'\r',
        }
    }
}

/// One buffered record: its raw bytes in `pending`, line, and where its fields are.
#[derive(Debug, Clone, Copy)]
pub(super) struct Rec {
    raw_start: usize,
    raw_end: usize,
    line: u64,
    pub(super) data_start: usize,
    pub(super) ends_start: usize,
}

/// Decodes a byte stream of CSV into batches of `schema`'s projected columns plus bad rows.
pub struct CsvDecoder {
    dialect: Arc<CsvDialect>,
    schema: SchemaRef,
    projection: Vec<usize>,
    out_schema: SchemaRef,
    batch_size: usize,
    reader: Reader,
    skip_header: bool,
    /// Unconsumed input; `pending[0]` is at stream offset `pending_base`.
    pending: Vec<u8>,
    pending_base: u64,
    pos: usize,
    rec_start: usize,
    /// Added to `reader.line()` (which restarts at 1 after a reset).
    line_base: u64,
    /// `reader.line()` when the current record started.
    reader_line_at_rec_start: u64,
    data: Vec<u8>,
    data_len: usize,
    ends: Vec<usize>,
    ends_len: usize,
    recs: Vec<Rec>,
    bad: Vec<BadRow>,
    out: VecDeque<Decoded>,
    finished: bool,
}

impl std::fmt::Debug for CsvDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CsvDecoder")
            .field("schema", &self.schema)
            .field("pending_base", &self.pending_base)
            .finish()
    }
}

impl RecordDecoder for CsvDecoder {
    fn push(&mut self, bytes: &[u8]) {
        CsvDecoder::push(self, bytes)
    }
    fn finish(&mut self) {
        CsvDecoder::finish(self)
    }
    fn next_output(&mut self) -> Option<Decoded> {
        CsvDecoder::next_output(self)
    }
    fn newlines(&self) -> u64 {
        (self.line_base + self.reader.line()).saturating_sub(1)
    }
}

impl CsvDecoder {
    /// `projection` lists the file columns to output; every column is validated regardless.
    pub fn new(
        dialect: Arc<CsvDialect>,
        schema: SchemaRef,
        projection: Vec<usize>,
        batch_size: usize,
        skip_header: bool,
    ) -> Result<Self, ArrowError> {
        if schema.fields().is_empty() {
            return Err(ArrowError::CsvError(
                "a CSV table needs at least one column".into(),
            ));
        }
        let out_schema = Arc::new(schema.project(&projection)?);
        Ok(Self {
            reader: dialect.reader(),
            dialect,
            schema,
            projection,
            out_schema,
            batch_size: batch_size.max(1),
            skip_header,
            pending: Vec::new(),
            pending_base: 0,
            pos: 0,
            rec_start: 0,
            line_base: 0,
            reader_line_at_rec_start: 1,
            data: vec![0; 64 * 1024],
            data_len: 0,
            ends: Vec::new(),
            ends_len: 0,
            recs: Vec::new(),
            bad: Vec::new(),
            out: VecDeque::new(),
            finished: false,
        })
    }

    /// The schema of the batches produced.
    pub fn output_schema(&self) -> &SchemaRef {
        &self.out_schema
    }

    /// Feed more bytes of the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
        self.parse(false);
    }

    /// The stream ended: decode what remains.
    pub fn finish(&mut self) {
        if !self.finished {
            self.finished = true;
            self.parse(true);
            self.flush_batch();
        }
    }

    /// The next decoded batch and the bad rows found with it.
    pub fn next_output(&mut self) -> Option<Decoded> {
        self.out.pop_front()
    }

    fn ncols(&self) -> usize {
        self.schema.fields().len()
    }

    fn parse(&mut self, eof: bool) {
        loop {
            if self.pos == self.pending.len() && !eof {
                self.check_partial_record();
                return;
            }
            if self.data.len() - self.data_len < 1024 {
                let grow = self.data.len().max(64 * 1024);
                self.data.resize(self.data.len() + grow, 0);
            }
            if self.ends.len() - self.ends_len < self.ncols() + 1 {
                let grow = (self.ncols() + 1) * 64;
                self.ends.resize(self.ends.len() + grow, 0);
            }
            let (res, nin, nout, nend) = self.reader.read_record(
                &self.pending[self.pos..],
                &mut self.data[self.data_len..],
                &mut self.ends[self.ends_len..],
            );
            self.pos += nin;
            self.data_len += nout;
            self.ends_len += nend;
            match res {
                ReadRecordResult::InputEmpty => {
                    if !eof {
                        self.check_partial_record();
                        return;
                    }
                }
                ReadRecordResult::OutputFull | ReadRecordResult::OutputEndsFull => {}
                ReadRecordResult::Record => self.end_record(),
                ReadRecordResult::End => return,
            }
        }
    }

    /// The record being read has no end yet: stop a runaway quoted field early.
    fn check_partial_record(&mut self) {
        let raw = &self.pending[self.rec_start..self.pos];
        let (skip, _) = self.leading_skip(raw);
        let body = &raw[skip..];
        let runaway = if self.dialect.newlines_in_values {
            body.len() > MAX_RECORD_BYTES
        } else {
            body.iter().any(|&b| self.dialect.is_terminator(b))
        };
        if runaway {
            self.recover_first_line("unterminated quoted field runs past the end of the line");
        }
    }

    /// Bytes of empty and comment lines before a record, and the newlines among them.
    fn leading_skip(&self, raw: &[u8]) -> (usize, u64) {
        let mut i = 0;
        let mut newlines = 0;
        while i < raw.len() {
            let b = raw[i];
            if self.dialect.is_terminator(b) {
                newlines += u64::from(b == b'\n');
                i += 1;
            } else if self.dialect.comment == Some(b) {
                match memchr::memchr(b'\n', &raw[i..]) {
                    Some(n) => {
                        i += n + 1;
                        newlines += 1;
                    }
                    None => i = raw.len(),
                }
            } else {
                break;
            }
        }
        (i, newlines)
    }

    /// The current record (from `rec_start`) is broken: report its first line as bad and
    /// restart decoding on the next line.
    fn recover_first_line(&mut self, reason: &str) {
        let raw = &self.pending[self.rec_start..];
        let (skip, newlines) = self.leading_skip(raw);
        let line = self.record_start_line() + newlines;
        let body = &raw[skip..];
        let line_len = body
            .iter()
            .position(|&b| self.dialect.is_terminator(b))
            .map_or(body.len(), |n| n + 1);
        let start = self.rec_start + skip;
        let end = start + line_len;
        self.bad.push(BadRow {
            offset: self.pending_base + start as u64,
            line,
            raw: trim_terminator(&self.pending[start..end]).to_vec(),
            reason: reason.to_string(),
        });
        // Discard the partial record's output and restart on the next line.
        if let Some(last) = self.recs.last() {
            self.data_len = last.data_start + self.record_data_len(last);
            self.ends_len = last.ends_start + self.ncols();
        } else {
            self.data_len = 0;
            self.ends_len = 0;
        }
        // The broken line takes the header's place if it was the first one.
        self.skip_header = false;
        self.reader.reset();
        self.reader.set_line(1);
        self.line_base = line;
        self.reader_line_at_rec_start = 1;
        self.pos = end;
        self.rec_start = end;
    }

    fn record_data_len(&self, rec: &Rec) -> usize {
        self.ends[rec.ends_start + self.ncols() - 1]
    }

    /// Line of the first byte after the previous record.
    fn record_start_line(&self) -> u64 {
        // `reader.line()` already counts the newline that ended the previous record.
        self.line_base + self.reader_line_at_rec_start
    }

    /// A record ended at `pos`: check its shape, keep it or report it.
    fn end_record(&mut self) {
        let raw_all = &self.pending[self.rec_start..self.pos];
        let (skip, newlines) = self.leading_skip(raw_all);
        let line = self.record_start_line() + newlines;
        let raw_start = self.rec_start + skip;
        let raw_end = self.pos;
        let fields = self.ends_len - self.rec_ends_start();
        let has_quote =
            memchr::memchr(self.dialect.quote, &self.pending[raw_start..raw_end]).is_some();
        let mut problem = None;
        if has_quote {
            let raw = &self.pending[raw_start..raw_end];
            let body = trim_terminator(raw);
            let multiline = self.has_terminator(body);
            if let Some(reason) = quote_problem(body, &self.dialect) {
                problem = Some((reason, multiline));
            } else if multiline && !self.dialect.newlines_in_values {
                problem = Some((
                    "quoted field spans lines (set 'format.newlines_in_values' 'true' if values may contain newlines)",
                    true,
                ));
            }
        }
        if problem.is_none() && fields < self.ncols() && fields > 0 && self.dialect.truncated_rows {
            // Pad with empty fields (NULL) so the record has every column.
            let last = self.ends[self.ends_len - 1];
            let missing = self.ncols() - fields;
            if self.ends.len() < self.ends_len + missing {
                self.ends.resize(self.ends_len + missing, 0);
            }
            self.ends[self.ends_len..self.ends_len + missing].fill(last);
            self.ends_len += missing;
        }
        let fields = self.ends_len - self.rec_ends_start();
        if problem.is_none() && fields != self.ncols() {
            let reason = format!("expected {} fields, found {fields}", self.ncols());
            if has_quote && self.has_terminator(trim_terminator(&self.pending[raw_start..raw_end]))
            {
                // A quoted field swallowed line ends: report the first line only.
                self.recover_first_line(&reason);
                return;
            }
            self.bad.push(BadRow {
                offset: self.pending_base + raw_start as u64,
                line,
                raw: trim_terminator(&self.pending[raw_start..raw_end]).to_vec(),
                reason,
            });
            self.discard_current_record();
        } else if let Some((reason, multiline)) = problem {
            if multiline {
                self.recover_first_line(reason);
                return;
            }
            self.bad.push(BadRow {
                offset: self.pending_base + raw_start as u64,
                line,
                raw: trim_terminator(&self.pending[raw_start..raw_end]).to_vec(),
                reason: reason.to_string(),
            });
            self.discard_current_record();
        } else if self.skip_header {
            self.skip_header = false;
            self.discard_current_record();
        } else {
            let data_start = self
                .recs
                .last()
                .map_or(0, |r| r.data_start + self.record_data_len(r));
            let ends_start = self.rec_ends_start();
            self.recs.push(Rec {
                raw_start,
                raw_end,
                line,
                data_start,
                ends_start,
            });
        }
        self.skip_header = false;
        self.rec_start = self.pos;
        self.reader_line_at_rec_start = self.reader.line();
        if self.recs.len() >= self.batch_size {
            self.flush_batch();
        }
    }

    fn has_terminator(&self, bytes: &[u8]) -> bool {
        match self.dialect.terminator {
            Some(t) => memchr::memchr(t, bytes).is_some(),
            None => memchr::memchr2(b'\n', b'\r', bytes).is_some(),
        }
    }

    /// Index in `ends` where the current record's field ends begin.
    fn rec_ends_start(&self) -> usize {
        self.recs.last().map_or(0, |r| r.ends_start + self.ncols())
    }

    /// Forget the current record's output (it was reported or is the header).
    fn discard_current_record(&mut self) {
        self.ends_len = self.rec_ends_start();
        self.data_len = self
            .recs
            .last()
            .map_or(0, |r| r.data_start + self.record_data_len(r));
    }

    /// Turn the buffered records into a batch, moving rows that fail to type into `bad`.
    fn flush_batch(&mut self) {
        let mut decoded = Decoded {
            batch: None,
            bad: std::mem::take(&mut self.bad),
        };
        if !self.recs.is_empty() {
            let (batch, bad) = self.build_batch();
            decoded.batch = batch;
            decoded.bad.extend(bad);
        }
        decoded.bad.sort_by_key(|b| b.offset);
        if decoded.batch.is_some() || !decoded.bad.is_empty() {
            self.out.push_back(decoded);
        }
        // Drop consumed input and the batch's buffers.
        let keep_from = self.rec_start;
        self.pending.drain(..keep_from);
        self.pending_base += keep_from as u64;
        self.pos -= keep_from;
        self.rec_start = 0;
        self.recs.clear();
        self.data_len = 0;
        self.ends_len = 0;
    }

    fn build_batch(&mut self) -> (Option<RecordBatch>, Vec<BadRow>) {
        let n = self.recs.len();
        let ncols = self.ncols();
        let mut reasons: Vec<Option<String>> = vec![None; n];
        // Fields split valid UTF-8 only at ASCII bytes, so when the raw text is valid every field
        // is; otherwise find the records at fault.
        let data = &self.data[..self.data_len];
        let (first, last) = (self.recs[0].raw_start, self.recs[n - 1].raw_end);
        let raw_ok = std::str::from_utf8(&self.pending[first..last]).is_ok();
        let whole = if raw_ok {
            std::str::from_utf8(data).ok()
        } else {
            None
        };
        // Slow path: validate record by record (one check per record, not per field).
        let mut per_record = Vec::new();
        if whole.is_none() {
            per_record.reserve(n);
            for (i, rec) in self.recs.iter().enumerate() {
                let raw = &self.pending[rec.raw_start..rec.raw_end];
                if let Err(e) = std::str::from_utf8(raw) {
                    reasons[i] = Some(format!(
                        "invalid UTF-8: byte {} of the record",
                        e.valid_up_to()
                    ));
                    per_record.push(None);
                    continue;
                }
                let end = rec.data_start + self.ends[rec.ends_start + ncols - 1];
                let text = std::str::from_utf8(&data[rec.data_start..end]).ok();
                if text.is_none() {
                    reasons[i] = Some("invalid UTF-8 in a field".to_string());
                }
                per_record.push(text);
            }
        }
        let fields = Fields {
            data,
            whole,
            per_record,
            ends: &self.ends,
            recs: &self.recs,
        };
        let mut columns = Vec::with_capacity(self.projection.len());
        let mut all = Vec::with_capacity(ncols);
        for (j, field) in self.schema.fields().iter().enumerate() {
            let col = build_column(&fields, j, field, &self.dialect, &mut reasons);
            all.push(col);
        }
        for &j in &self.projection {
            columns.push(Arc::clone(&all[j]));
        }
        let bad_count = reasons.iter().filter(|r| r.is_some()).count();
        let mut bad = Vec::with_capacity(bad_count);
        let keep = if bad_count > 0 {
            for (i, reason) in reasons.iter().enumerate() {
                if let Some(reason) = reason {
                    let rec = &self.recs[i];
                    bad.push(BadRow {
                        offset: self.pending_base + rec.raw_start as u64,
                        line: rec.line,
                        raw: trim_terminator(&self.pending[rec.raw_start..rec.raw_end]).to_vec(),
                        reason: reason.clone(),
                    });
                }
            }
            let mask = BooleanArray::from(reasons.iter().map(|r| r.is_none()).collect::<Vec<_>>());
            let mut kept = Vec::with_capacity(columns.len());
            for c in &columns {
                match filter(c, &mask) {
                    Ok(c) => kept.push(c),
                    Err(e) => {
                        return (
                            None,
                            internal_bad(&self.recs, &self.pending, self.pending_base, &e),
                        );
                    }
                }
            }
            columns = kept;
            n - bad_count
        } else {
            n
        };
        if keep == 0 {
            return (None, bad);
        }
        let options = RecordBatchOptions::new().with_row_count(Some(keep));
        match RecordBatch::try_new_with_options(Arc::clone(&self.out_schema), columns, &options) {
            Ok(batch) => (Some(batch), bad),
            Err(e) => (
                None,
                internal_bad(&self.recs, &self.pending, self.pending_base, &e),
            ),
        }
    }
}

/// Should a batch fail to assemble (a type this decoder mis-built), report every row rather
/// than lose them.
fn internal_bad(recs: &[Rec], pending: &[u8], base: u64, e: &ArrowError) -> Vec<BadRow> {
    recs.iter()
        .map(|rec| BadRow {
            offset: base + rec.raw_start as u64,
            line: rec.line,
            raw: trim_terminator(&pending[rec.raw_start..rec.raw_end]).to_vec(),
            reason: format!("cannot build batch: {e}"),
        })
        .collect()
}

fn trim_terminator(raw: &[u8]) -> &[u8] {
    let mut end = raw.len();
    while end > 0 && (raw[end - 1] == b'\n' || raw[end - 1] == b'\r') {
        end -= 1;
    }
    &raw[..end]
}

/// What is wrong with the quoting of `body` (one record, terminator trimmed), if anything.
/// A quote opens a field only at its start (a quote inside an unquoted field is literal, as
/// `csv_core` reads it); inside, a doubled quote (or the escape byte) does not close it; after the
/// closing quote only a delimiter, a line end or the end of the record may follow. Only quote
/// bytes are visited, so clean records cost one `memchr` pass.
fn quote_problem(body: &[u8], d: &CsvDialect) -> Option<&'static str> {
    let mut in_quotes = false;
    let mut skip_to = 0;
    for p in memchr::memchr_iter(d.quote, body) {
        if p < skip_to {
            continue;
        }
        if !in_quotes {
            if p == 0 || body[p - 1] == d.delimiter {
                in_quotes = true;
            }
            continue;
        }
        if d.escape
            .is_some_and(|e| e != d.quote && p > 0 && body[p - 1] == e)
        {
            continue;
        }
        match body.get(p + 1) {
            Some(&n) if n == d.quote && d.double_quote => skip_to = p + 2,
            None => in_quotes = false,
            Some(&n) if n == d.delimiter || d.is_terminator(n) => in_quotes = false,
            Some(_) => return Some("text after the closing quote of a quoted field"),
        }
    }
    in_quotes.then_some("unterminated quoted field")
}

#[cfg(test)]
#[path = "csv_decoder_tests.rs"]
mod tests;
