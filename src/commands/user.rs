//! `flowengine user`: make the credentials `[security]` stores (argon2 password hashes, API key
//! digests) without a running server.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use engine::security::credentials::{hash_password, random_secret, sha256_hex};

use crate::cli::{UserArgs, UserCommand};

pub(crate) fn run(args: UserArgs) -> Result<ExitCode> {
    match args.command {
        UserCommand::HashPassword => {
            let password = read_password()?;
            let hash = hash_password(&password).map_err(anyhow::Error::msg)?;
            println!("{hash}");
        }
        UserCommand::NewApiKey => {
            let key = random_secret("fek_");
            println!("key:        {key}");
            println!("key_sha256: {}", sha256_hex(&key));
            eprintln!(
                "flowengine: store only key_sha256 in [[security.api_keys]]; the key is shown once"
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// First line of stdin; on a terminal, prompted with echo off (`stty -echo`).
fn read_password() -> Result<String> {
    let stdin = std::io::stdin();
    let terminal = stdin.is_terminal();
    if terminal {
        eprint!("password: ");
        std::io::stderr().flush().ok();
        let _ = std::process::Command::new("stty").arg("-echo").status();
    }
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    if terminal {
        let _ = std::process::Command::new("stty").arg("echo").status();
        eprintln!();
    }
    read.context("reading the password from stdin")?;
    let password = line.trim_end_matches(['\r', '\n']).to_string();
    if password.is_empty() {
        bail!(
            "empty password: write the password to stdin, e.g. `flowengine user hash-password < file`"
        );
    }
    Ok(password)
}
