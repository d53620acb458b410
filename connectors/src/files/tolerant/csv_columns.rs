//! Typing CSV fields into Arrow columns with arrow-csv's parsers, one column at a time, noting a
//! reason for every row whose value does not fit instead of failing the batch.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BinaryArray, BooleanArray, LargeStringArray, PrimitiveArray, PrimitiveBuilder,
    StringArray, StringViewArray, new_null_array,
};
use arrow::compute::{CastOptions, cast_with_options};
use arrow::datatypes::*;
use arrow::error::ArrowError;
use arrow_cast::parse::{Parser, parse_decimal, string_to_datetime};
use chrono::Utc;

use super::csv_decoder::{CsvDialect, Rec};

/// The fields of the buffered records.
pub(super) struct Fields<'a> {
    pub(super) data: &'a [u8],
    pub(super) whole: Option<&'a str>,
    /// Without `whole` (the batch holds invalid UTF-8): each record's text, `None` if invalid.
    pub(super) per_record: Vec<Option<&'a str>>,
    pub(super) ends: &'a [usize],
    pub(super) recs: &'a [Rec],
}

impl<'a> Fields<'a> {
    fn len(&self) -> usize {
        self.recs.len()
    }

    fn range(&self, i: usize, j: usize) -> (usize, usize) {
        let rec = &self.recs[i];
        let start = if j == 0 {
            0
        } else {
            self.ends[rec.ends_start + j - 1]
        };
        let end = self.ends[rec.ends_start + j];
        (rec.data_start + start, rec.data_start + end)
    }

    fn bytes(&self, i: usize, j: usize) -> &'a [u8] {
        let (a, b) = self.range(i, j);
        &self.data[a..b]
    }

    /// Field text; `None` for invalid UTF-8.
    fn get(&self, i: usize, j: usize) -> Option<&'a str> {
        let (a, b) = self.range(i, j);
        match self.whole {
            Some(text) => text.get(a..b),
            None => {
                let base = self.recs[i].data_start;
                self.per_record
                    .get(i)
                    .copied()
                    .flatten()
                    .and_then(|t| t.get(a - base..b - base))
            }
        }
    }
}

/// Build column `j`, recording a reason for every row whose value does not fit.
pub(super) fn build_column(
    fields: &Fields<'_>,
    j: usize,
    field: &Field,
    dialect: &CsvDialect,
    reasons: &mut [Option<String>],
) -> ArrayRef {
    let n = fields.len();
    let name = field.name();
    // The text of each usable row's value, or None for NULL / rows already bad.
    let value = |i: usize, reasons: &[Option<String>]| -> Option<&str> {
        if reasons[i].is_some() {
            return None;
        }
        fields.get(i, j).filter(|s| !dialect.is_null(s))
    };
    macro_rules! primitive {
        ($t:ty) => {{
            let mut out = PrimitiveBuilder::<$t>::with_capacity(n);
            for i in 0..n {
                match value(i, reasons) {
                    None => out.append_null(),
                    Some(s) => match <$t as Parser>::parse(s) {
                        Some(v) => out.append_value(v),
                        None => {
                            reasons[i] = Some(format!(
                                "column {name}: cannot parse '{}' as {}",
                                clip(s),
                                field.data_type()
                            ));
                            out.append_null();
                        }
                    },
                }
            }
            Arc::new(out.finish()) as ArrayRef
        }};
    }
    macro_rules! decimal {
        ($t:ty, $p:expr, $s:expr) => {{
            let mut out = PrimitiveBuilder::<$t>::with_capacity(n);
            for i in 0..n {
                match value(i, reasons) {
                    None => out.append_null(),
                    Some(s) if !exponent_in_range(s) => {
                        reasons[i] = Some(format!(
                            "column {name}: cannot parse '{}' as {}: exponent out of range",
                            clip(s),
                            field.data_type()
                        ));
                        out.append_null();
                    }
                    Some(s) => match parse_decimal::<$t>(s, $p, $s) {
                        Ok(v) => out.append_value(v),
                        Err(e) => {
                            reasons[i] = Some(format!(
                                "column {name}: cannot parse '{}' as {}: {e}",
                                clip(s),
                                field.data_type()
                            ));
                            out.append_null();
                        }
                    },
                }
            }
            match out.finish().with_precision_and_scale($p, $s) {
                Ok(a) => Arc::new(a) as ArrayRef,
                Err(e) => fallback_error(n, field, reasons, &e),
            }
        }};
    }
    macro_rules! timestamp {
        ($t:ty, $tz:expr) => {{
            let tz = $tz;
            let mut out = Vec::with_capacity(n);
            for i in 0..n {
                let v = match value(i, reasons) {
                    None => None,
                    Some(s) => match parse_timestamp::<$t>(s, tz.as_deref()) {
                        Ok(v) => Some(v),
                        Err(e) => {
                            reasons[i] = Some(format!(
                                "column {name}: cannot parse '{}' as {}: {e}",
                                clip(s),
                                field.data_type()
                            ));
                            None
                        }
                    },
                };
                out.push(v);
            }
            Arc::new(PrimitiveArray::<$t>::from(out).with_timezone_opt(tz.clone())) as ArrayRef
        }};
    }
    let array: ArrayRef = match field.data_type() {
        DataType::Utf8 => Arc::new((0..n).map(|i| value(i, reasons)).collect::<StringArray>()),
        DataType::LargeUtf8 => Arc::new(
            (0..n)
                .map(|i| value(i, reasons))
                .collect::<LargeStringArray>(),
        ),
        DataType::Utf8View => Arc::new(
            (0..n)
                .map(|i| value(i, reasons))
                .collect::<StringViewArray>(),
        ),
        DataType::Binary => Arc::new(
            (0..n)
                .map(|i| value(i, reasons).map(|_| fields.bytes(i, j)))
                .collect::<BinaryArray>(),
        ),
        DataType::Boolean => {
            let mut out = Vec::with_capacity(n);
            for i in 0..n {
                let v = match value(i, reasons) {
                    None => None,
                    Some(s) if s.eq_ignore_ascii_case("true") => Some(true),
                    Some(s) if s.eq_ignore_ascii_case("false") => Some(false),
                    Some(s) => {
                        reasons[i] = Some(format!(
                            "column {name}: cannot parse '{}' as Boolean",
                            clip(s)
                        ));
                        None
                    }
                };
                out.push(v);
            }
            Arc::new(BooleanArray::from(out))
        }
        DataType::Int8 => primitive!(Int8Type),
        DataType::Int16 => primitive!(Int16Type),
        DataType::Int32 => primitive!(Int32Type),
        DataType::Int64 => primitive!(Int64Type),
        DataType::UInt8 => primitive!(UInt8Type),
        DataType::UInt16 => primitive!(UInt16Type),
        DataType::UInt32 => primitive!(UInt32Type),
        DataType::UInt64 => primitive!(UInt64Type),
        DataType::Float16 => primitive!(Float16Type),
        DataType::Float32 => primitive!(Float32Type),
        DataType::Float64 => primitive!(Float64Type),
        DataType::Date32 => primitive!(Date32Type),
        DataType::Date64 => primitive!(Date64Type),
        DataType::Time32(TimeUnit::Second) => primitive!(Time32SecondType),
        DataType::Time32(TimeUnit::Millisecond) => primitive!(Time32MillisecondType),
        DataType::Time64(TimeUnit::Microsecond) => primitive!(Time64MicrosecondType),
        DataType::Time64(TimeUnit::Nanosecond) => primitive!(Time64NanosecondType),
        DataType::Decimal32(p, s) => decimal!(Decimal32Type, *p, *s),
        DataType::Decimal64(p, s) => decimal!(Decimal64Type, *p, *s),
        DataType::Decimal128(p, s) => decimal!(Decimal128Type, *p, *s),
        DataType::Decimal256(p, s) => decimal!(Decimal256Type, *p, *s),
        DataType::Timestamp(TimeUnit::Second, tz) => timestamp!(TimestampSecondType, tz),
        DataType::Timestamp(TimeUnit::Millisecond, tz) => timestamp!(TimestampMillisecondType, tz),
        DataType::Timestamp(TimeUnit::Microsecond, tz) => timestamp!(TimestampMicrosecondType, tz),
        DataType::Timestamp(TimeUnit::Nanosecond, tz) => timestamp!(TimestampNanosecondType, tz),
        DataType::Null => new_null_array(&DataType::Null, n),
        other => {
            // Anything else (dictionaries, intervals, ...): text, then arrow's cast; a value
            // the cast turns into NULL is a bad value.
            let text: StringArray = (0..n).map(|i| value(i, reasons)).collect();
            match cast_with_options(
                &text,
                other,
                &CastOptions {
                    safe: true,
                    ..Default::default()
                },
            ) {
                Ok(cast) => {
                    for (i, reason) in reasons.iter_mut().enumerate() {
                        if cast.is_null(i) && text.is_valid(i) {
                            *reason = Some(format!(
                                "column {name}: cannot parse '{}' as {other}",
                                clip(text.value(i))
                            ));
                        }
                    }
                    cast
                }
                Err(e) => fallback_error(n, field, reasons, &e),
            }
        }
    };
    if !field.is_nullable() {
        for (i, reason) in reasons.iter_mut().enumerate() {
            if reason.is_none() && array.is_null(i) {
                *reason = Some(format!("column {name} is NOT NULL but the value is empty"));
            }
        }
    }
    array
}

/// The column cannot be built at all: every row is bad with the same reason.
fn fallback_error(
    n: usize,
    field: &Field,
    reasons: &mut [Option<String>],
    e: &ArrowError,
) -> ArrayRef {
    for r in reasons.iter_mut().filter(|r| r.is_none()) {
        *r = Some(format!("column {}: {e}", field.name()));
    }
    new_null_array(field.data_type(), n)
}

fn parse_timestamp<T: ArrowTimestampType>(s: &str, tz: Option<&str>) -> Result<i64, ArrowError> {
    let date = match tz {
        Some(tz) => {
            let tz: arrow::array::timezone::Tz = tz.parse()?;
            string_to_datetime(&tz, s)?.with_timezone(&Utc)
        }
        None => string_to_datetime(&Utc, s)?,
    };
    match T::UNIT {
        TimeUnit::Second => Ok(date.timestamp()),
        TimeUnit::Millisecond => Ok(date.timestamp_millis()),
        TimeUnit::Microsecond => Ok(date.timestamp_micros()),
        TimeUnit::Nanosecond => date
            .timestamp_nanos_opt()
            .ok_or_else(|| ArrowError::ParseError("out of range for nanoseconds".into())),
    }
}

/// Whether a decimal's exponent (`1.5e3`) is small enough for arrow's parser, which accumulates
/// it in an `i16` and overflows on longer ones (found by fuzzing: `1e88888888888`).
fn exponent_in_range(s: &str) -> bool {
    let Some(at) = s.find(['e', 'E']) else {
        return true;
    };
    let digits = s[at + 1..].trim_start_matches(['+', '-']);
    let mut value: u32 = 0;
    for b in digits.bytes().filter(u8::is_ascii_digit) {
        value = value.saturating_mul(10).saturating_add(u32::from(b - b'0'));
    }
    value <= 1000
}

/// A value quoted in a reason, cut to a readable length.
fn clip(s: &str) -> String {
    let mut out: String = s.chars().take(80).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}
