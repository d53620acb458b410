//! The security model `flowengine serve` enforces: configuration ([`SecurityConfig`]),
//! credentials (argon2 password hashes, API keys, tokens), authorization of logical plans with
//! row filters and column masks ([`Policy`]), the boundary gate every path, URL and host passes
//! ([`Gate`]), and the audit log. The Flight server authenticates callers and calls [`Policy::authorize`] on
//! every statement before it runs.

pub mod audit;
pub mod config;
pub mod credentials;
pub mod gate;
pub mod pattern;
pub mod policy;
pub mod privilege;
pub mod rewrite;
pub mod visible;

pub use audit::{AuditLog, AuditRecord};
pub use config::{
    ADMIN_ROLE, AuthMode, JwtConfig, SecretScopeConfig, SecurityConfig, TenantConfig,
};
pub use gate::Gate;
pub use policy::{AccessError, Authorized, Policy, Principal, SYSTEM_SCHEMA, Tenancy};
pub use privilege::Privilege;
