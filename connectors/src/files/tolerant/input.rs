//! Bytes in for the tolerant readers: a file or a line-aligned byte range of it (the same
//! alignment rule as DataFusion's CSV/JSON scans), decompressed, with the absolute offset of the
//! first byte handed out so bad records can name where they are.

use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;

use bytes::Bytes;
use datafusion::datasource::file_format::file_compression_type::FileCompressionType;
use datafusion::error::{DataFusionError, Result};
use engine::bad_records::{BadRecord, BadRecordPolicy};
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    GetOptions, GetRange, GetResultPayload, ObjectMeta, ObjectStore, ObjectStoreExt,
};

use datafusion::arrow::array::RecordBatch;
use datafusion::physical_plan::metrics::Count;
use futures::stream::BoxStream as Stream;

/// A record that could not be decoded. `offset` and `line` are relative to the decoded stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRow {
    pub offset: u64,
    /// 1-based line in the stream.
    pub line: u64,
    pub raw: Vec<u8>,
    pub reason: String,
}

/// What a decoder yields: a batch of good rows (if any) and the bad rows found with it.
#[derive(Debug, Default)]
pub struct Decoded {
    pub batch: Option<RecordBatch>,
    pub bad: Vec<BadRow>,
}

/// A push-based tolerant decoder (CSV, JSON).
pub trait RecordDecoder: Send {
    /// Feed the next bytes of the stream.
    fn push(&mut self, bytes: &[u8]);
    /// The stream ended.
    fn finish(&mut self);
    /// The next output, once available.
    fn next_output(&mut self) -> Option<Decoded>;
    /// Newlines consumed so far (all of the stream's once it finished).
    fn newlines(&self) -> u64;
}

/// Finished ranges of one file: start -> (end, newlines).
type RangeCounts = std::collections::BTreeMap<u64, (u64, u64)>;

/// Newline counts of the byte ranges a scan has finished, per file, so a range that starts
/// mid-file can number its bad records' lines without re-reading what other ranges read.
#[derive(Debug, Default)]
pub struct LineIndex {
    ranges: std::sync::Mutex<std::collections::HashMap<String, RangeCounts>>,
}

impl LineIndex {
    fn publish(&self, file: &str, start: u64, end: u64, newlines: u64) {
        let mut ranges = self.ranges.lock().unwrap_or_else(|p| p.into_inner());
        ranges
            .entry(file.to_string())
            .or_default()
            .insert(start, (end, newlines));
    }

    /// Newlines in `[0, upto)` of `file` if finished ranges cover it end to end.
    fn covered(&self, file: &str, upto: u64) -> Option<u64> {
        let ranges = self.ranges.lock().unwrap_or_else(|p| p.into_inner());
        let by_start = ranges.get(file)?;
        let (mut at, mut count) = (0u64, 0u64);
        while at < upto {
            let (end, n) = by_start.get(&at)?;
            count += n;
            at = *end;
        }
        (at == upto).then_some(count)
    }

    /// Wait (up to a bound) for the ranges before `upto` to finish.
    async fn lines_before(&self, file: &str, upto: u64) -> Option<u64> {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            if let Some(n) = self.covered(file, upto) {
                return Some(n);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
}

const CHUNK: usize = 1024 * 1024;

/// Where a scan reads from.
#[derive(Clone)]
pub struct ScanTarget {
    pub store: Arc<dyn ObjectStore>,
    /// The object store URL (`file:///`, `s3://bucket/`).
    pub url: String,
    pub compression: FileCompressionType,
    /// Line terminator used to align byte ranges.
    pub terminator: u8,
}

impl ScanTarget {
    /// How a file is named in errors and dead letters: a plain path for local files.
    pub fn display_name(&self, meta: &ObjectMeta) -> String {
        if self.url.starts_with("file://") {
            format!("/{}", meta.location)
        } else {
            format!("{}/{}", self.url.trim_end_matches('/'), meta.location)
        }
    }
}

enum Source {
    Read(Box<dyn Read + Send>),
    Stream(BoxStream<'static, Result<Bytes>>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Skipping the partial line before the range start.
    Skip,
    /// Passing bytes through; `end` (if any) is the range end.
    Pass,
    /// Past the range end: pass bytes up to and including the next terminator.
    Tail,
    Done,
}

/// A file's bytes, or a line-aligned byte range of them.
pub struct ByteInput {
    source: Source,
    store: Arc<dyn ObjectStore>,
    pub(super) location: Path,
    terminator: u8,
    phase: Phase,
    /// Absolute position of the next byte from `source`.
    pos: u64,
    /// Range end (`None`: read to the end of the file).
    end: Option<u64>,
    /// Absolute offset of the first byte handed out.
    base: u64,
    prefix_lines: Option<u64>,
    /// Bytes handed out so far.
    handed: u64,
}

impl ByteInput {
    /// Open `meta`, whole or the byte range `(start, end)` (uncompressed files only).
    pub async fn open(
        target: &ScanTarget,
        meta: &ObjectMeta,
        range: Option<(u64, u64)>,
    ) -> Result<Self> {
        let size = meta.size;
        let (fetch_start, phase, end) = match range {
            None => (0, Phase::Pass, None),
            Some((start, end)) => {
                if target.compression.is_compressed() {
                    return Err(DataFusionError::Internal(
                        "byte ranges of compressed files cannot be read".into(),
                    ));
                }
                let end = (end < size).then_some(end);
                if start == 0 {
                    (0, Phase::Pass, end)
                } else {
                    (start - 1, Phase::Skip, end)
                }
            }
        };
        let opts = GetOptions {
            range: (fetch_start > 0).then_some(GetRange::Offset(fetch_start)),
            ..Default::default()
        };
        let result = target.store.get_opts(&meta.location, opts).await?;
        let source = match result.payload {
            GetResultPayload::File(mut file, _) => {
                file.seek(SeekFrom::Start(fetch_start))
                    .map_err(|e| DataFusionError::External(Box::new(e)))?;
                Source::Read(target.compression.convert_read(file)?)
            }
            GetResultPayload::Stream(s) => {
                let s = s.map(|r| r.map_err(DataFusionError::from)).boxed();
                Source::Stream(target.compression.convert_stream(s)?)
            }
        };
        Ok(Self {
            source,
            store: Arc::clone(&target.store),
            location: meta.location.clone(),
            terminator: target.terminator,
            phase,
            pos: fetch_start,
            end,
            base: fetch_start,
            prefix_lines: (fetch_start == 0).then_some(0),
            handed: 0,
        })
    }

    async fn raw_chunk(&mut self) -> Result<Option<Bytes>> {
        match &mut self.source {
            // Local files are read in place, as DataFusion's own CSV scan does.
            Source::Read(r) => {
                let mut buf = vec![0u8; CHUNK];
                let mut filled = 0;
                while filled < CHUNK {
                    let n = r
                        .read(&mut buf[filled..])
                        .map_err(|e| DataFusionError::External(Box::new(e)))?;
                    if n == 0 {
                        break;
                    }
                    filled += n;
                }
                buf.truncate(filled);
                Ok((filled > 0).then(|| Bytes::from(buf)))
            }
            Source::Stream(s) => s.next().await.transpose(),
        }
    }

    /// The next bytes of the (aligned) input; `None` at its end.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>> {
        let chunk = self.next_aligned().await?;
        if let Some(c) = &chunk {
            self.handed += c.len() as u64;
        }
        Ok(chunk)
    }

    async fn next_aligned(&mut self) -> Result<Option<Bytes>> {
        loop {
            if self.phase == Phase::Done {
                return Ok(None);
            }
            let Some(chunk) = self.raw_chunk().await? else {
                self.phase = Phase::Done;
                return Ok(None);
            };
            let chunk_start = self.pos;
            self.pos += chunk.len() as u64;
            let mut from = 0usize;
            if self.phase == Phase::Skip {
                match memchr::memchr(self.terminator, &chunk) {
                    None => continue,
                    Some(i) => {
                        from = i + 1;
                        self.base = chunk_start + from as u64;
                        self.phase = Phase::Pass;
                    }
                }
            }
            let slice = chunk.slice(from..);
            let slice_start = chunk_start + from as u64;
            let search_from = match (self.phase, self.end) {
                (Phase::Pass, None) => return Ok(Some(slice)),
                (Phase::Pass, Some(end)) => {
                    // The last line is the one holding byte `end - 1`.
                    let last = end.saturating_sub(1);
                    if slice_start + (slice.len() as u64) <= last {
                        return Ok(Some(slice));
                    }
                    usize::try_from(last.saturating_sub(slice_start)).unwrap_or(usize::MAX)
                }
                _ => 0,
            };
            match memchr::memchr(self.terminator, &slice[search_from.min(slice.len())..]) {
                Some(i) => {
                    self.phase = Phase::Done;
                    return Ok(Some(slice.slice(..search_from + i + 1)));
                }
                None => {
                    self.phase = Phase::Tail;
                    if !slice.is_empty() {
                        return Ok(Some(slice));
                    }
                }
            }
        }
    }

    /// Absolute offset of the first byte handed out.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Newlines before [`Self::base`], counted once and only when a bad record needs a line.
    pub async fn lines_before_base(&mut self) -> Result<u64> {
        if let Some(n) = self.prefix_lines {
            return Ok(n);
        }
        let mut count = 0u64;
        let mut at = 0u64;
        while at < self.base {
            let to = (at + 8 * CHUNK as u64).min(self.base);
            let bytes = self.store.get_range(&self.location, at..to).await?;
            // A plain byte count vectorises (several GB/s); memchr_iter stops at every line.
            count += bytes.iter().filter(|&&b| b == b'\n').count() as u64;
            at = to;
        }
        self.prefix_lines = Some(count);
        Ok(count)
    }
}

/// Turn a decoder's bad rows into located [`BadRecord`]s (`lines` newlines precede the stream,
/// which starts at byte `base`) and apply the table's policy.
async fn report_bad_rows(
    policy: &BadRecordPolicy,
    name: &Arc<str>,
    base: u64,
    lines: u64,
    rows: Vec<BadRow>,
) -> Result<()> {
    let records = rows
        .into_iter()
        .map(|r| BadRecord {
            file: Arc::clone(name),
            line: Some(lines + r.line),
            offset: base + r.offset,
            raw: String::from_utf8_lossy(&r.raw).into_owned(),
            reason: r.reason,
        })
        .collect();
    policy.handle(records).await
}

/// Bad rows are held until the end of the range (one report, one dead-letter write; a range
/// starting mid-file also waits for the ranges before it to report their line counts), or until
/// this many are held (then a mid-file range counts its prefix by reading it).
const MAX_HELD_BAD_ROWS: usize = 10_000;

struct DecodeState {
    input: ByteInput,
    decoder: Box<dyn RecordDecoder>,
    eof: bool,
    held: Vec<BadRow>,
}

/// Feed `input` through `decoder`, yielding good batches and reporting bad rows to `policy`.
pub fn decode_stream(
    input: ByteInput,
    decoder: Box<dyn RecordDecoder>,
    policy: Arc<BadRecordPolicy>,
    name: Arc<str>,
    lines: Arc<LineIndex>,
    bad_records: Count,
) -> Stream<'static, Result<RecordBatch>> {
    let key = input.location.to_string();
    let state = DecodeState {
        input,
        decoder,
        eof: false,
        held: Vec::new(),
    };
    futures::stream::try_unfold(state, move |mut st| {
        let policy = Arc::clone(&policy);
        let name = Arc::clone(&name);
        let lines = Arc::clone(&lines);
        let key = key.clone();
        let bad_records = bad_records.clone();
        async move {
            loop {
                if let Some(out) = st.decoder.next_output() {
                    if !out.bad.is_empty() {
                        bad_records.add(out.bad.len());
                        // Held rows are reported together (one dead-letter write) at the end of
                        // the range, or as soon as `max_bad_records` could be exceeded.
                        let limit = policy
                            .max_bad_records
                            .map_or(MAX_HELD_BAD_ROWS, |m| MAX_HELD_BAD_ROWS.min(m as usize + 1));
                        let strict = policy.policy == engine::bad_records::ErrorPolicy::Fail;
                        if strict || st.held.len() + out.bad.len() >= limit {
                            let mut rows = std::mem::take(&mut st.held);
                            rows.extend(out.bad);
                            let before = st.input.lines_before_base().await?;
                            report_bad_rows(&policy, &name, st.input.base(), before, rows).await?;
                        } else {
                            st.held.extend(out.bad);
                        }
                    }
                    if let Some(batch) = out.batch {
                        return Ok(Some((batch, st)));
                    }
                    continue;
                }
                if st.eof {
                    return Ok(None);
                }
                match st.input.next_chunk().await? {
                    Some(chunk) => st.decoder.push(&chunk),
                    None => {
                        st.decoder.finish();
                        st.eof = true;
                        let (base, end) = (st.input.base(), st.input.base() + st.input.handed);
                        lines.publish(&key, base, end, st.decoder.newlines());
                        // Drain what finish() produced first, then place the held rows.
                        let mut rest = Vec::new();
                        while let Some(out) = st.decoder.next_output() {
                            bad_records.add(out.bad.len());
                            st.held.extend(out.bad);
                            rest.extend(out.batch);
                        }
                        if !st.held.is_empty() {
                            let before = match st.input.prefix_lines {
                                Some(n) => n,
                                None => match lines.lines_before(&key, base).await {
                                    Some(n) => n,
                                    None => st.input.lines_before_base().await?,
                                },
                            };
                            let rows = std::mem::take(&mut st.held);
                            report_bad_rows(&policy, &name, base, before, rows).await?;
                        }
                        if let Some(batch) = concat_or_first(rest)? {
                            return Ok(Some((batch, st)));
                        }
                    }
                }
            }
        }
    })
    .boxed()
}

/// The batches left at the end of a stream, as one (they share a schema).
fn concat_or_first(mut batches: Vec<RecordBatch>) -> Result<Option<RecordBatch>> {
    match batches.len() {
        0 => Ok(None),
        1 => Ok(batches.pop()),
        _ => Ok(Some(datafusion::arrow::compute::concat_batches(
            &batches[0].schema(),
            &batches,
        )?)),
    }
}
