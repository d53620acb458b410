//! Shaping result batches into Flight messages: split to the configured message size by the
//! bytes IPC will actually send, and compact string/binary view columns so no message carries
//! bytes its rows do not reference.
//!
//! arrow-flight's encoder splits a batch by `get_buffer_memory_size`, which counts whole
//! shared buffers. A slice of a view column (`Utf8View` from Parquet) still references every
//! data buffer of the original, and IPC sends them all, so a batch split in two sent its string
//! data twice; a slice of a fixed-width column also reports its parent's full buffer and was
//! split again. Here the size is what IPC writes for the rows in hand, each piece's view
//! columns are compacted, and the encoder's own limit is set high enough not to re-split.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::DataType;

/// Bytes of a view array's views (one `u128` per row).
const VIEW_WIDTH: usize = 16;

/// The non-inlined bytes a view column's rows reference and the bytes its data buffers hold.
fn view_bytes(array: &ArrayRef) -> Option<(usize, usize)> {
    let (used, held) = match array.data_type() {
        DataType::Utf8View => {
            let v = array.as_string_view();
            (v.total_buffer_bytes_used(), held(v.data_buffers()))
        }
        DataType::BinaryView => {
            let v = array.as_binary_view();
            (v.total_buffer_bytes_used(), held(v.data_buffers()))
        }
        _ => return None,
    };
    Some((used, held))
}

fn held(buffers: &[arrow::buffer::Buffer]) -> usize {
    buffers.iter().map(|b| b.len()).sum()
}

/// Bytes IPC sends for `array` once its view columns are compacted.
fn wire_size(array: &ArrayRef, views: Option<(usize, usize)>) -> usize {
    if let Some((used, _)) = views {
        return array.len() * VIEW_WIDTH + used;
    }
    array
        .to_data()
        .get_slice_memory_size()
        .unwrap_or_else(|_| array.get_buffer_memory_size())
}

/// A view column with only the bytes its rows reference.
fn compacted(array: &ArrayRef) -> ArrayRef {
    match array.data_type() {
        DataType::Utf8View => Arc::new(array.as_string_view().gc()),
        DataType::BinaryView => Arc::new(array.as_binary_view().gc()),
        _ => Arc::clone(array),
    }
}

/// `batch` as pieces of about `limit` bytes on the wire (one piece if it fits), each with its
/// view columns compacted where they hold more than they reference, and each piece's size on
/// the wire (Arrow buffers, without IPC headers and padding).
pub(crate) fn for_messages(batch: RecordBatch, limit: usize) -> Vec<(RecordBatch, usize)> {
    let views: Vec<Option<(usize, usize)>> = batch.columns().iter().map(view_bytes).collect();
    let size: usize = batch
        .columns()
        .iter()
        .zip(&views)
        .map(|(c, v)| wire_size(c, *v))
        .sum();
    let rows = batch.num_rows();
    let pieces = size.div_ceil(limit.max(1)).clamp(1, rows.max(1));
    if pieces == 1 {
        let wasteful =
            |v: &Option<(usize, usize)>| matches!(v, Some((used, held)) if *held > 2 * used + 4096);
        if !views.iter().any(wasteful) {
            return vec![(batch, size)];
        }
        let columns = batch
            .columns()
            .iter()
            .zip(&views)
            .map(|(c, v)| {
                if wasteful(v) {
                    compacted(c)
                } else {
                    Arc::clone(c)
                }
            })
            .collect();
        return vec![(
            RecordBatch::try_new(batch.schema(), columns).unwrap_or(batch),
            size,
        )];
    }
    let per_piece = rows.div_ceil(pieces);
    (0..rows)
        .step_by(per_piece)
        .map(|offset| {
            let length = per_piece.min(rows - offset);
            let piece = batch.slice(offset, length);
            let bytes = size * length / rows;
            if !views.iter().any(Option::is_some) {
                return (piece, bytes);
            }
            let columns = piece.columns().iter().map(compacted).collect();
            (
                RecordBatch::try_new(piece.schema(), columns).unwrap_or(piece),
                bytes,
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringViewArray};
    use arrow::datatypes::{Field, Schema};
    use arrow::ipc::writer::StreamWriter;

    /// Bytes of `batch` written as an IPC stream.
    fn ipc_bytes(batch: &RecordBatch) -> usize {
        let mut out = Vec::new();
        let mut writer = StreamWriter::try_new(&mut out, &batch.schema()).expect("writer");
        writer.write(batch).expect("write");
        writer.finish().expect("finish");
        out.len()
    }

    fn batches(pieces: Vec<(RecordBatch, usize)>) -> Vec<RecordBatch> {
        pieces.into_iter().map(|(b, _)| b).collect()
    }

    fn batch(rows: usize) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("comment", DataType::Utf8View, false),
        ]));
        let ids = Int64Array::from_iter_values(0..rows as i64);
        let comments = StringViewArray::from_iter_values(
            (0..rows).map(|i| format!("a comment longer than twelve bytes, row {i}")),
        );
        RecordBatch::try_new(schema, vec![Arc::new(ids), Arc::new(comments)]).expect("batch")
    }

    #[test]
    fn a_batch_that_fits_is_one_piece() {
        let b = batch(1000);
        let pieces = batches(for_messages(b.clone(), 1 << 20));
        assert_eq!(pieces.len(), 1);
        assert_eq!(pieces[0], b);
    }

    #[test]
    fn split_pieces_send_each_string_once() {
        let b = batch(20_000);
        let whole = ipc_bytes(&b);
        let pieces = batches(for_messages(b.clone(), whole / 4));
        assert!(pieces.len() >= 4, "{} pieces", pieces.len());
        let rows: usize = pieces.iter().map(RecordBatch::num_rows).sum();
        assert_eq!(rows, 20_000);
        let sent: usize = pieces.iter().map(ipc_bytes).sum();
        // Each piece carries its own strings only: the total stays near the whole batch's
        // size (plus per-message headers), where plain slices would send all strings 4 times.
        assert!(
            sent < whole + whole / 10,
            "sent {sent} for a {whole}-byte batch"
        );
        for p in &pieces {
            assert!(
                ipc_bytes(p) <= whole / 4 + whole / 20,
                "piece of {} bytes",
                ipc_bytes(p)
            );
        }
        let concatenated = arrow::compute::concat_batches(&b.schema(), &pieces).expect("concat");
        assert_eq!(concatenated, b);
    }

    #[test]
    fn a_view_column_over_a_shared_buffer_is_compacted() {
        let b = batch(10_000).slice(0, 10);
        let pieces = batches(for_messages(b.clone(), 1 << 20));
        assert_eq!(pieces.len(), 1);
        assert!(ipc_bytes(&pieces[0]) * 10 < ipc_bytes(&b));
        assert_eq!(pieces[0], b);
    }

    #[test]
    fn empty_batches_pass_through() {
        let b = batch(0);
        assert_eq!(batches(for_messages(b.clone(), 16)), vec![b]);
    }
}
