//! Arbitrary bytes through the tolerant JSON-lines decoder: never a panic; each bad line's
//! offset points at its raw text.
#![no_main]

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema};
use connectors::files::tolerant::input::RecordDecoder;
use connectors::files::tolerant::json_decoder::JsonDecoder;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, body)) = data.split_first() else {
        return;
    };
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, true),
        Field::new("name", DataType::Utf8, true),
        Field::new("tags", DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))), true),
    ]));
    let Ok(mut d) = JsonDecoder::new(schema, vec![0, 2], usize::from(ctl % 9) + 1) else {
        return;
    };
    let chunk = usize::from(ctl).max(1);
    let mut check = |d: &mut JsonDecoder| {
        while let Some(out) = d.next_output() {
            for bad in out.bad {
                let at = bad.offset as usize;
                assert_eq!(&body[at..at + bad.raw.len()], &bad.raw[..]);
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
