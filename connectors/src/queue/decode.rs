//! Message payloads to Arrow rows: `json` (one object per message), `csv` (one record per
//! message) or `raw` (the payload as the table's one column). A batch of messages is decoded in
//! one go; when that fails, it is split in halves until the bad messages are isolated, so a few
//! bad messages cost a few extra decodes, and every good one is kept in order.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, BinaryArray, RecordBatch, StringArray};
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::error::Result;

/// How payloads are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Json,
    Csv,
    Raw,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "json" => Ok(Self::Json),
            "csv" => Ok(Self::Csv),
            "raw" => Ok(Self::Raw),
            other => Err(format!(
                "unknown format `{other}`: expected json, csv or raw"
            )),
        }
    }
}

impl Format {
    /// Check the declared columns suit the format.
    pub(crate) fn check(self, schema: &SchemaRef) -> std::result::Result<(), String> {
        if self == Self::Raw
            && !(schema.fields().len() == 1
                && matches!(
                    schema.field(0).data_type(),
                    DataType::Utf8
                        | DataType::LargeUtf8
                        | DataType::Utf8View
                        | DataType::Binary
                        | DataType::LargeBinary
                        | DataType::BinaryView
                ))
        {
            return Err(
                "format 'raw' takes one declared column of a text or binary type (the payload)"
                    .into(),
            );
        }
        Ok(())
    }
}

/// Rows decoded from a run of messages: the batch, which messages it holds (indices into the
/// input, in order) and the messages that could not be decoded, with why.
pub(crate) struct Decoded {
    pub(crate) batch: RecordBatch,
    pub(crate) kept: Vec<usize>,
    pub(crate) bad: Vec<(usize, String)>,
}

/// Decode `payloads` into rows of `schema`.
pub(crate) fn decode(format: Format, schema: &SchemaRef, payloads: &[&[u8]]) -> Result<Decoded> {
    let mut parts = Vec::new();
    let mut kept = Vec::with_capacity(payloads.len());
    let mut bad = Vec::new();
    split(format, schema, payloads, 0, &mut parts, &mut kept, &mut bad);
    let batch = concat_batches(schema, &parts)?;
    Ok(Decoded { batch, kept, bad })
}

fn split(
    format: Format,
    schema: &SchemaRef,
    payloads: &[&[u8]],
    first: usize,
    parts: &mut Vec<RecordBatch>,
    kept: &mut Vec<usize>,
    bad: &mut Vec<(usize, String)>,
) {
    if payloads.is_empty() {
        return;
    }
    match decode_all(format, schema, payloads) {
        Ok(batch) => {
            kept.extend(first..first + payloads.len());
            parts.push(batch);
        }
        Err(reason) if payloads.len() == 1 => bad.push((first, reason)),
        Err(_) => {
            let mid = payloads.len() / 2;
            split(format, schema, &payloads[..mid], first, parts, kept, bad);
            split(
                format,
                schema,
                &payloads[mid..],
                first + mid,
                parts,
                kept,
                bad,
            );
        }
    }
}

/// Every payload as exactly one row, or why not.
fn decode_all(
    format: Format,
    schema: &SchemaRef,
    payloads: &[&[u8]],
) -> std::result::Result<RecordBatch, String> {
    let batch = match format {
        Format::Json => {
            let mut decoder = arrow_json::ReaderBuilder::new(Arc::clone(schema))
                .with_batch_size(payloads.len().max(1))
                .build_decoder()
                .map_err(|e| e.to_string())?;
            for p in payloads {
                feed(|b| decoder.decode(b).map_err(|e| e.to_string()), p)?;
                // A value cut short must not run into the next message.
                feed(|b| decoder.decode(b).map_err(|e| e.to_string()), b"\n")?;
            }
            decoder.flush().map_err(|e| e.to_string())?
        }
        Format::Csv => {
            let mut decoder = arrow_csv::ReaderBuilder::new(Arc::clone(schema))
                .with_header(false)
                .with_batch_size(payloads.len().max(1))
                .build_decoder();
            for p in payloads {
                let record = p.strip_suffix(b"\n").unwrap_or(p);
                feed(|b| decoder.decode(b).map_err(|e| e.to_string()), record)?;
                feed(|b| decoder.decode(b).map_err(|e| e.to_string()), b"\n")?;
            }
            decoder.flush().map_err(|e| e.to_string())?
        }
        Format::Raw => Some(raw(schema, payloads)?),
    };
    let batch = batch.unwrap_or_else(|| RecordBatch::new_empty(Arc::clone(schema)));
    if batch.num_rows() != payloads.len() {
        return Err(format!(
            "a message must hold exactly one record; these {} messages held {}",
            payloads.len(),
            batch.num_rows()
        ));
    }
    Ok(batch)
}

/// Hand all of `bytes` to a push decoder (which may take them in several calls).
fn feed(
    mut decode: impl FnMut(&[u8]) -> std::result::Result<usize, String>,
    mut bytes: &[u8],
) -> std::result::Result<(), String> {
    while !bytes.is_empty() {
        let n = decode(bytes)?;
        if n == 0 {
            return Err("the record is larger than one batch can hold".into());
        }
        bytes = &bytes[n..];
    }
    Ok(())
}

fn raw(schema: &SchemaRef, payloads: &[&[u8]]) -> std::result::Result<RecordBatch, String> {
    let field = schema.field(0);
    let column: ArrayRef = match field.data_type() {
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => {
            Arc::new(BinaryArray::from_iter_values(payloads.iter()))
        }
        _ => {
            let texts = payloads
                .iter()
                .map(|p| std::str::from_utf8(p).map_err(|e| format!("payload is not UTF-8: {e}")))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            Arc::new(StringArray::from(texts))
        }
    };
    let column =
        datafusion::arrow::compute::cast(&column, field.data_type()).map_err(|e| e.to_string())?;
    RecordBatch::try_new(Arc::clone(schema), vec![column]).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{Field, Schema};

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
        ]))
    }

    #[test]
    fn bad_messages_are_isolated_and_good_ones_kept_in_order() {
        let msgs: Vec<&[u8]> = vec![
            br#"{"id": 1, "name": "a"}"#,
            b"not json",
            br#"{"id": 3}"#,
            br#"{"id": "x"}"#,
            br#"{"id": 5, "name": "e"}{"id": 6}"#,
            br#"{"id": 7, "name": "g"#,
            br#"{"id": 8, "name": "h"}"#,
        ];
        let d = decode(Format::Json, &schema(), &msgs).unwrap();
        assert_eq!(d.kept, vec![0, 2, 6]);
        assert_eq!(
            d.bad.iter().map(|b| b.0).collect::<Vec<_>>(),
            vec![1, 3, 4, 5]
        );
        assert_eq!(d.batch.num_rows(), 3);
        let ids = d
            .batch
            .column(0)
            .as_any()
            .downcast_ref::<datafusion::arrow::array::Int64Array>()
            .unwrap();
        assert_eq!(ids.values(), &[1, 3, 8]);
    }

    #[test]
    fn csv_and_raw_payloads() {
        let msgs: Vec<&[u8]> = vec![b"1,a", b"2", b"x,y", b"4,d\n"];
        let d = decode(Format::Csv, &schema(), &msgs).unwrap();
        assert_eq!(d.kept, vec![0, 3]);
        assert_eq!(d.bad.len(), 2);
        let raw_schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Utf8, false)]));
        let d = decode(Format::Raw, &raw_schema, &[b"hello", b"\xff"]).unwrap();
        assert_eq!(d.kept, vec![0]);
        assert!(d.bad[0].1.contains("UTF-8"));
        assert!(Format::Raw.check(&schema()).is_err());
    }
}
