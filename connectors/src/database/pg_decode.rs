//! Decoding PostgreSQL's binary COPY format (`COPY ... TO STDOUT (FORMAT binary)`) into
//! Arrow: [`RowDecoder`] parses the stream (header, rows, trailer; a row may span chunks) and
//! [`Decoder`] turns one column's binary values into an Arrow builder of the column's type,
//! casting where the natural type differs. Used by [`super::pg_binary`].

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder, Float32Builder,
    Float64Builder, Int8Builder, Int16Builder, Int32Builder, Int64Builder,
    IntervalMonthDayNanoBuilder, PrimitiveArray, StringBuilder, Time64MicrosecondBuilder,
    UInt32Builder,
};
use datafusion::arrow::compute::{can_cast_types, cast};
use datafusion::arrow::datatypes::{
    DataType, IntervalMonthDayNano, SchemaRef, TimeUnit, TimestampMicrosecondType,
    TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType,
};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::error::DataFusionError;
use tokio_postgres::types::{Kind, Type};

/// Rows per batch of a COPY read.
const BATCH_ROWS: usize = 8192;
/// Microseconds from 1970-01-01 to PostgreSQL's epoch, 2000-01-01.
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
/// Days from 1970-01-01 to 2000-01-01.
const PG_EPOCH_DAYS: i32 = 10_957;
const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

pub(super) fn copy_error(m: &str) -> DataFusionError {
    DataFusionError::Execution(format!("reading PostgreSQL by binary COPY: {m}"))
}

/// Decodes a binary COPY stream into batches of the target schema.
pub(super) struct RowDecoder {
    schema: SchemaRef,
    columns: Vec<Decoder>,
    header_done: bool,
    pub(super) finished: bool,
    rows: usize,
}

impl RowDecoder {
    /// `None` when a column has no decoder (or the counts differ): use the row path.
    pub(super) fn new(types: &[Type], schema: &SchemaRef) -> Option<Self> {
        if types.len() != schema.fields().len() {
            return None;
        }
        let columns = types
            .iter()
            .zip(schema.fields())
            .map(|(t, f)| Decoder::for_column(t, f.data_type()))
            .collect::<Option<Vec<_>>>()?;
        Some(Self {
            schema: Arc::clone(schema),
            columns,
            header_done: false,
            finished: false,
            rows: 0,
        })
    }

    /// Decode the complete rows at the start of `data`; the bytes used.
    pub(super) fn parse(&mut self, data: &[u8]) -> Result<usize, DataFusionError> {
        let mut pos = 0;
        if !self.header_done {
            if data.len() < 19 {
                return Ok(0);
            }
            if &data[..11] != SIGNATURE {
                return Err(copy_error("the stream does not start with a COPY header"));
            }
            let ext = be_i32(&data[15..19]);
            let Ok(ext) = usize::try_from(ext) else {
                return Err(copy_error("bad header extension length"));
            };
            if data.len() < 19 + ext {
                return Ok(0);
            }
            pos = 19 + ext;
            self.header_done = true;
        }
        let n = self.columns.len();
        while !self.finished && data.len() - pos >= 2 {
            let fields = i16::from_be_bytes([data[pos], data[pos + 1]]);
            if fields == -1 {
                self.finished = true;
                pos += 2;
                break;
            }
            if usize::try_from(fields).ok() != Some(n) {
                return Err(copy_error(&format!(
                    "a row has {fields} fields, expected {n}"
                )));
            }
            // Only whole rows are decoded: find where this one ends first.
            let mut end = pos + 2;
            let mut complete = true;
            for _ in 0..n {
                if data.len() < end + 4 {
                    complete = false;
                    break;
                }
                let len = be_i32(&data[end..end + 4]);
                end += 4;
                if len > 0 {
                    end += len as usize;
                    if data.len() < end {
                        complete = false;
                        break;
                    }
                }
            }
            if !complete {
                break;
            }
            let mut p = pos + 2;
            for (i, column) in self.columns.iter_mut().enumerate() {
                let len = be_i32(&data[p..p + 4]);
                p += 4;
                if len < 0 {
                    column.append_null();
                } else {
                    let value = &data[p..p + len as usize];
                    p += len as usize;
                    column.append(value).map_err(|m| {
                        copy_error(&format!("column `{}`: {m}", self.schema.field(i).name()))
                    })?;
                }
            }
            pos = end;
            self.rows += 1;
        }
        Ok(pos)
    }

    pub(super) fn take_full_batch(&mut self) -> Result<Option<RecordBatch>, DataFusionError> {
        if self.rows >= BATCH_ROWS {
            self.finish_batch()
        } else {
            Ok(None)
        }
    }

    pub(super) fn finish_batch(&mut self) -> Result<Option<RecordBatch>, DataFusionError> {
        if self.rows == 0 {
            return Ok(None);
        }
        self.rows = 0;
        let arrays = self
            .columns
            .iter_mut()
            .zip(self.schema.fields())
            .map(|(c, f)| {
                let array = c.finish()?;
                if array.data_type() == f.data_type() {
                    Ok(array)
                } else {
                    Ok(cast(&array, f.data_type())?)
                }
            })
            .collect::<Result<Vec<_>, DataFusionError>>()?;
        Ok(Some(RecordBatch::try_new(
            Arc::clone(&self.schema),
            arrays,
        )?))
    }
}

fn be_i32(b: &[u8]) -> i32 {
    i32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// One column's decoder: a PostgreSQL binary value into an Arrow builder.
enum Decoder {
    Bool(BooleanBuilder),
    /// `"char"`, one byte.
    Char(Int8Builder),
    Int16(Int16Builder),
    Int32(Int32Builder),
    /// int8 and money (cents).
    Int64(Int64Builder),
    Oid(UInt32Builder),
    Float32(Float32Builder),
    Float64(Float64Builder),
    /// text, varchar, name, json, enum labels; `skip` leading bytes (jsonb's version), `trim`
    /// trailing blanks (bpchar, as the providers crate reads it).
    Text {
        builder: StringBuilder,
        skip: usize,
        trim: bool,
    },
    Uuid(StringBuilder),
    Bytes(BinaryBuilder),
    Date(Date32Builder),
    Time(Time64MicrosecondBuilder),
    /// Values in `unit` since 1970; built as `Timestamp(unit, tz)`.
    Timestamp {
        values: Int64Builder,
        unit: TimeUnit,
        tz: Option<Arc<str>>,
    },
    Interval(IntervalMonthDayNanoBuilder),
    Decimal {
        builder: Decimal128Builder,
        precision: u8,
        scale: i8,
    },
    /// numeric into a float column (`avg` in PostgreSQL is numeric, in DataFusion Float64).
    NumericFloat(Float64Builder),
}

impl Decoder {
    /// The decoder for a column of PostgreSQL type `pg` read into Arrow type `target`, when its
    /// natural Arrow type is `target` or casts to it.
    fn for_column(pg: &Type, target: &DataType) -> Option<Self> {
        match pg.kind() {
            Kind::Domain(base) => return Self::for_column(base, target),
            Kind::Enum(_) => {
                return Self::checked(
                    Self::Text {
                        builder: StringBuilder::new(),
                        skip: 0,
                        trim: false,
                    },
                    target,
                );
            }
            Kind::Simple => {}
            _ => return None,
        }
        let text = |skip, trim| Self::Text {
            builder: StringBuilder::new(),
            skip,
            trim,
        };
        let decoder = match *pg {
            Type::BOOL => Self::Bool(BooleanBuilder::new()),
            Type::CHAR => Self::Char(Int8Builder::new()),
            Type::INT2 => Self::Int16(Int16Builder::new()),
            Type::INT4 => Self::Int32(Int32Builder::new()),
            Type::INT8 | Type::MONEY => Self::Int64(Int64Builder::new()),
            Type::OID => Self::Oid(UInt32Builder::new()),
            Type::FLOAT4 => Self::Float32(Float32Builder::new()),
            Type::FLOAT8 => Self::Float64(Float64Builder::new()),
            Type::TEXT | Type::VARCHAR | Type::NAME | Type::JSON => text(0, false),
            Type::BPCHAR => text(0, true),
            Type::JSONB => text(1, false),
            Type::UUID => Self::Uuid(StringBuilder::new()),
            Type::BYTEA => Self::Bytes(BinaryBuilder::new()),
            Type::DATE => Self::Date(Date32Builder::new()),
            Type::TIME => Self::Time(Time64MicrosecondBuilder::new()),
            Type::TIMESTAMP | Type::TIMESTAMPTZ => {
                let (unit, tz) = match target {
                    DataType::Timestamp(unit, tz) => (*unit, tz.clone()),
                    _ if *pg == Type::TIMESTAMPTZ => (TimeUnit::Microsecond, Some("UTC".into())),
                    _ => (TimeUnit::Microsecond, None),
                };
                Self::Timestamp {
                    values: Int64Builder::new(),
                    unit,
                    tz,
                }
            }
            Type::INTERVAL => Self::Interval(IntervalMonthDayNanoBuilder::new()),
            Type::NUMERIC => match target {
                DataType::Decimal128(precision, scale) => Self::Decimal {
                    builder: Decimal128Builder::new(),
                    precision: *precision,
                    scale: *scale,
                },
                DataType::Float16 | DataType::Float32 | DataType::Float64 => {
                    Self::NumericFloat(Float64Builder::new())
                }
                t if t.is_integer() => Self::Decimal {
                    builder: Decimal128Builder::new(),
                    precision: 38,
                    scale: 0,
                },
                _ => return None,
            },
            _ => return None,
        };
        Self::checked(decoder, target)
    }

    fn checked(decoder: Self, target: &DataType) -> Option<Self> {
        let natural = decoder.data_type();
        (natural == *target || can_cast_types(&natural, target)).then_some(decoder)
    }

    /// The type [`Decoder::finish`] builds.
    fn data_type(&self) -> DataType {
        match self {
            Self::Bool(_) => DataType::Boolean,
            Self::Char(_) => DataType::Int8,
            Self::Int16(_) => DataType::Int16,
            Self::Int32(_) => DataType::Int32,
            Self::Int64(_) => DataType::Int64,
            Self::Oid(_) => DataType::UInt32,
            Self::Float32(_) => DataType::Float32,
            Self::Float64(_) | Self::NumericFloat(_) => DataType::Float64,
            Self::Text { .. } | Self::Uuid(_) => DataType::Utf8,
            Self::Bytes(_) => DataType::Binary,
            Self::Date(_) => DataType::Date32,
            Self::Time(_) => DataType::Time64(TimeUnit::Microsecond),
            Self::Timestamp { unit, tz, .. } => DataType::Timestamp(*unit, tz.clone()),
            Self::Interval(_) => {
                DataType::Interval(datafusion::arrow::datatypes::IntervalUnit::MonthDayNano)
            }
            Self::Decimal {
                precision, scale, ..
            } => DataType::Decimal128(*precision, *scale),
        }
    }

    fn append_null(&mut self) {
        match self {
            Self::Bool(b) => b.append_null(),
            Self::Char(b) => b.append_null(),
            Self::Int16(b) => b.append_null(),
            Self::Int32(b) => b.append_null(),
            Self::Int64(b) => b.append_null(),
            Self::Oid(b) => b.append_null(),
            Self::Float32(b) => b.append_null(),
            Self::Float64(b) | Self::NumericFloat(b) => b.append_null(),
            Self::Text { builder, .. } | Self::Uuid(builder) => builder.append_null(),
            Self::Bytes(b) => b.append_null(),
            Self::Date(b) => b.append_null(),
            Self::Time(b) => b.append_null(),
            Self::Timestamp { values, .. } => values.append_null(),
            Self::Interval(b) => b.append_null(),
            Self::Decimal { builder, .. } => builder.append_null(),
        }
    }

    fn append(&mut self, v: &[u8]) -> Result<(), String> {
        match self {
            Self::Bool(b) => b.append_value(fixed::<1>(v, "bool")?[0] != 0),
            Self::Char(b) => b.append_value(i8::from_be_bytes(fixed::<1>(v, "\"char\"")?)),
            Self::Int16(b) => b.append_value(i16::from_be_bytes(fixed(v, "int2")?)),
            Self::Int32(b) => b.append_value(i32::from_be_bytes(fixed(v, "int4")?)),
            Self::Int64(b) => b.append_value(i64::from_be_bytes(fixed(v, "int8")?)),
            Self::Oid(b) => b.append_value(u32::from_be_bytes(fixed(v, "oid")?)),
            Self::Float32(b) => b.append_value(f32::from_be_bytes(fixed(v, "float4")?)),
            Self::Float64(b) => b.append_value(f64::from_be_bytes(fixed(v, "float8")?)),
            Self::Text {
                builder,
                skip,
                trim,
            } => {
                let bytes = v.get(*skip..).ok_or("truncated jsonb value")?;
                let s = std::str::from_utf8(bytes).map_err(|e| format!("invalid UTF-8: {e}"))?;
                builder.append_value(if *trim { s.trim_end() } else { s });
            }
            Self::Uuid(b) => b.append_value(uuid_text(&fixed::<16>(v, "uuid")?)),
            Self::Bytes(b) => b.append_value(v),
            Self::Date(b) => {
                let days = i32::from_be_bytes(fixed(v, "date")?);
                if days == i32::MAX || days == i32::MIN {
                    return Err("an infinite date has no Arrow value".into());
                }
                b.append_value(days.checked_add(PG_EPOCH_DAYS).ok_or("date out of range")?);
            }
            Self::Time(b) => b.append_value(i64::from_be_bytes(fixed(v, "time")?)),
            Self::Timestamp { values, unit, .. } => {
                let micros = i64::from_be_bytes(fixed(v, "timestamp")?);
                if micros == i64::MAX || micros == i64::MIN {
                    return Err("an infinite timestamp has no Arrow value".into());
                }
                let micros = micros
                    .checked_add(PG_EPOCH_MICROS)
                    .ok_or("timestamp out of range")?;
                let value = match unit {
                    TimeUnit::Second => Some(micros.div_euclid(1_000_000)),
                    TimeUnit::Millisecond => Some(micros.div_euclid(1_000)),
                    TimeUnit::Microsecond => Some(micros),
                    TimeUnit::Nanosecond => micros.checked_mul(1_000),
                };
                values.append_value(value.ok_or(
                    "timestamp outside the nanosecond range (years 1677-2262) of its column",
                )?);
            }
            Self::Interval(b) => {
                let [
                    m0,
                    m1,
                    m2,
                    m3,
                    m4,
                    m5,
                    m6,
                    m7,
                    d0,
                    d1,
                    d2,
                    d3,
                    n0,
                    n1,
                    n2,
                    n3,
                ] = fixed::<16>(v, "interval")?;
                let micros = i64::from_be_bytes([m0, m1, m2, m3, m4, m5, m6, m7]);
                let days = i32::from_be_bytes([d0, d1, d2, d3]);
                let months = i32::from_be_bytes([n0, n1, n2, n3]);
                let nanos = micros.checked_mul(1_000).ok_or("interval out of range")?;
                b.append_value(IntervalMonthDayNano::new(months, days, nanos));
            }
            Self::Decimal {
                builder,
                precision,
                scale,
            } => builder.append_value(numeric_to_decimal(v, *precision, *scale)?),
            Self::NumericFloat(b) => b.append_value(numeric_to_f64(v)?),
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<ArrayRef, DataFusionError> {
        Ok(match self {
            Self::Bool(b) => Arc::new(b.finish()),
            Self::Char(b) => Arc::new(b.finish()),
            Self::Int16(b) => Arc::new(b.finish()),
            Self::Int32(b) => Arc::new(b.finish()),
            Self::Int64(b) => Arc::new(b.finish()),
            Self::Oid(b) => Arc::new(b.finish()),
            Self::Float32(b) => Arc::new(b.finish()),
            Self::Float64(b) | Self::NumericFloat(b) => Arc::new(b.finish()),
            Self::Text { builder, .. } | Self::Uuid(builder) => Arc::new(builder.finish()),
            Self::Bytes(b) => Arc::new(b.finish()),
            Self::Date(b) => Arc::new(b.finish()),
            Self::Time(b) => Arc::new(b.finish()),
            Self::Timestamp { values, unit, tz } => {
                let (_, values, nulls) = values.finish().into_parts();
                let tz = tz.clone();
                match unit {
                    TimeUnit::Second => Arc::new(
                        PrimitiveArray::<TimestampSecondType>::new(values, nulls)
                            .with_timezone_opt(tz),
                    ),
                    TimeUnit::Millisecond => Arc::new(
                        PrimitiveArray::<TimestampMillisecondType>::new(values, nulls)
                            .with_timezone_opt(tz),
                    ),
                    TimeUnit::Microsecond => Arc::new(
                        PrimitiveArray::<TimestampMicrosecondType>::new(values, nulls)
                            .with_timezone_opt(tz),
                    ),
                    TimeUnit::Nanosecond => Arc::new(
                        PrimitiveArray::<TimestampNanosecondType>::new(values, nulls)
                            .with_timezone_opt(tz),
                    ),
                }
            }
            Self::Interval(b) => Arc::new(b.finish()),
            Self::Decimal {
                builder,
                precision,
                scale,
            } => Arc::new(
                builder
                    .finish()
                    .with_precision_and_scale(*precision, *scale)?,
            ),
        })
    }
}

/// `v` as exactly `N` bytes.
fn fixed<const N: usize>(v: &[u8], what: &str) -> Result<[u8; N], String> {
    <[u8; N]>::try_from(v).map_err(|_| format!("{what} value of {} bytes", v.len()))
}

fn uuid_text(b: &[u8; 16]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(36);
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push(HEX[usize::from(byte >> 4)] as char);
        s.push(HEX[usize::from(byte & 0xf)] as char);
    }
    s
}

/// A binary numeric's parts: sign (true when negative), base-10000 digits and the weight of
/// the first digit (its power of 10000).
fn numeric_parts(v: &[u8]) -> Result<(bool, Vec<i16>, i16), String> {
    if v.len() < 8 {
        return Err(format!("numeric value of {} bytes", v.len()));
    }
    let ndigits = usize::from(u16::from_be_bytes([v[0], v[1]]));
    let weight = i16::from_be_bytes([v[2], v[3]]);
    let sign = u16::from_be_bytes([v[4], v[5]]);
    if v.len() != 8 + 2 * ndigits {
        return Err(format!(
            "numeric value of {} bytes for {ndigits} digits",
            v.len()
        ));
    }
    let negative = match sign {
        0x0000 => false,
        0x4000 => true,
        0xC000 => return Err("NaN has no decimal value".into()),
        0xD000 | 0xF000 => return Err("an infinite numeric has no decimal value".into()),
        other => return Err(format!("numeric sign {other:#x}")),
    };
    let digits = v[8..]
        .chunks_exact(2)
        .map(|d| i16::from_be_bytes([d[0], d[1]]))
        .collect();
    Ok((negative, digits, weight))
}

/// A binary numeric as a Decimal128 value of `scale`, rounded half away from zero, checked
/// against `precision`.
fn numeric_to_decimal(v: &[u8], precision: u8, scale: i8) -> Result<i128, String> {
    let (negative, digits, weight) = numeric_parts(v)?;
    let overflow = || format!("numeric value does not fit decimal({precision},{scale})");
    let mut mantissa: i128 = 0;
    for d in &digits {
        mantissa = mantissa
            .checked_mul(10_000)
            .and_then(|m| m.checked_add(i128::from(*d)))
            .ok_or_else(overflow)?;
    }
    // value = mantissa * 10^(4 * (weight - ndigits + 1)); wanted: value * 10^scale.
    let shift = 4 * (i32::from(weight) - digits.len() as i32 + 1) + i32::from(scale);
    let mut value = if digits.is_empty() {
        0
    } else if shift >= 0 {
        10i128
            .checked_pow(shift as u32)
            .and_then(|p| mantissa.checked_mul(p))
            .ok_or_else(overflow)?
    } else if -shift > 38 {
        0
    } else {
        let divisor = 10i128.pow((-shift) as u32);
        let (q, r) = (mantissa / divisor, mantissa % divisor);
        if r * 2 >= divisor { q + 1 } else { q }
    };
    if negative {
        value = -value;
    }
    if precision < 39 && value.unsigned_abs() >= 10u128.pow(u32::from(precision)) {
        return Err(overflow());
    }
    Ok(value)
}

/// A binary numeric as the nearest f64 (through its decimal text, so it rounds once).
fn numeric_to_f64(v: &[u8]) -> Result<f64, String> {
    let (negative, digits, weight) = numeric_parts(v)?;
    if digits.is_empty() {
        return Ok(0.0);
    }
    let mut text = String::with_capacity(digits.len() * 4 + 8);
    if negative {
        text.push('-');
    }
    for d in &digits {
        text.push_str(&format!("{d:04}"));
    }
    let exponent = 4 * (i32::from(weight) - digits.len() as i32 + 1);
    text.push_str(&format!("e{exponent}"));
    text.parse::<f64>()
        .map_err(|e| format!("numeric `{text}`: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::{Decimal128Type, Field, Int64Type, Schema};

    /// A binary numeric from its parts.
    fn numeric(negative: bool, weight: i16, dscale: u16, digits: &[i16]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&(digits.len() as u16).to_be_bytes());
        v.extend_from_slice(&weight.to_be_bytes());
        v.extend_from_slice(&(if negative { 0x4000u16 } else { 0 }).to_be_bytes());
        v.extend_from_slice(&dscale.to_be_bytes());
        for d in digits {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v
    }

    #[test]
    fn numerics_scale_round_and_overflow() {
        // 12345.67 = 1|2345|6700 with weight 1.
        let n = numeric(false, 1, 2, &[1, 2345, 6700]);
        assert_eq!(numeric_to_decimal(&n, 12, 2), Ok(1_234_567));
        assert_eq!(numeric_to_decimal(&n, 12, 4), Ok(123_456_700));
        assert_eq!(numeric_to_decimal(&n, 12, 1), Ok(123_457));
        assert_eq!(numeric_to_decimal(&n, 12, 0), Ok(12_346));
        assert!(numeric_to_decimal(&n, 4, 0).is_err());
        assert_eq!(numeric_to_f64(&n), Ok(12345.67));
        // -0.0005 = 5 at weight -1; 50000 = 5 at weight 1.
        let small = numeric(true, -1, 4, &[5]);
        assert_eq!(numeric_to_decimal(&small, 10, 4), Ok(-5));
        assert_eq!(numeric_to_decimal(&small, 10, 3), Ok(-1));
        assert_eq!(numeric_to_f64(&small), Ok(-0.0005));
        assert_eq!(
            numeric_to_decimal(&numeric(false, 1, 0, &[5]), 10, 0),
            Ok(50_000)
        );
        assert_eq!(numeric_to_decimal(&numeric(false, 0, 0, &[]), 10, 2), Ok(0));
        let mut nan = numeric(false, 0, 0, &[]);
        nan[4] = 0xC0;
        assert!(numeric_to_decimal(&nan, 10, 2).unwrap_err().contains("NaN"));
        assert!(numeric_to_decimal(&[0, 1], 10, 2).is_err());
    }

    #[test]
    fn uuids_read_as_text() {
        let b = [
            0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab,
            0xcd, 0xef,
        ];
        assert_eq!(uuid_text(&b), "12345678-9abc-def0-0123-456789abcdef");
    }

    /// A COPY stream with a header, `rows` and the trailer.
    fn stream(rows: &[Vec<Option<Vec<u8>>>]) -> Vec<u8> {
        let mut s = SIGNATURE.to_vec();
        s.extend_from_slice(&0i32.to_be_bytes());
        s.extend_from_slice(&0i32.to_be_bytes());
        for row in rows {
            s.extend_from_slice(&(row.len() as i16).to_be_bytes());
            for f in row {
                match f {
                    Some(v) => {
                        s.extend_from_slice(&(v.len() as i32).to_be_bytes());
                        s.extend_from_slice(v);
                    }
                    None => s.extend_from_slice(&(-1i32).to_be_bytes()),
                }
            }
        }
        s.extend_from_slice(&(-1i16).to_be_bytes());
        s
    }

    #[test]
    fn rows_decode_across_any_chunking() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("amount", DataType::Decimal128(12, 2), true),
            Field::new("status", DataType::Utf8, true),
            Field::new(
                "created",
                DataType::Timestamp(TimeUnit::Nanosecond, None),
                true,
            ),
            Field::new("day", DataType::Date32, true),
        ]));
        let types = [
            Type::INT8,
            Type::NUMERIC,
            Type::TEXT,
            Type::TIMESTAMP,
            Type::DATE,
        ];
        let rows = vec![
            vec![
                Some(7i64.to_be_bytes().to_vec()),
                Some(numeric(false, 1, 2, &[1, 2345, 6700])),
                Some(b"paid".to_vec()),
                // 2000-01-01 00:00:01
                Some(1_000_000i64.to_be_bytes().to_vec()),
                // 1999-12-31
                Some((-1i32).to_be_bytes().to_vec()),
            ],
            vec![None, None, None, None, None],
        ];
        let bytes = stream(&rows);
        for chunk in [1, 3, 7, bytes.len()] {
            let mut d = RowDecoder::new(&types, &schema).expect("decodable");
            let mut pending = Vec::new();
            for piece in bytes.chunks(chunk) {
                pending.extend_from_slice(piece);
                let used = d.parse(&pending).expect("parses");
                pending.drain(..used);
            }
            assert!(d.finished && pending.is_empty(), "chunk {chunk}");
            let batch = d.finish_batch().expect("builds").expect("rows");
            assert_eq!(batch.num_rows(), 2);
            assert_eq!(batch.column(0).as_primitive::<Int64Type>().value(0), 7);
            assert_eq!(
                batch.column(1).as_primitive::<Decimal128Type>().value(0),
                1_234_567
            );
            assert_eq!(batch.column(2).as_string::<i32>().value(0), "paid");
            assert_eq!(
                batch
                    .column(3)
                    .as_primitive::<TimestampNanosecondType>()
                    .value(0),
                (PG_EPOCH_MICROS + 1_000_000) * 1_000
            );
            assert_eq!(
                batch
                    .column(4)
                    .as_primitive::<datafusion::arrow::datatypes::Date32Type>()
                    .value(0),
                PG_EPOCH_DAYS - 1
            );
            assert!((0..5).all(|c| batch.column(c).is_null(1)));
        }
    }

    #[test]
    fn unknown_types_and_bad_rows_are_refused() {
        let schema = Arc::new(Schema::new(vec![Field::new(
            "a",
            DataType::List(Arc::new(Field::new("item", DataType::Int32, true))),
            true,
        )]));
        assert!(RowDecoder::new(&[Type::INT4_ARRAY], &schema).is_none());
        let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Int32, true)]));
        assert!(RowDecoder::new(&[Type::INT4, Type::INT4], &schema).is_none());
        let mut d = RowDecoder::new(&[Type::INT4], &schema).expect("decodable");
        // A 2-byte int4.
        let bad = stream(&[vec![Some(vec![0, 1])]]);
        let err = d.parse(&bad).unwrap_err().to_string();
        assert!(err.contains("column `a`") && err.contains("int4"), "{err}");
    }
}
