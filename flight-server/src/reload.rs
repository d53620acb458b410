//! Reloading a running server's configuration (on SIGHUP): the settings that are safe to
//! change under load take effect at once, for the next call; the rest are reported as needing
//! a restart and keep their running values. Safe: query timeout, the `SET` allow-list, users,
//! API keys, roles (grants, row filters, masks), `read_only`, `allowed_locations`, `egress` and
//! the secrets' scopes.
//! Certificates reload on their own (see [`crate::tls`]).

use std::sync::Arc;

use engine::EngineConfig;
use engine::security::{AuditRecord, Policy};

use crate::state::ServerState;

/// Settings a reload applies (dotted keys; a key names its whole subtree).
pub const RELOADABLE: &[&str] = &[
    "server.query_timeout_secs",
    "server.set_allowlist",
    "security.users",
    "security.api_keys",
    "security.roles",
    "security.read_only",
    "security.allowed_locations",
    "security.egress",
    "security.secrets",
];

/// What a reload did: keys only, never values.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    /// Changed settings now in force.
    pub applied: Vec<String>,
    /// Changed settings that keep their running values until a restart.
    pub restart_needed: Vec<String>,
}

fn reloadable(key: &str) -> bool {
    RELOADABLE.iter().any(|r| {
        key == *r
            || key
                .strip_prefix(r)
                .is_some_and(|rest| rest.starts_with('.'))
    })
}

/// Applies reloaded configurations to a server; obtained with [`crate::Server::reloader`]
/// before the server runs. Cheap to clone.
#[derive(Clone)]
pub struct Reloader {
    pub(crate) state: Arc<ServerState>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader").finish_non_exhaustive()
    }
}

impl Reloader {
    /// Apply `new` (already loaded and validated): the reloadable settings that changed take
    /// effect; issued tokens of users whose entry changed or went away stop working.
    pub fn reload(&self, new: &EngineConfig) -> ReloadReport {
        let state = &self.state;
        let live = state.live();
        let (applied, restart_needed): (Vec<String>, Vec<String>) = live
            .changed_keys(new)
            .into_iter()
            .partition(|k| reloadable(k));
        let report = ReloadReport {
            applied,
            restart_needed,
        };
        if report.applied.is_empty() {
            return report;
        }
        let mut next = (*live).clone();
        next.server.query_timeout_secs = new.server.query_timeout_secs;
        next.server.set_allowlist = new.server.set_allowlist.clone();
        next.security.users = new.security.users.clone();
        next.security.api_keys = new.security.api_keys.clone();
        next.security.roles = new.security.roles.clone();
        next.security.read_only = new.security.read_only;
        next.security.allowed_locations = new.security.allowed_locations.clone();
        next.security.egress = new.security.egress.clone();
        next.security.secrets = new.security.secrets.clone();
        let policy = Policy::new(&next.security, state.protected.clone());
        state.auth.reload(&next.security);
        state.set_live(next, Some(policy));
        state.audit.record(AuditRecord {
            event: "config_reload",
            user: "system".into(),
            client: "SIGHUP".into(),
            decision: "allow",
            reason: Some(format!("applied: {}", report.applied.join(", "))),
            ..Default::default()
        });
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_covers_its_subtree_only() {
        assert!(reloadable("security.users"));
        assert!(reloadable("server.query_timeout_secs"));
        assert!(reloadable("security.roles.0.grants"));
        assert!(!reloadable("security.users_extra"));
        assert!(!reloadable("server.bind"));
        assert!(!reloadable("memory_limit"));
    }
}
