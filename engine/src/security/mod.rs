//! The security model `flowengine serve` enforces: configuration ([`SecurityConfig`]),
//! credentials (argon2 password hashes, API keys, tokens), authorization of logical plans with
//! row filters and column masks ([`Policy`]), allowed locations for non-admin file access, and
//! the audit log. The Flight server authenticates callers and calls [`Policy::authorize`] on
//! every statement before it runs.

pub mod audit;
pub mod config;
pub mod credentials;
pub mod locations;
pub mod pattern;
pub mod policy;
pub mod privilege;
pub mod rewrite;

pub use audit::{AuditLog, AuditRecord};
pub use config::{ADMIN_ROLE, AuthMode, JwtConfig, SecurityConfig, TenantConfig};
pub use policy::{AccessError, Authorized, Policy, Principal, SYSTEM_SCHEMA, Tenancy};
pub use privilege::Privilege;
