//! Rows to message payloads for queue sinks: one JSON object, one CSV record (no header) or the
//! raw value of the one column per row.

use datafusion::arrow::array::{Array, BinaryArray, RecordBatch};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::util::display::array_value_to_string;
use datafusion::error::{DataFusionError, Result};

use super::decode::Format;

/// One payload per row of `batch`.
pub(crate) fn payloads(format: Format, batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
    match format {
        Format::Json => json_lines(batch),
        Format::Csv => csv_lines(batch),
        Format::Raw => raw_payloads(batch),
    }
}

/// One JSON object per row (null values left out).
fn json_lines(batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
    let mut writer = arrow_json::LineDelimitedWriter::new(Vec::new());
    writer.write(batch)?;
    writer.finish()?;
    let text = writer.into_inner();
    let lines: Vec<Vec<u8>> = text
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    if lines.len() != batch.num_rows() {
        return Err(DataFusionError::Internal(format!(
            "JSON encoding gave {} lines for {} rows",
            lines.len(),
            batch.num_rows()
        )));
    }
    Ok(lines)
}

/// One CSV record per row, without a header.
fn csv_lines(batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
    (0..batch.num_rows())
        .map(|row| {
            let mut writer = arrow_csv::WriterBuilder::new()
                .with_header(false)
                .build(Vec::new());
            writer.write(&batch.slice(row, 1))?;
            let mut line = writer.into_inner();
            if line.last() == Some(&b'\n') {
                line.pop();
            }
            Ok(line)
        })
        .collect()
}

/// The one column's value as the payload.
fn raw_payloads(batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
    let column = batch.column(0);
    if matches!(
        column.data_type(),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView
    ) {
        let column = datafusion::arrow::compute::cast(column, &DataType::Binary)?;
        if let Some(bin) = column.as_any().downcast_ref::<BinaryArray>() {
            return Ok((0..bin.len()).map(|i| bin.value(i).to_vec()).collect());
        }
    }
    (0..column.len())
        .map(|i| Ok(array_value_to_string(column.as_ref(), i)?.into_bytes()))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    #[test]
    fn json_and_csv_payloads_per_row() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("kind", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![1, 2])),
                Arc::new(StringArray::from(vec![Some("a,b"), None])),
            ],
        )
        .unwrap();
        let json = payloads(Format::Json, &batch).unwrap();
        assert_eq!(json[0], br#"{"id":1,"kind":"a,b"}"#);
        assert_eq!(json[1], br#"{"id":2}"#);
        let csv = payloads(Format::Csv, &batch).unwrap();
        assert_eq!(csv[0], br#"1,"a,b""#);
        assert_eq!(csv[1], b"2,");
    }
}
