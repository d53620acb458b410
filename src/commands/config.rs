//! `flowengine config check|print`: validate configuration and print it, secrets redacted.

use std::process::ExitCode;

use anyhow::Result;
use engine::EngineConfig;

use crate::cli::{ConfigArgs, ConfigCommand, GlobalArgs};

pub(crate) fn run(global: &GlobalArgs, args: ConfigArgs) -> Result<ExitCode> {
    let loaded = EngineConfig::load(global.config.as_deref(), std::env::vars())?;
    match args.command {
        ConfigCommand::Check => {
            match &loaded.file {
                Some(f) => println!("# configuration file: {}", f.display()),
                None => println!("# configuration file: none (defaults)"),
            }
            for name in &loaded.env_overrides {
                println!("# overridden by environment: {name}");
            }
            println!(
                "# memory pool: {} bytes",
                loaded.config.memory_limit_bytes()
            );
            print!("{}", loaded.config.effective_toml());
        }
        ConfigCommand::Print { effective: true } => print!("{}", loaded.config.effective_toml()),
        ConfigCommand::Print { effective: false } => print!("{}", loaded.config.redacted_toml()),
    }
    Ok(ExitCode::SUCCESS)
}
