//! `flowengine sql`: queries from `-c`, from stdin, or an interactive shell with line editing and
//! history on a terminal. `--init` files set up tables first.

use std::io::{IsTerminal, Read};
use std::process::ExitCode;

use anyhow::{Context, Result};
use engine::Engine;
use engine::pipeline::Pipeline;
use rustyline::DefaultEditor;
use rustyline::error::ReadlineError;

use crate::cli::{DisplayArgs, GlobalArgs, SqlArgs};
use engine::pipeline::runtime::Rows;

pub(crate) async fn run(global: &GlobalArgs, args: SqlArgs) -> Result<ExitCode> {
    let (engine, _) = super::build_engine(global)?;
    let lookup = super::var_lookup(&args.vars);
    let dialect = super::dialect(&engine);
    for init in &args.init {
        let pipeline = Pipeline::from_file(init, &lookup, &dialect)?;
        super::run_pipeline(&engine, &pipeline, &args.display, Rows::Count, false).await?;
    }
    if !args.command.is_empty() {
        for sql in &args.command {
            let pipeline = Pipeline::parse(sql, "<command line>", &lookup, &dialect)?;
            super::run_pipeline(&engine, &pipeline, &args.display, Rows::Show, false).await?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    if std::io::stdin().is_terminal() {
        return shell(&engine, &args.display, &lookup, &dialect).await;
    }
    let mut bytes = Vec::new();
    std::io::stdin()
        .read_to_end(&mut bytes)
        .context("reading SQL from stdin")?;
    let text = engine::pipeline::decode(bytes, "<stdin>")?;
    let pipeline = Pipeline::parse(&text, "<stdin>", &lookup, &dialect)?;
    super::run_pipeline(&engine, &pipeline, &args.display, Rows::Show, false).await?;
    Ok(ExitCode::SUCCESS)
}

const HELP: &str = "\
Enter SQL statements ending with `;`. Commands:
  \\d            list tables
  \\d NAME       describe a table
  \\q, quit      leave
  \\?            this help";

/// The interactive shell: one statement per `;`, errors shown and the session kept.
async fn shell(
    engine: &Engine,
    display: &DisplayArgs,
    lookup: &dyn engine::pipeline::VarLookup,
    dialect: &str,
) -> Result<ExitCode> {
    let mut editor = DefaultEditor::new().context("starting the line editor")?;
    let history =
        std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".flowengine_history"));
    if let Some(h) = &history {
        let _ = editor.load_history(h);
    }
    eprintln!(
        "FlowEngine {} SQL shell. \\? for help, \\q to quit.",
        env!("CARGO_PKG_VERSION")
    );
    let mut buffer = String::new();
    loop {
        let prompt = if buffer.is_empty() {
            "flowengine> "
        } else {
            "         -> "
        };
        let line = tokio::task::block_in_place(|| editor.readline(prompt));
        match line {
            Ok(line) => {
                let trimmed = line.trim();
                if buffer.is_empty() {
                    match meta_command(trimmed) {
                        Some(Meta::Quit) => break,
                        Some(Meta::Help) => {
                            println!("{HELP}");
                            continue;
                        }
                        Some(Meta::Sql(sql)) => {
                            let _ = editor.add_history_entry(trimmed);
                            run_shell_sql(engine, display, lookup, dialect, &sql).await;
                            continue;
                        }
                        None => {}
                    }
                }
                if trimmed.is_empty() && buffer.is_empty() {
                    continue;
                }
                buffer.push_str(&line);
                buffer.push('\n');
                if trimmed.ends_with(';') {
                    let sql = std::mem::take(&mut buffer);
                    let _ = editor.add_history_entry(sql.trim());
                    run_shell_sql(engine, display, lookup, dialect, &sql).await;
                }
            }
            Err(ReadlineError::Interrupted) => {
                buffer.clear();
            }
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e).context("reading a line"),
        }
    }
    if let Some(h) = &history {
        let _ = editor.save_history(h);
    }
    Ok(ExitCode::SUCCESS)
}

enum Meta {
    Quit,
    Help,
    Sql(String),
}

fn meta_command(line: &str) -> Option<Meta> {
    match line {
        "\\q" | "quit" | "exit" | "quit;" | "exit;" => Some(Meta::Quit),
        "\\?" | "help" => Some(Meta::Help),
        "\\d" => Some(Meta::Sql("SHOW TABLES;".into())),
        _ => line
            .strip_prefix("\\d ")
            .map(|name| Meta::Sql(format!("DESCRIBE {};", name.trim()))),
    }
}

async fn run_shell_sql(
    engine: &Engine,
    display: &DisplayArgs,
    lookup: &dyn engine::pipeline::VarLookup,
    dialect: &str,
    sql: &str,
) {
    let result = async {
        let pipeline = Pipeline::parse(sql, "<shell>", lookup, dialect)?;
        super::run_pipeline(engine, &pipeline, display, Rows::Show, true).await
    }
    .await;
    if let Err(e) = result {
        eprintln!("error: {}", crate::render_error(&e));
    }
}
