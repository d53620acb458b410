//! FlowEngine's connector families, each registered into the engine through
//! [`engine::Connector`]. [`registry`] lists them; adding a family is one module plus one line
//! there.

pub mod files;

use std::sync::Arc;

use engine::ConnectorRegistry;

/// Every connector family this build includes, in registration order.
pub fn registry() -> ConnectorRegistry {
    ConnectorRegistry::new().with(Arc::new(files::FilesConnector))
}
