//! FlowEngine's connector families, each registered into the engine through
//! [`engine::Connector`]. [`registry`] lists them; adding a family is one module plus one line
//! there.

#[cfg(feature = "cloud")]
pub mod cloud;
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
pub mod database;
pub mod error;
pub mod files;
pub mod http;
pub(crate) mod options;
pub mod queue;
pub mod resilience;
mod webhook;

use std::sync::Arc;

use engine::ConnectorRegistry;

/// Every connector family this build includes, in registration order.
pub fn registry() -> ConnectorRegistry {
    let registry = ConnectorRegistry::new().with(Arc::new(files::FilesConnector));
    #[cfg(feature = "cloud")]
    let registry = registry.with(Arc::new(cloud::CloudConnector));
    #[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
    let registry = registry.with(Arc::new(database::DatabaseConnector));
    let registry = registry.with(Arc::new(queue::QueueConnector));
    registry.with(Arc::new(http::HttpConnector))
}
