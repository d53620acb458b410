//! Message queues as tables: sources read messages (bounded, non-consuming scans whose progress
//! between runs is an incremental view on the broker's position) and sinks publish rows as
//! messages, awaiting the broker's acknowledgements. One submodule per broker; this family
//! registers them all.
//!
//! * [`nats`]: NATS JetStream (`STORED AS NATS`).

#[cfg(feature = "nats")]
pub mod nats;

use datafusion::error::Result;
use datafusion::execution::session_state::SessionStateBuilder;
use engine::{Connector, ParamSpec};

/// Registers every message-queue table type this build includes.
#[derive(Debug)]
pub struct QueueConnector;

impl Connector for QueueConnector {
    fn name(&self) -> &'static str {
        "queue"
    }

    fn params(&self) -> &'static [ParamSpec] {
        #[cfg(feature = "nats")]
        return nats::PARAMS;
        #[cfg(not(feature = "nats"))]
        return &[];
    }

    fn register(&self, mut builder: SessionStateBuilder) -> Result<SessionStateBuilder> {
        #[cfg(feature = "nats")]
        nats::register(&mut builder);
        Ok(builder)
    }
}
