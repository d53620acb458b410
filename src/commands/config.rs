//! `flowengine config check`: validate configuration and print the effective values.

use std::process::ExitCode;

use anyhow::Result;
use engine::EngineConfig;

use crate::cli::{ConfigArgs, ConfigCommand, GlobalArgs};

pub(crate) fn run(global: &GlobalArgs, args: ConfigArgs) -> Result<ExitCode> {
    match args.command {
        ConfigCommand::Check => {
            let loaded = EngineConfig::load(global.config.as_deref(), std::env::vars())?;
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
            Ok(ExitCode::SUCCESS)
        }
    }
}
