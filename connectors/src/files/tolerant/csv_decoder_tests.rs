//! Tests of [`super::CsvDecoder`]: every kind of bad record, chunking, and parity with arrow-csv.

use super::*;
use arrow::array::AsArray;
use arrow::datatypes::{DataType, Field, Int64Type, Schema};

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, true),
        Field::new("day", DataType::Date32, true),
        Field::new("amount", DataType::Decimal128(10, 2), true),
    ]))
}

fn decode(text: &[u8], dialect: CsvDialect, chunk: usize, batch: usize) -> (Vec<i64>, Vec<BadRow>) {
    let mut d = CsvDecoder::new(Arc::new(dialect), schema(), vec![0, 1], batch, true).unwrap();
    let mut ids = Vec::new();
    let mut bad = Vec::new();
    let mut drain = |d: &mut CsvDecoder| {
        while let Some(o) = d.next_output() {
            if let Some(b) = o.batch {
                assert_eq!(b.num_columns(), 2);
                ids.extend(
                    b.column(0)
                        .as_primitive::<Int64Type>()
                        .values()
                        .iter()
                        .copied(),
                );
            }
            bad.extend(o.bad);
        }
    };
    for c in text.chunks(chunk) {
        d.push(c);
        drain(&mut d);
    }
    d.finish();
    drain(&mut d);
    (ids, bad)
}

const MIXED: &[u8] = b"id,name,day,amount\n\
1,a,2024-01-01,1.50\n\
2,b,2024-01-02\n\
3,c,2024-01-03,abc\n\
4,d,2024-13-45,2.00\n\
5,\"e, quoted\",2024-01-05,3.00\n\
6,\xff\xfe,2024-01-06,4.00\n\
\n\
7,\"broken,2024-01-07,5.00\n\
8,h,2024-01-08,6.00\n\
,i,2024-01-09,7.00\n\
9,\"x\"\"y\",2024-01-10,8.00\n\
10,j,2024-01-11,9.00,extra\n\
11,\"tail";

#[test]
fn every_kind_of_bad_record_is_isolated() {
    for chunk in [1, 2, 5, 17, 4096] {
        for batch in [1, 3, 8192] {
            let (ids, bad) = decode(MIXED, CsvDialect::default(), chunk, batch);
            assert_eq!(
                ids,
                vec![1, 5, 8, 9],
                "chunk {chunk} batch {batch}: {bad:?}"
            );
            let lines: Vec<u64> = bad.iter().map(|b| b.line).collect();
            assert_eq!(
                lines,
                vec![3, 4, 5, 7, 9, 11, 13, 14],
                "chunk {chunk} batch {batch}: {bad:?}"
            );
            let reasons: Vec<&str> = bad.iter().map(|b| b.reason.as_str()).collect();
            assert!(
                reasons[0].contains("expected 4 fields, found 3"),
                "{reasons:?}"
            );
            assert!(reasons[1].contains("cannot parse 'abc'"), "{reasons:?}");
            assert!(
                reasons[2].contains("cannot parse '2024-13-45' as Date32"),
                "{reasons:?}"
            );
            assert!(reasons[3].contains("UTF-8"), "{reasons:?}");
            assert!(reasons[4].contains("quote"), "{reasons:?}");
            assert!(reasons[5].contains("NOT NULL"), "{reasons:?}");
            assert!(
                reasons[6].contains("expected 4 fields, found 5"),
                "{reasons:?}"
            );
            assert!(reasons[7].contains("unterminated"), "{reasons:?}");
            assert_eq!(bad[4].raw, b"7,\"broken,2024-01-07,5.00");
            assert_eq!(bad[7].raw, b"11,\"tail");
            // Offsets point at the record's first byte.
            for b in &bad {
                let at = b.offset as usize;
                assert_eq!(&MIXED[at..at + b.raw.len()], &b.raw[..]);
            }
        }
    }
}

#[test]
fn quoted_newlines_are_values_when_allowed() {
    let text = b"id,name,day,amount\n1,\"two\nlines\",2024-01-01,1\n2,b,2024-01-02,2\n";
    let (ids, bad) = decode(text, CsvDialect::default(), 3, 10);
    assert_eq!(ids, vec![2]);
    assert_eq!(bad.len(), 2, "{bad:?}");
    assert_eq!(bad[0].line, 2);
    let allowing = CsvDialect {
        newlines_in_values: true,
        ..Default::default()
    };
    let (ids, bad) = decode(text, allowing, 3, 10);
    assert_eq!(ids, vec![1, 2]);
    assert!(bad.is_empty(), "{bad:?}");
}

#[test]
fn a_quote_inside_an_unquoted_field_is_literal() {
    let text =
        b"id,name,day,amount\n1,a 12\" pizza,2024-01-01,1\n2,\"ok \"\"x\"\"\",2024-01-02,2\n";
    let (ids, bad) = decode(text, CsvDialect::default(), 4, 10);
    assert_eq!(ids, vec![1, 2]);
    assert!(bad.is_empty(), "{bad:?}");
}

#[test]
fn text_after_a_closing_quote_is_bad() {
    // Quotes that happen to keep the field count right are still broken quoting.
    let text =
        b"id,name,day,amount\n1,\"\"oops\",2024-01-01,1\n2,\"a\"b,2024-01-02,2\n3,c,2024-01-03,3\n";
    let (ids, bad) = decode(text, CsvDialect::default(), 5, 10);
    assert_eq!(ids, vec![3]);
    let lines: Vec<u64> = bad.iter().map(|b| b.line).collect();
    assert_eq!(lines, vec![2, 3], "{bad:?}");
    assert!(
        bad.iter()
            .all(|b| b.reason.contains("text after the closing quote")),
        "{bad:?}"
    );
}

#[test]
fn truncated_rows_are_padded_when_allowed() {
    let text = b"id,name,day,amount\n1,a\n2,b,2024-01-02,2\n";
    let (ids, bad) = decode(text, CsvDialect::default(), 4, 10);
    assert_eq!((ids, bad.len()), (vec![2], 1));
    let padding = CsvDialect {
        truncated_rows: true,
        ..Default::default()
    };
    let (ids, bad) = decode(text, padding, 4, 10);
    assert_eq!(ids, vec![1, 2]);
    assert!(bad.is_empty(), "{bad:?}");
}

#[test]
fn a_runaway_quote_does_not_swallow_the_file() {
    let mut text = b"id,name,day,amount\n1,\"oops,2024-01-01,1\n".to_vec();
    for i in 2..2000 {
        text.extend_from_slice(format!("{i},n,2024-01-01,1\n").as_bytes());
    }
    let (ids, bad) = decode(&text, CsvDialect::default(), 64, 100);
    assert_eq!(ids.len(), 1998);
    assert_eq!(bad.len(), 1);
    assert_eq!(bad[0].line, 2);
}

#[test]
fn clean_data_matches_arrow_csv() {
    let mut text = b"id,name,day,amount\n".to_vec();
    for i in 0..1000 {
        text.extend_from_slice(
            format!("{i},name {i},2024-02-{:02},{i}.25\n", i % 28 + 1).as_bytes(),
        );
    }
    let mut d = CsvDecoder::new(
        Arc::new(CsvDialect::default()),
        schema(),
        vec![0, 1, 2, 3],
        300,
        true,
    )
    .unwrap();
    d.push(&text);
    d.finish();
    let mut ours = Vec::new();
    while let Some(o) = d.next_output() {
        assert!(o.bad.is_empty());
        ours.extend(o.batch);
    }
    let theirs: Vec<RecordBatch> = arrow_csv::ReaderBuilder::new(schema())
        .with_header(true)
        .with_batch_size(300)
        .build(std::io::Cursor::new(text))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(ours, theirs);
}

#[test]
fn huge_decimal_exponents_are_bad_values_not_panics() {
    // Found by fuzzing: arrow's decimal parser overflows an i16 on long exponents.
    let text = b"id,name,day,amount\n1,a,2024-01-01,1e88888888888888\n2,b,2024-01-02,1.5e2\n";
    let (ids, bad) = decode(text, CsvDialect::default(), 64, 10);
    assert_eq!(ids, vec![2]);
    assert_eq!(bad.len(), 1);
    assert!(bad[0].reason.contains("exponent out of range"), "{bad:?}");
}
