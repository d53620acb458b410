//! Arbitrary bytes through the tolerant CSV decoder, in arbitrary chunks: never a panic, every
//! record is a row or a bad row, and each bad row's offset points at its raw text.
#![no_main]

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use connectors::files::tolerant::csv_decoder::{CsvDecoder, CsvDialect};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let (ctl, body) = data.split_at(2);
    let schema = Arc::new(Schema::new(vec![
        Field::new("a", DataType::Int64, false),
        Field::new("b", DataType::Utf8, true),
        Field::new("c", DataType::Decimal128(10, 2), true),
        Field::new("d", DataType::Timestamp(TimeUnit::Microsecond, Some("+02:00".into())), true),
        Field::new("e", DataType::Boolean, true),
    ]));
    let dialect = CsvDialect {
        newlines_in_values: ctl[0] & 1 == 1,
        truncated_rows: ctl[0] & 2 == 2,
        escape: (ctl[0] & 4 == 4).then_some(b'\\'),
        comment: (ctl[0] & 8 == 8).then_some(b'#'),
        terminator: (ctl[0] & 16 == 16).then_some(b';'),
        ..Default::default()
    };
    let chunk = usize::from(ctl[1]).max(1);
    let Ok(mut d) = CsvDecoder::new(Arc::new(dialect), schema, vec![0, 1, 2, 3, 4], 7, ctl[0] & 32 == 32) else {
        return;
    };
    let mut check = |d: &mut CsvDecoder| {
        while let Some(out) = d.next_output() {
            for bad in out.bad {
                let at = bad.offset as usize;
                assert!(at + bad.raw.len() <= body.len(), "offset out of range");
                assert_eq!(&body[at..at + bad.raw.len()], &bad.raw[..]);
                assert!(bad.line >= 1);
            }
        }
    };
    for c in body.chunks(chunk) {
        d.push(c);
        check(&mut d);
    }
    d.finish();
    check(&mut d);
});
