//! sqllogictest runner: every `tests/slt/**/*.slt` file runs in its own fresh FlowEngine session
//! (the same session setup as the CLI), with `${TEST_DIR}` set to a per-file scratch directory
//! and `${DATA_DIR}` to `tests/data`.
//!
//! `cargo test --test sqllogictests [-- FILTER] [--complete]`; `--complete` rewrites the expected
//! results (review the diff).

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, RecordBatch};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use engine::pipeline::runner::rows_affected;
use engine::pipeline::{Pipeline, Started, StatementClass};
use engine::{Engine, EngineConfig};
use futures::StreamExt;
use sqllogictest::{DBOutput, DefaultColumnType};

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct SltError(String);

struct FlowEngineDb {
    engine: Engine,
    vars: Vec<(String, String)>,
}

impl FlowEngineDb {
    fn new(test_dir: &Path) -> Result<Self, SltError> {
        // Deterministic plans and output order for tests, independent of the machine's cores.
        let config = EngineConfig {
            target_partitions: Some(4),
            ..Default::default()
        };
        let engine = Engine::try_new(&config, &connectors::registry())
            .map_err(|e| SltError(e.to_string()))?;
        let data_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
        Ok(Self {
            engine,
            vars: vec![
                ("TEST_DIR".into(), test_dir.display().to_string()),
                ("DATA_DIR".into(), data_dir.display().to_string()),
            ],
        })
    }

    async fn execute(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, SltError> {
        let vars = self.vars.clone();
        let lookup = move |n: &str| vars.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let pipeline = Pipeline::parse(sql, "slt", &lookup, "generic").map_err(err)?;
        let mut last = DBOutput::StatementComplete(0);
        for statement in &pipeline.statements {
            let prepared = self.engine.prepare(statement).await.map_err(err)?;
            last = match self.engine.start(&prepared, None).await.map_err(err)? {
                Started::Done | Started::Planned { .. } => DBOutput::StatementComplete(0),
                Started::Running(mut execution) => {
                    let schema = execution.stream.schema();
                    let mut batches = Vec::new();
                    let mut failure = None;
                    while let Some(b) = execution.stream.next().await {
                        match b {
                            Ok(b) => batches.push(b),
                            Err(e) => {
                                failure = Some(e);
                                break;
                            }
                        }
                    }
                    if let Some(e) = failure {
                        execution.abort().await;
                        return Err(err(prepared.error(e)));
                    }
                    let class = execution.class;
                    execution.finish(None).await.map_err(err)?;
                    if class == StatementClass::Write {
                        DBOutput::StatementComplete(rows_affected(&batches).unwrap_or(0))
                    } else {
                        let types = schema
                            .fields()
                            .iter()
                            .map(|f| column_type(f.data_type()))
                            .collect();
                        DBOutput::Rows {
                            types,
                            rows: to_strings(&batches)?,
                        }
                    }
                }
            };
        }
        Ok(last)
    }
}

fn err(e: impl std::fmt::Display) -> SltError {
    SltError(e.to_string())
}

fn column_type(t: &DataType) -> DefaultColumnType {
    if t.is_integer() {
        DefaultColumnType::Integer
    } else if t.is_floating() || matches!(t, DataType::Decimal128(..) | DataType::Decimal256(..)) {
        DefaultColumnType::FloatingPoint
    } else {
        DefaultColumnType::Text
    }
}

fn to_strings(batches: &[RecordBatch]) -> Result<Vec<Vec<String>>, SltError> {
    let options = FormatOptions::default().with_null("NULL");
    let mut rows = Vec::new();
    for batch in batches {
        // EXPLAIN: one row per line of each plan, after its plan type.
        let schema = batch.schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        if names == ["plan_type", "plan"] {
            let text = |c: usize, row: usize| {
                ArrayFormatter::try_new(batch.column(c).as_ref(), &options)
                    .map(|f| f.value(row).to_string())
                    .map_err(err)
            };
            for row in 0..batch.num_rows() {
                let plan_type = text(0, row)?;
                for line in text(1, row)?.lines() {
                    rows.push(vec![plan_type.clone(), line.to_string()]);
                }
            }
            continue;
        }
        let formatters = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<Result<Vec<_>, _>>()
            .map_err(err)?;
        for row in 0..batch.num_rows() {
            let mut out = Vec::with_capacity(formatters.len());
            for (f, col) in formatters.iter().zip(batch.columns()) {
                // One line per row: a multi-line value (a check's sample) shows `\n`.
                let s = f.value(row).to_string().replace('\n', "\\n");
                out.push(if s.is_empty() && !col.is_null(row) {
                    "(empty)".to_string()
                } else {
                    s
                });
            }
            rows.push(out);
        }
    }
    Ok(rows)
}

#[async_trait]
impl sqllogictest::AsyncDB for FlowEngineDb {
    type Error = SltError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<Self::ColumnType>, Self::Error> {
        self.execute(sql).await
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "flowengine"
    }

    async fn sleep(dur: Duration) {
        tokio::time::sleep(dur).await;
    }
}

fn slt_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            slt_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "slt") {
            out.push(p);
        }
    }
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let complete = args.iter().any(|a| a == "--complete");
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/slt");
    let mut files = Vec::new();
    slt_files(&root, &mut files);
    files.sort();
    files.retain(|f| {
        filters.is_empty()
            || filters
                .iter()
                .any(|p| f.to_string_lossy().contains(p.as_str()))
    });

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let (mut passed, mut failed) = (0, 0);
    for file in &files {
        let name = file
            .strip_prefix(&root)
            .unwrap_or(file)
            .display()
            .to_string();
        let scratch = tempfile::tempdir().expect("scratch dir");
        let scratch_path = scratch.path().to_path_buf();
        let result = runtime.block_on(async {
            let mut runner = sqllogictest::Runner::new(|| {
                let p = scratch_path.clone();
                async move { FlowEngineDb::new(&p) }
            });
            if complete {
                runner
                    .update_test_file(
                        file,
                        " ",
                        sqllogictest::default_validator,
                        sqllogictest::default_normalizer,
                        sqllogictest::default_column_validator,
                    )
                    .await
                    .map_err(|e| e.to_string())
            } else {
                runner
                    .run_file_async(file)
                    .await
                    .map_err(|e| e.display(true).to_string())
            }
        });
        match result {
            Ok(()) => {
                passed += 1;
                println!("ok   {name}");
            }
            Err(e) => {
                failed += 1;
                println!("FAIL {name}\n{e}");
            }
        }
    }
    println!("sqllogictest: {passed} passed, {failed} failed");
    if failed > 0 || files.is_empty() {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
}
