//! `flowengine scheduler` and `flowengine executor`: their arguments, handed to the cluster
//! crate's nodes (`flowengine_cluster::node`).

use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;

use anyhow::Result;
use flowengine_cluster::node::{self, ExecutorOptions, SchedulerOptions};

use crate::UsageError;
use crate::cli::{ExecutorArgs, GlobalArgs, SchedulerArgs};

pub(crate) async fn scheduler(global: &GlobalArgs, args: SchedulerArgs) -> Result<ExitCode> {
    let loaded = super::load_config(global)?;
    let options = SchedulerOptions {
        bind: resolve("--bind", &args.bind)?,
        external_host: args.external_host,
        executor_timeout_secs: args.executor_timeout_secs,
        task_max_failures: args.task_max_failures,
    };
    node::scheduler(&loaded.config, &options, super::serve::shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn executor(global: &GlobalArgs, args: ExecutorArgs) -> Result<ExitCode> {
    let loaded = super::load_config(global)?;
    let bind = resolve("--bind", &args.bind)?;
    let grpc_port = match args.grpc_port {
        Some(p) => p,
        None => bind.port().checked_add(1).ok_or_else(|| {
            UsageError("--bind port 65535 leaves no room for the gRPC port: set --grpc-port".into())
        })?,
    };
    let options = ExecutorOptions {
        bind,
        grpc_port,
        scheduler: split_host_port("--scheduler", &args.scheduler)?,
        external_host: args.external_host,
        concurrent_tasks: args.concurrent_tasks,
        memory_limit: args.memory_limit.map(|m| m.as_u64()),
        work_dir: args.work_dir,
        heartbeat_secs: args.heartbeat_secs,
    };
    node::executor(&loaded.config, &options).await?;
    Ok(ExitCode::SUCCESS)
}

/// `HOST:PORT` resolved to one socket address.
fn resolve(what: &str, addr: &str) -> Result<SocketAddr> {
    addr.to_socket_addrs()
        .map_err(|e| UsageError(format!("{what} `{addr}`: {e}")))?
        .next()
        .ok_or_else(|| UsageError(format!("{what} `{addr}` resolves to no address")).into())
}

fn split_host_port(what: &str, addr: &str) -> Result<(String, u16)> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| UsageError(format!("{what} `{addr}` is not HOST:PORT")))?;
    let port = port
        .parse()
        .map_err(|_| UsageError(format!("{what} `{addr}`: `{port}` is not a port")))?;
    Ok((host.trim_matches(['[', ']']).to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_pairs() {
        assert_eq!(
            split_host_port("x", "sched:50050").unwrap(),
            ("sched".to_string(), 50050)
        );
        assert_eq!(
            split_host_port("x", "[::1]:7").unwrap(),
            ("::1".to_string(), 7)
        );
        assert!(split_host_port("x", "sched").is_err());
        assert!(split_host_port("x", "sched:http").is_err());
    }
}
