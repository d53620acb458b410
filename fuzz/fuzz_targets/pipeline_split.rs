//! Pipeline text -> variable substitution -> statement splitting: never a panic, and every
//! statement's location points inside the text.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let vars = |name: &str| (name.len() % 2 == 0).then(|| format!("v_{name}"));
    let Ok(pipeline) = engine::pipeline::Pipeline::parse(text, "fuzz.sql", &vars, "generic") else {
        return;
    };
    for s in &pipeline.statements {
        assert!(s.location.line >= 1 && s.location.column >= 1);
        let _ = engine::pipeline::incremental::parse(&s.sql);
        let _ = engine::pipeline::quality::parse(&s.sql);
    }
});
