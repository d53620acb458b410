//! Files as tables without a `CREATE EXTERNAL TABLE`, for local commands (`run`, `sql`,
//! `profile`), as datafusion-cli and DuckDB users expect:
//!
//! - `SELECT * FROM 'data/orders.csv'` (DataFusion's dynamic file tables: the format from the
//!   extension);
//! - `read_csv(path [, options])`, `read_parquet`, `read_json`, `read_avro`: a file, directory or
//!   glob, with the options `CREATE EXTERNAL TABLE ... OPTIONS (...)` takes, given as a struct
//!   literal (`{'delimiter': '|', 'has_header': false}`) or as name/value pairs
//!   (`'delimiter', '|'`). The table is built by the session's own table factory for the
//!   format, exactly as `CREATE EXTERNAL TABLE` would build it.
//!
//! Neither is installed on the server: there, files are reached only through tables an admin
//! or the location gate allowed.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::{DFSchema, DataFusionError, Result, ScalarValue, plan_err};
use datafusion::execution::SessionState;
use datafusion::logical_expr::{CreateExternalTable, Expr};
use datafusion::prelude::SessionContext;

/// The table functions and the file types they read.
const FUNCTIONS: &[(&str, &str)] = &[
    ("read_csv", "CSV"),
    ("read_parquet", "PARQUET"),
    ("read_json", "JSON"),
    ("read_ndjson", "JSON"),
    ("read_avro", "AVRO"),
];

/// `ctx` with dynamic file tables and the `read_*` table functions.
pub fn enable(ctx: SessionContext) -> SessionContext {
    let ctx = ctx.enable_url_table();
    for (name, file_type) in FUNCTIONS {
        ctx.register_udtf(name, Arc::new(ReadFile { name, file_type }));
    }
    ctx
}

#[derive(Debug)]
struct ReadFile {
    name: &'static str,
    file_type: &'static str,
}

impl TableFunctionImpl for ReadFile {
    fn call_with_args(&self, args: TableFunctionArgs<'_, '_>) -> Result<Arc<dyn TableProvider>> {
        let exprs = args.exprs();
        let Some(location) = exprs.first().and_then(string_literal) else {
            return plan_err!(
                "{}(path [, options]) takes the path of a file, directory or glob as a string \
                 literal first",
                self.name
            );
        };
        let options = options(self.name, &exprs[1..])?;
        let Some(state) = args.session().as_any().downcast_ref::<SessionState>() else {
            return plan_err!("{} needs a full session", self.name);
        };
        let Some(factory) = state.table_factories().get(self.file_type).cloned() else {
            return plan_err!("{}: no table factory for {}", self.name, self.file_type);
        };
        let cmd = CreateExternalTable::builder(
            self.name,
            location.clone(),
            self.file_type,
            Arc::new(DFSchema::empty()),
        )
        .with_options(options)
        .build();
        // Table functions are planned synchronously; building the table reads the files'
        // schema, which is asynchronous.
        let name = self.name;
        block_on(async move { factory.create(state, &cmd).await })
            .map_err(|e| DataFusionError::Plan(format!("{name}('{location}'): {e}")))
    }
}

/// Run `fut` to completion from synchronous code inside or outside a Tokio runtime.
fn block_on<T: Send>(fut: impl std::future::Future<Output = Result<T>> + Send) -> Result<T> {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(|| handle.block_on(fut))
        }
        // A single-threaded runtime cannot be blocked on: run on a thread of our own.
        _ => std::thread::scope(|s| {
            s.spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| DataFusionError::External(Box::new(e)))?
                    .block_on(fut)
            })
            .join()
            .map_err(|_| DataFusionError::Internal("reading the file's schema panicked".into()))?
        }),
    }
}

fn string_literal(e: &Expr) -> Option<String> {
    match e {
        Expr::Literal(
            ScalarValue::Utf8(Some(s))
            | ScalarValue::LargeUtf8(Some(s))
            | ScalarValue::Utf8View(Some(s)),
            _,
        ) => Some(s.clone()),
        _ => None,
    }
}

/// A literal option value as `OPTIONS` takes it.
fn value_literal(e: &Expr) -> Option<String> {
    match e {
        Expr::Literal(v, _) if !v.is_null() => string_literal(e).or_else(|| Some(v.to_string())),
        Expr::Cast(c) => value_literal(&c.expr),
        _ => None,
    }
}

/// Options from a struct literal (`{'k': v}`, `named_struct('k', v)`), a map literal, or
/// name/value pairs. Names without a `format.` prefix get one, as in `OPTIONS`.
fn options(function: &str, args: &[Expr]) -> Result<HashMap<String, String>> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    let mut flat: Vec<&Expr> = Vec::new();
    for arg in args {
        match arg {
            // A struct literal of constants arrives folded.
            Expr::Literal(ScalarValue::Struct(st), _) => {
                for (field, column) in st.fields().iter().zip(st.columns()) {
                    let value = ScalarValue::try_from_array(column, 0)?;
                    let Some(value) = value_literal(&Expr::Literal(value, None)) else {
                        return plan_err!(
                            "{function}: option {} must be a literal, not null",
                            field.name()
                        );
                    };
                    pairs.push((field.name().clone(), value));
                }
            }
            Expr::ScalarFunction(f) if f.name() == "named_struct" || f.name() == "struct" => {
                flat.extend(f.args.iter());
            }
            Expr::ScalarFunction(f) if f.name() == "map" && f.args.len() == 2 => {
                let items = |e: &Expr| match e {
                    Expr::ScalarFunction(a) if a.name() == "make_array" => a.args.clone(),
                    other => vec![other.clone()],
                };
                let (keys, values) = (items(&f.args[0]), items(&f.args[1]));
                for (k, v) in keys.iter().zip(values.iter()) {
                    pairs.push(pair(function, k, v)?);
                }
            }
            other => flat.push(other),
        }
    }
    if !flat.len().is_multiple_of(2) {
        return plan_err!(
            "{function}: options are name/value pairs ('delimiter', '|') or a struct \
             ({{'delimiter': '|'}}); {} value(s) given: {}",
            flat.len(),
            flat.iter()
                .map(|e| format!("{e:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    for kv in flat.chunks(2) {
        pairs.push(pair(function, kv[0], kv[1])?);
    }
    Ok(pairs
        .into_iter()
        .map(|(k, v)| {
            let k = k.to_ascii_lowercase();
            let key = if k.contains('.') {
                k
            } else {
                format!("format.{k}")
            };
            (key, v)
        })
        .collect())
}

fn pair(function: &str, k: &Expr, v: &Expr) -> Result<(String, String)> {
    let Some(name) = string_literal(k) else {
        return plan_err!("{function}: an option name must be a string literal, not {k}");
    };
    let Some(value) = value_literal(v) else {
        return plan_err!("{function}: option {name} must be a literal, not {v}");
    };
    Ok((name, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn rows(ctx: &SessionContext, sql: &str) -> Result<usize> {
        let batches = ctx.sql(sql).await?.collect().await?;
        Ok(batches.iter().map(|b| b.num_rows()).sum())
    }

    #[tokio::test]
    async fn files_read_as_tables_with_options() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("a.csv");
        std::fs::write(&csv, "id|name\n1|x\n2|y\n").unwrap();
        let ctx = enable(SessionContext::new());
        let p = csv.display();
        assert_eq!(
            rows(
                &ctx,
                &format!("SELECT * FROM read_csv('{p}', {{'delimiter': '|'}})")
            )
            .await
            .unwrap(),
            2
        );
        assert_eq!(
            rows(
                &ctx,
                &format!(
                    "SELECT * FROM read_csv('{p}', 'delimiter', '|', 'has_header', false) WHERE column_1 = 'id'"
                )
            )
            .await
            .unwrap(),
            1
        );
        let parquet = dir.path().join("b.parquet");
        ctx.sql(&format!(
            "COPY (SELECT 1 AS a UNION ALL SELECT 2) TO '{}' STORED AS PARQUET",
            parquet.display()
        ))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
        assert_eq!(
            rows(
                &ctx,
                &format!("SELECT * FROM read_parquet('{}')", parquet.display())
            )
            .await
            .unwrap(),
            2
        );
        assert_eq!(
            rows(&ctx, &format!("SELECT * FROM '{}'", parquet.display()))
                .await
                .unwrap(),
            2
        );
        // Bad calls are plain errors.
        let err = rows(&ctx, "SELECT * FROM read_csv(1)").await.unwrap_err();
        assert!(err.to_string().contains("string literal"), "{err}");
        let err = rows(&ctx, &format!("SELECT * FROM read_csv('{p}', 'delimiter')"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("name/value pairs"), "{err}");
        let err = rows(&ctx, "SELECT * FROM read_csv('/no/such/file.csv')")
            .await
            .unwrap_err();
        assert!(err.to_string().contains("/no/such/file.csv"), "{err}");
    }
}
