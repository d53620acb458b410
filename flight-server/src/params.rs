//! Statement parameters: the types DataFusion infers for `$n` placeholders, the rows a client
//! binds, and casting each bound value to the expected type.

use std::collections::HashMap;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::error::FlightError;
use arrow_flight::sql::server::PeekableFlightDataStream;
use datafusion::common::ScalarValue;
use datafusion::logical_expr::LogicalPlan;
use futures::TryStreamExt;
use tonic::Status;

/// `$1`, `$2`, ... in order, with the type DataFusion inferred (None when it could not).
pub(crate) fn parameter_types(
    plan: &LogicalPlan,
) -> Result<Vec<(String, Option<DataType>)>, Status> {
    let types: HashMap<String, Option<DataType>> = plan
        .get_parameter_types()
        .map_err(|e| Status::invalid_argument(format!("parameters: {e}")))?;
    let mut params: Vec<_> = types.into_iter().collect();
    params.sort_by_key(|(name, _)| {
        name.trim_start_matches('$')
            .parse::<usize>()
            .unwrap_or(usize::MAX)
    });
    Ok(params)
}

pub(crate) fn parameter_schema(plan: &LogicalPlan) -> Result<Schema, Status> {
    Ok(Schema::new(
        parameter_types(plan)?
            .into_iter()
            .map(|(name, t)| Field::new(name, t.unwrap_or(DataType::Null), true))
            .collect::<Vec<_>>(),
    ))
}

/// Parameter rows of the bound batches: one `Vec` of column arrays per row.
pub(crate) fn param_rows(batches: &[RecordBatch]) -> Result<Vec<Vec<ScalarValue>>, Status> {
    let mut rows = Vec::new();
    for batch in batches {
        for row in 0..batch.num_rows() {
            let values = batch
                .columns()
                .iter()
                .map(|col: &ArrayRef| {
                    ScalarValue::try_from_array(col, row)
                        .map_err(|e| Status::invalid_argument(format!("parameter value: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            rows.push(values);
        }
    }
    Ok(rows)
}

/// Cast one row of client values to the types the statement expects.
pub(crate) fn bind_row(
    types: &[(String, Option<DataType>)],
    row: Vec<ScalarValue>,
) -> Result<Vec<ScalarValue>, Status> {
    if row.len() != types.len() {
        return Err(Status::invalid_argument(format!(
            "the statement has {} parameter(s) but {} value(s) were bound",
            types.len(),
            row.len()
        )));
    }
    row.into_iter()
        .zip(types)
        .map(|(value, (name, expected))| match expected {
            Some(t) if value.data_type() != *t => value.cast_to(t).map_err(|_| {
                Status::invalid_argument(format!(
                    "parameter {name}: cannot use {} value {value} where {t} is expected",
                    value.data_type()
                ))
            }),
            _ => Ok(value),
        })
        .collect()
}

/// Arrow record batches of an uploaded Flight data stream (`DoPut`). The first message may carry
/// only the command (no Arrow data), e.g. when nothing is bound: such messages are skipped.
pub(crate) fn uploaded_batches(stream: PeekableFlightDataStream) -> FlightRecordBatchStream {
    FlightRecordBatchStream::new_from_flight_data(
        stream
            .try_filter(|m| futures::future::ready(!m.data_header.is_empty()))
            .map_err(FlightError::from),
    )
}

/// Bound parameter rows uploaded with `DoPut`.
pub(crate) async fn decode_params(
    stream: PeekableFlightDataStream,
) -> Result<Vec<RecordBatch>, Status> {
    uploaded_batches(stream)
        .try_collect()
        .await
        .map_err(|e| Status::invalid_argument(format!("cannot decode parameters: {e}")))
}
