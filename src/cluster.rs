//! The engine a command runs in: in this process, or on the cluster `cluster` names (the
//! `flowengine-cluster` crate, behind the `cluster` feature).

use anyhow::Result;
use engine::{Engine, EngineConfig};

/// The engine for `config`: in this process, or on the cluster `config.cluster` names.
pub(crate) fn engine(config: &EngineConfig) -> Result<Engine> {
    let connectors = connectors::registry();
    match &config.cluster {
        None => Ok(Engine::try_new(config, &connectors)?),
        #[cfg(feature = "cluster")]
        Some(url) => Ok(flowengine_cluster::engine(config, &connectors, url)?),
        #[cfg(not(feature = "cluster"))]
        Some(_) => Err(crate::UsageError(
            "this flowengine was built without the `cluster` feature: rebuild with \
             `--features cluster` to use --cluster"
                .into(),
        )
        .into()),
    }
}
