//! The local durable spool of an MQTT table's session.
//!
//! An MQTT broker lets a client hold only a few unacknowledged QoS 1 messages (Mosquitto: 20),
//! so acknowledging only after a run commits would cap a micro-batch at that many. Instead a
//! scan writes each message it receives to the spool, flushes it to disk (`fsync`) and only then
//! acknowledges it to the broker; the run reads the spooled messages, and the spool forgets them
//! only when that run committed ([`Spool::commit`]). A crash at any point loses nothing: what
//! was acknowledged is on disk, what was not is delivered again by the broker.
//!
//! Layout of the spool directory:
//! * `lock`: held (an OS file lock) by the one scan or pending acknowledgement using the spool;
//! * `committed`: the sequence number of the last message a committed run consumed;
//! * `topic`: the topic filter the broker session is subscribed to;
//! * `<first sequence>.seg`: one segment per scan that received messages, records appended
//!   `[u32 body length][u32 CRC-32 of body][body]`, the body
//!   `[u64 seq][i64 received ms][u8 flags][u16 topic length][topic][payload]`.
//!
//! A record cut short or damaged (a crash while appending) ends its segment: it was never
//! acknowledged to the broker, which delivers it again.

use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use tokio::io::AsyncWriteExt;

/// One spooled message.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Record {
    pub(crate) seq: u64,
    pub(crate) received_ms: i64,
    pub(crate) qos: u8,
    pub(crate) retain: bool,
    /// The broker sent it before (MQTT's DUP flag).
    pub(crate) dup: bool,
    pub(crate) topic: String,
    pub(crate) payload: Vec<u8>,
}

const HEADER: usize = 8;
const FIXED_BODY: usize = 8 + 8 + 1 + 2;

impl Record {
    fn encode_into(&self, out: &mut Vec<u8>) {
        let topic = self.topic.as_bytes();
        let topic_len = u16::try_from(topic.len()).unwrap_or(u16::MAX);
        let topic = &topic[..usize::from(topic_len)];
        let body_len = FIXED_BODY + topic.len() + self.payload.len();
        let start = out.len();
        out.extend_from_slice(&u32::try_from(body_len).unwrap_or(u32::MAX).to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.received_ms.to_le_bytes());
        out.push((self.qos & 3) | (u8::from(self.retain) << 2) | (u8::from(self.dup) << 3));
        out.extend_from_slice(&topic_len.to_le_bytes());
        out.extend_from_slice(topic);
        out.extend_from_slice(&self.payload);
        let crc = crc32fast::hash(&out[start + HEADER..]);
        out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    }

    /// The records of a segment's bytes, up to the first incomplete or damaged one.
    fn decode_all(bytes: &[u8]) -> (Vec<Record>, bool) {
        let mut records = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            match Record::decode(&bytes[at..]) {
                Some((record, used)) => {
                    records.push(record);
                    at += used;
                }
                None => return (records, false),
            }
        }
        (records, true)
    }

    fn decode(bytes: &[u8]) -> Option<(Record, usize)> {
        let header = bytes.get(..HEADER)?;
        let body_len = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
        let crc = u32::from_le_bytes(header[4..].try_into().ok()?);
        let body = bytes.get(HEADER..HEADER.checked_add(body_len)?)?;
        if body_len < FIXED_BODY || crc32fast::hash(body) != crc {
            return None;
        }
        let seq = u64::from_le_bytes(body[..8].try_into().ok()?);
        let received_ms = i64::from_le_bytes(body[8..16].try_into().ok()?);
        let flags = body[16];
        let topic_len = usize::from(u16::from_le_bytes(body[17..19].try_into().ok()?));
        let topic = body.get(FIXED_BODY..FIXED_BODY + topic_len)?;
        let record = Record {
            seq,
            received_ms,
            qos: flags & 3,
            retain: flags & 4 != 0,
            dup: flags & 8 != 0,
            topic: String::from_utf8_lossy(topic).into_owned(),
            payload: body[FIXED_BODY + topic_len..].to_vec(),
        };
        Some((record, HEADER + body_len))
    }
}

/// Why a spool could not be opened.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SpoolError {
    #[error(
        "spool {0} is in use (by another FlowEngine process with the same client id, or by an earlier statement of this run; read an MQTT table once per run)"
    )]
    Busy(PathBuf),
    #[error("spool {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// An open spool, locked for its holder until dropped.
#[derive(Debug)]
pub(crate) struct Spool {
    dir: PathBuf,
    _lock: std::fs::File,
}

/// What the spool holds for the next read.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Pending {
    /// Messages after the committed one.
    pub(crate) messages: u64,
    /// The last sequence number in the spool (or the committed one when it is empty).
    pub(crate) last_seq: u64,
}

impl Spool {
    /// Open (creating) the spool in `dir` and lock it.
    pub(crate) async fn open(dir: &Path) -> Result<Spool, SpoolError> {
        tokio::fs::create_dir_all(dir).await.map_err(io(dir))?;
        let path = dir.join("lock");
        let lock = tokio::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .await
            .map_err(io(&path))?
            .into_std()
            .await;
        match lock.try_lock() {
            Ok(()) => Ok(Spool {
                dir: dir.to_path_buf(),
                _lock: lock,
            }),
            Err(std::fs::TryLockError::WouldBlock) => Err(SpoolError::Busy(dir.to_path_buf())),
            Err(std::fs::TryLockError::Error(e)) => Err(io(&path)(e)),
        }
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The sequence number of the last message a committed run consumed (0: none).
    pub(crate) async fn committed(&self) -> Result<u64, SpoolError> {
        let path = self.dir.join("committed");
        match tokio::fs::read_to_string(&path).await {
            Ok(text) => text.trim().parse().map_err(|e| SpoolError::Io {
                path,
                source: std::io::Error::new(ErrorKind::InvalidData, e),
            }),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(0),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// The topic filter the broker session was subscribed to, if recorded.
    pub(crate) async fn topic(&self) -> Result<Option<String>, SpoolError> {
        let path = self.dir.join("topic");
        match tokio::fs::read_to_string(&path).await {
            Ok(t) => Ok(Some(t)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path)(e)),
        }
    }

    pub(crate) async fn set_topic(&self, topic: &str) -> Result<(), SpoolError> {
        self.replace("topic", topic.as_bytes()).await
    }

    /// The segment files, oldest first, with their first sequence numbers.
    pub(crate) async fn segments(&self) -> Result<Vec<(u64, PathBuf)>, SpoolError> {
        let mut out = Vec::new();
        let mut entries = tokio::fs::read_dir(&self.dir)
            .await
            .map_err(io(&self.dir))?;
        while let Some(e) = entries.next_entry().await.map_err(io(&self.dir))? {
            let name = e.file_name();
            let Some(first) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".seg"))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            out.push((first, e.path()));
        }
        out.sort();
        Ok(out)
    }

    /// The records of one segment after `after`, in order.
    pub(crate) async fn read_segment(
        &self,
        path: &Path,
        after: u64,
    ) -> Result<Vec<Record>, SpoolError> {
        let bytes = tokio::fs::read(path).await.map_err(io(path))?;
        let (mut records, complete) = Record::decode_all(&bytes);
        if !complete {
            tracing::warn!(
                segment = %path.display(),
                "spool segment ends in a damaged record (a crash while writing it); the broker delivers that message again"
            );
        }
        records.retain(|r| r.seq > after);
        Ok(records)
    }

    /// How many messages after the committed one the spool holds, and its last sequence number.
    pub(crate) async fn pending(&self, committed: u64) -> Result<Pending, SpoolError> {
        let mut p = Pending {
            messages: 0,
            last_seq: committed,
        };
        for (_, path) in self.segments().await? {
            for r in self.read_segment(&path, committed).await? {
                p.messages += 1;
                p.last_seq = p.last_seq.max(r.seq);
            }
        }
        Ok(p)
    }

    /// A new segment whose records start at `first_seq`.
    pub(crate) fn writer(&self, first_seq: u64) -> SegmentWriter {
        SegmentWriter {
            path: self.dir.join(format!("{first_seq:020}.seg")),
            dir: self.dir.clone(),
            file: None,
            buffer: Vec::new(),
            next_seq: first_seq,
        }
    }

    /// A committed run consumed every message up to `through`: record it, then delete the
    /// segments holding nothing after it.
    pub(crate) async fn commit(&self, through: u64) -> Result<(), SpoolError> {
        if through > self.committed().await? {
            self.replace("committed", through.to_string().as_bytes())
                .await?;
        }
        let segments = self.segments().await?;
        for (i, (_, path)) in segments.iter().enumerate() {
            let done = match segments.get(i + 1) {
                Some((next_first, _)) => next_first.saturating_sub(1) <= through,
                None => self.read_segment(path, through).await?.is_empty(),
            };
            if done {
                tokio::fs::remove_file(path).await.map_err(io(path))?;
            }
        }
        Ok(())
    }

    /// Replace file `name` atomically and durably.
    async fn replace(&self, name: &str, content: &[u8]) -> Result<(), SpoolError> {
        let path = self.dir.join(name);
        let temp = self.dir.join(format!(".{name}.tmp"));
        let content = content.to_vec();
        let dir = self.dir.clone();
        let (t, p) = (temp.clone(), path.clone());
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&t)?;
            f.write_all(&content)?;
            f.sync_data()?;
            std::fs::rename(&t, &p)?;
            sync_dir(&dir)
        })
        .await
        .map_err(|e| io(&path)(std::io::Error::other(e)))?
        .map_err(io(&path))
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Appends one scan's messages to a new segment.
#[derive(Debug)]
pub(crate) struct SegmentWriter {
    path: PathBuf,
    dir: PathBuf,
    file: Option<tokio::fs::File>,
    buffer: Vec<u8>,
    next_seq: u64,
}

impl SegmentWriter {
    /// Buffer a message; its sequence number.
    pub(crate) fn append(&mut self, mut record: Record) -> u64 {
        record.seq = self.next_seq;
        self.next_seq += 1;
        record.encode_into(&mut self.buffer);
        record.seq
    }

    /// Write the buffered messages and, with `fsync`, make them durable: only then may they be
    /// acknowledged to the broker.
    pub(crate) async fn flush(&mut self, fsync: bool) -> Result<(), SpoolError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let file = match &mut self.file {
            Some(f) => f,
            None => {
                let f = match tokio::fs::OpenOptions::new()
                    .create_new(true)
                    .write(true)
                    .open(&self.path)
                    .await
                {
                    Ok(f) => f,
                    // A process killed between creating this segment and writing its first
                    // record whole left it behind. A segment starts at the sequence after the
                    // last readable record, so this one holds no readable record: nothing in it
                    // was acknowledged, and the broker delivers it again. Start it afresh.
                    Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                        tracing::warn!(
                            segment = %self.path.display(),
                            "replacing a spool segment left without a complete record by a crash"
                        );
                        tokio::fs::OpenOptions::new()
                            .write(true)
                            .truncate(true)
                            .open(&self.path)
                            .await
                            .map_err(io(&self.path))?
                    }
                    Err(e) => return Err(io(&self.path)(e)),
                };
                if fsync {
                    // The new file's directory entry must survive too.
                    let dir = self.dir.clone();
                    tokio::task::spawn_blocking(move || sync_dir(&dir))
                        .await
                        .map_err(|e| io(&self.path)(std::io::Error::other(e)))?
                        .map_err(io(&self.path))?;
                }
                self.file.insert(f)
            }
        };
        file.write_all(&self.buffer).await.map_err(io(&self.path))?;
        if fsync {
            file.sync_data().await.map_err(io(&self.path))?;
        } else {
            file.flush().await.map_err(io(&self.path))?;
        }
        self.buffer.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: u64, payload: &[u8]) -> Record {
        Record {
            seq,
            received_ms: 1_700_000_000_000,
            qos: 1,
            retain: seq.is_multiple_of(2),
            dup: false,
            topic: "sensors/a".into(),
            payload: payload.to_vec(),
        }
    }

    #[test]
    fn records_round_trip_and_a_torn_tail_ends_the_segment() {
        let mut bytes = Vec::new();
        record(1, b"{\"a\":1}").encode_into(&mut bytes);
        record(2, b"").encode_into(&mut bytes);
        let whole = bytes.len();
        record(3, b"cut short").encode_into(&mut bytes);
        let (all, complete) = Record::decode_all(&bytes);
        assert!(complete);
        assert_eq!(
            all,
            vec![
                record(1, b"{\"a\":1}"),
                record(2, b""),
                record(3, b"cut short")
            ]
        );
        let (some, complete) = Record::decode_all(&bytes[..bytes.len() - 2]);
        assert!(!complete);
        assert_eq!(some.len(), 2);
        // A flipped byte is caught by the checksum.
        let mut damaged = bytes.clone();
        damaged[whole + 20] ^= 0x40;
        assert_eq!(Record::decode_all(&damaged).0.len(), 2);
    }

    #[tokio::test]
    async fn a_segment_left_without_a_complete_record_by_a_crash_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).await.unwrap();
        let mut w = spool.writer(1);
        w.append(record(0, b"kept"));
        w.flush(true).await.unwrap();
        // Killed after creating segment 2 and writing part of its first record.
        let mut partial = Vec::new();
        record(2, b"cut short").encode_into(&mut partial);
        partial.truncate(partial.len() - 3);
        std::fs::write(dir.path().join(format!("{:020}.seg", 2)), &partial).unwrap();
        let p = spool.pending(0).await.unwrap();
        assert_eq!((p.messages, p.last_seq), (1, 1));
        // The restarted scan starts the next segment at the same place.
        let mut w = spool.writer(p.last_seq + 1);
        w.append(record(0, b"again"));
        w.flush(true).await.unwrap();
        let p = spool.pending(0).await.unwrap();
        assert_eq!((p.messages, p.last_seq), (2, 2));
    }

    #[tokio::test]
    async fn spool_commits_and_forgets_consumed_segments() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).await.unwrap();
        assert!(matches!(
            Spool::open(dir.path()).await,
            Err(SpoolError::Busy(_))
        ));
        let mut w = spool.writer(1);
        for i in 0..3 {
            w.append(record(0, format!("m{i}").as_bytes()));
        }
        w.flush(true).await.unwrap();
        let mut w = spool.writer(4);
        w.append(record(0, b"m3"));
        w.flush(false).await.unwrap();
        let p = spool.pending(0).await.unwrap();
        assert_eq!((p.messages, p.last_seq), (4, 4));
        spool.commit(2).await.unwrap();
        assert_eq!(spool.committed().await.unwrap(), 2);
        assert_eq!(spool.segments().await.unwrap().len(), 2);
        assert_eq!(spool.pending(2).await.unwrap().messages, 2);
        spool.commit(3).await.unwrap();
        assert_eq!(spool.segments().await.unwrap().len(), 1);
        spool.commit(4).await.unwrap();
        assert!(spool.segments().await.unwrap().is_empty());
        drop(spool);
        let again = Spool::open(dir.path()).await.unwrap();
        assert_eq!(again.committed().await.unwrap(), 4);
    }
}
