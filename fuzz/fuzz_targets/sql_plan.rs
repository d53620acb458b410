//! Arbitrary SQL text through the engine's planning (complexity check, parse, plan, optimize)
//! on a session with a few tables: never a panic and never a stack overflow, whatever the
//! nesting or length of the text; errors are errors.
#![no_main]

use std::sync::OnceLock;

use engine::pipeline::PipelineStatement;
use libfuzzer_sys::fuzz_target;

fn engine() -> &'static (tokio::runtime::Runtime, engine::Engine) {
    static ENGINE: OnceLock<(tokio::runtime::Runtime, engine::Engine)> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let config = engine::EngineConfig::default();
        let engine = engine::Engine::try_new(&config, &connectors::registry()).expect("engine");
        runtime.block_on(async {
            for sql in [
                "CREATE TABLE t (a INT, b VARCHAR, c DOUBLE) AS VALUES (1, 'x', 1.5), (2, 'y', NULL)",
                "CREATE TABLE u (a INT, d DATE) AS VALUES (1, DATE '2024-01-01')",
                "CREATE VIEW v AS SELECT t.a, b, d FROM t JOIN u ON t.a = u.a",
            ] {
                engine.context().sql(sql).await.expect("setup").collect().await.expect("setup");
            }
        });
        (runtime, engine)
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (runtime, engine) = engine();
    let statement = PipelineStatement {
        index: 1,
        location: engine::error::SourceLocation {
            file: "fuzz.sql".into(),
            line: 1,
            column: 1,
        },
        sql: text.to_string(),
    };
    runtime.block_on(async {
        if let Ok(prepared) = engine.prepare(&statement).await {
            // Planning to a physical plan exercises the optimizer rules too; DDL and writes
            // are not run (they would change the session the next input sees).
            if prepared.class == engine::pipeline::StatementClass::Query {
                let _ = engine.context().state().create_physical_plan(&prepared.logical).await;
            }
        }
    });
});
