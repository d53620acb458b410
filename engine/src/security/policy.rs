//! Authorization on the logical plan: who the caller is ([`Principal`]), what a plan touches
//! (every `TableScan`, also inside inlined views, CTEs and subqueries; every DML and DDL target;
//! every `COPY` destination), and whether the caller's roles allow it. Row filters and column
//! masks are then injected above the scans ([`super::rewrite`]), so no query shape can avoid them.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNodeRecursion};
use datafusion::common::{ResolvedTableReference, TableReference};
use datafusion::execution::SessionState;
use datafusion::logical_expr::{DdlStatement, LogicalPlan, Statement, WriteOp};

use super::config::{ADMIN_ROLE, SecurityConfig};
use super::gate::{self, Gate, HostPattern, OptionKind};
use super::pattern::{TablePattern, resolve};
use super::privilege::Privilege;

/// An authenticated caller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub roles: Vec<String>,
    pub attributes: BTreeMap<String, String>,
    /// The caller's tenant and its catalog: nothing outside that catalog exists for them.
    pub tenant: Option<Tenancy>,
}

/// A tenant member's tenant name and catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenancy {
    pub tenant: String,
    pub catalog: String,
}

/// The schema of the server's own tables (`system.audit`): admins, or roles whose grant names
/// this schema literally (a `*` schema does not reach it).
pub const SYSTEM_SCHEMA: &str = "system";

impl Principal {
    /// The caller when authentication is off: may do everything.
    pub fn anonymous() -> Self {
        Self {
            name: "anonymous".into(),
            roles: vec![ADMIN_ROLE.into()],
            attributes: BTreeMap::new(),
            tenant: None,
        }
    }

    pub fn is_admin(&self) -> bool {
        self.tenant.is_none() && self.roles.iter().any(|r| r == ADMIN_ROLE)
    }

    /// The tenant's catalog, for a tenant member.
    pub fn home_catalog(&self) -> Option<&str> {
        self.tenant.as_ref().map(|t| t.catalog.as_str())
    }
}

/// Why a statement was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AccessError {
    #[error("permission denied: user `{user}` lacks {privilege} on {table}")]
    Denied {
        user: String,
        privilege: Privilege,
        table: String,
    },
    #[error("permission denied: user `{user}` may not run {what} (admin only)")]
    AdminOnly { user: String, what: String },
    #[error("permission denied: the server is read-only; {what} is a write")]
    ReadOnly { what: String },
    #[error("permission denied: {0}")]
    Location(String),
    #[error("permission denied: {0}")]
    Secret(String),
    #[error("security policy cannot be applied {0}")]
    Policy(String),
}

/// What an allowed statement touches, and the plan to execute (with filters and masks).
#[derive(Debug, Clone)]
pub struct Authorized {
    pub plan: LogicalPlan,
    pub reads: BTreeSet<String>,
    pub writes: BTreeSet<String>,
}

/// One role's grants, filters and masks, parsed.
#[derive(Debug, Default)]
pub(crate) struct CompiledRole {
    grants: Vec<(Vec<Privilege>, TablePattern)>,
    pub(crate) row_filters: Vec<(TablePattern, String)>,
    pub(crate) masks: Vec<(TablePattern, String, String)>,
}

/// Where one secret may be used.
#[derive(Debug, Default)]
struct SecretScope {
    roles: Vec<String>,
    hosts: Vec<HostPattern>,
}

/// The configured roles, the boundary gate and the secrets' scopes.
#[derive(Debug, Default)]
pub struct Policy {
    pub(crate) roles: HashMap<String, CompiledRole>,
    gate: Gate,
    secrets: HashMap<String, SecretScope>,
    read_only: bool,
}

/// One access a plan makes.
enum Access {
    Table(Privilege, TableReference),
    /// A location the statement reads or writes (`LOCATION`, `COPY ... TO`).
    Location(String),
    /// A path-valued option (`dead_letter_path`, SQLite's `path`): written to.
    PathOption {
        key: String,
        value: String,
    },
    /// A host a table connects to, from an option or a location URL.
    Host {
        origin: String,
        value: String,
    },
    /// `${secret:NAME}` used by a statement naming these hosts.
    Secret {
        name: String,
        hosts: Vec<(String, u16)>,
    },
    AdminOnly(&'static str),
}

impl Policy {
    /// Compile `config` (already validated). `protected` are the server's own files.
    pub fn new(config: &SecurityConfig, protected: Vec<std::path::PathBuf>) -> Self {
        let roles = config
            .roles
            .iter()
            .map(|r| {
                let parse = |p: &str| TablePattern::parse(p).ok();
                let role = CompiledRole {
                    grants: r
                        .grants
                        .iter()
                        .filter_map(|g| Some((g.privileges.clone(), parse(&g.on)?)))
                        .collect(),
                    row_filters: r
                        .row_filters
                        .iter()
                        .filter_map(|f| Some((parse(&f.table)?, f.filter.clone())))
                        .collect(),
                    masks: r
                        .masks
                        .iter()
                        .filter_map(|m| Some((parse(&m.table)?, m.column.clone(), m.mask.clone())))
                        .collect(),
                };
                (r.name.clone(), role)
            })
            .collect();
        let parse_all = |patterns: &[String]| {
            patterns
                .iter()
                .filter_map(|p| HostPattern::parse(p).ok())
                .collect::<Vec<_>>()
        };
        let secrets = config
            .secrets
            .iter()
            .map(|s| {
                (
                    s.name.clone(),
                    SecretScope {
                        roles: s.allowed_roles.clone(),
                        hosts: parse_all(&s.allowed_hosts),
                    },
                )
            })
            .collect();
        Self {
            roles,
            gate: Gate::new(
                config.allowed_locations.clone(),
                protected,
                parse_all(&config.egress),
            ),
            secrets,
            read_only: config.read_only,
        }
    }

    /// The boundary gate: allowed locations, protected files and the egress allow-list.
    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    /// A location or path option the statement writes to: refused on a read-only server, and
    /// checked by the gate.
    async fn check_written(
        &self,
        who: &Principal,
        location: &str,
        writes: &mut BTreeSet<String>,
    ) -> Result<(), AccessError> {
        writes.insert(location.to_string());
        if self.read_only {
            return Err(AccessError::ReadOnly {
                what: format!("writing to {location}"),
            });
        }
        self.gate
            .check_location(location, who.is_admin())
            .await
            .map_err(AccessError::Location)
    }

    /// Whether `who` may use secret `name` toward `hosts`; why not otherwise.
    fn check_secret(
        &self,
        who: &Principal,
        name: &str,
        hosts: &[(String, u16)],
    ) -> Result<(), AccessError> {
        let Some(scope) = self.secrets.get(name) else {
            return if who.is_admin() {
                Ok(())
            } else {
                Err(AccessError::Secret(format!(
                    "secret `{name}` has no [[security.secrets]] scope; only admins may use it"
                )))
            };
        };
        if !who.is_admin() && !who.roles.iter().any(|r| scope.roles.contains(r)) {
            return Err(AccessError::Secret(format!(
                "user `{}` may not use secret `{name}` (allowed roles: {})",
                who.name,
                if scope.roles.is_empty() {
                    "none".to_string()
                } else {
                    scope.roles.join(", ")
                }
            )));
        }
        for (host, port) in hosts {
            if !scope.hosts.iter().any(|p| p.matches(host, *port)) {
                return Err(AccessError::Secret(format!(
                    "secret `{name}` may not be sent to {host}:{port}, which is outside its allowed hosts"
                )));
            }
        }
        Ok(())
    }

    /// Whether every write is refused.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Whether `who` holds `privilege` on `table`.
    pub fn allows(
        &self,
        who: &Principal,
        privilege: Privilege,
        table: &ResolvedTableReference,
        catalog: &str,
        schema: &str,
    ) -> bool {
        self.granted(who, table, catalog, schema, |p| p.covers(privilege))
    }

    /// Whether `who` may see that `table` exists (holds any privilege on it).
    pub fn may_see(
        &self,
        who: &Principal,
        table: &ResolvedTableReference,
        catalog: &str,
        schema: &str,
    ) -> bool {
        self.granted(who, table, catalog, schema, |_| true)
    }

    /// Whether `who` is an admin or holds a grant on `table` with a privilege `wanted` accepts.
    fn granted(
        &self,
        who: &Principal,
        table: &ResolvedTableReference,
        catalog: &str,
        schema: &str,
        wanted: impl Fn(Privilege) -> bool,
    ) -> bool {
        if who
            .home_catalog()
            .is_some_and(|home| *table.catalog != *home)
        {
            return false;
        }
        let system = *table.schema == *SYSTEM_SCHEMA;
        who.is_admin()
            || self.held(who).any(|role| {
                role.grants.iter().any(|(privileges, pattern)| {
                    privileges.iter().any(|p| wanted(*p))
                        && pattern.matches(table, catalog, schema)
                        && (!system || pattern.names_schema(SYSTEM_SCHEMA))
                })
            })
    }

    pub(crate) fn held<'a>(&'a self, who: &'a Principal) -> impl Iterator<Item = &'a CompiledRole> {
        who.roles.iter().filter_map(|r| self.roles.get(r))
    }

    /// Check every access `plan` makes for `who`, then inject `who`'s row filters and masks.
    pub async fn authorize(
        &self,
        who: &Principal,
        plan: LogicalPlan,
        state: &SessionState,
        sql: &str,
    ) -> Result<Authorized, AccessError> {
        let options = state.config().options();
        let catalog = options.catalog.default_catalog.clone();
        let schema = options.catalog.default_schema.clone();
        let accesses = accesses(&plan, state, sql);
        let mut reads = BTreeSet::new();
        let mut writes = BTreeSet::new();
        for access in accesses {
            match access {
                Access::Table(privilege, table) => {
                    let resolved = resolve(&table, &catalog, &schema);
                    let name = resolved.to_string();
                    if privilege == Privilege::Select || privilege == Privilege::Copy {
                        reads.insert(name.clone());
                    } else {
                        writes.insert(name.clone());
                        if self.read_only {
                            return Err(AccessError::ReadOnly {
                                what: format!("{privilege} on {name}"),
                            });
                        }
                    }
                    if !self.allows(who, privilege, &resolved, &catalog, &schema) {
                        return Err(AccessError::Denied {
                            user: who.name.clone(),
                            privilege,
                            table: name,
                        });
                    }
                }
                Access::Location(location) => {
                    self.check_written(who, &location, &mut writes).await?;
                }
                Access::PathOption { key, value } => {
                    self.check_written(who, &value, &mut writes)
                        .await
                        .map_err(|e| match e {
                            AccessError::Location(m) => {
                                AccessError::Location(format!("option `{key}`: {m}"))
                            }
                            other => other,
                        })?;
                }
                Access::Host { origin, value } => {
                    if who.is_admin() {
                        continue;
                    }
                    let endpoints = gate::endpoint_of(&value)
                        .map_err(|e| AccessError::Location(format!("{origin}: {e}")))?;
                    for (host, port) in endpoints {
                        self.gate
                            .check_host(&host, port, false)
                            .await
                            .map_err(|e| AccessError::Location(format!("{origin}: {e}")))?;
                    }
                }
                Access::Secret { name, hosts } => self.check_secret(who, &name, &hosts)?,
                Access::AdminOnly(what) => {
                    if self.read_only {
                        return Err(AccessError::ReadOnly { what: what.into() });
                    }
                    if !who.is_admin() {
                        return Err(AccessError::AdminOnly {
                            user: who.name.clone(),
                            what: what.into(),
                        });
                    }
                }
            }
        }
        let mut plan = if who.is_admin() {
            plan
        } else {
            super::rewrite::apply(self, who, plan, state, &catalog, &schema)?
        };
        if sql
            .to_ascii_lowercase()
            .contains(super::rewrite::CURRENT_USER_ATTRIBUTE)
        {
            plan = plan
                .transform_up_with_subqueries(|n| {
                    n.map_expressions(|e| {
                        super::rewrite::resolve_attributes(e, who).map(Transformed::yes)
                    })
                })
                .data()
                .map_err(|e| AccessError::Policy(e.to_string()))?;
        }
        Ok(Authorized {
            plan,
            reads,
            writes,
        })
    }
}

/// Everything `plan` reads, writes or creates.
fn accesses(plan: &LogicalPlan, state: &SessionState, sql: &str) -> Vec<Access> {
    let mut out = Vec::new();
    let declared = state.config().get_extension::<crate::DeclaredParams>();
    let _ = plan.apply_with_subqueries(|node| {
        match node {
            LogicalPlan::TableScan(scan) if !is_cte_work_table(scan) => {
                out.push(Access::Table(Privilege::Select, scan.table_name.clone()));
            }
            LogicalPlan::Dml(dml) => {
                let privilege = match &dml.op {
                    WriteOp::Insert(_) => Privilege::Insert,
                    WriteOp::Update => Privilege::Update,
                    WriteOp::Delete | WriteOp::Truncate => Privilege::Delete,
                    WriteOp::Ctas => Privilege::Create,
                    WriteOp::MergeInto(_) => Privilege::Update,
                    // Kinds of write added later: the strictest privilege until reviewed.
                    _ => Privilege::All,
                };
                out.push(Access::Table(privilege, dml.table_name.clone()));
            }
            LogicalPlan::Copy(copy) => {
                // Exporting a table needs COPY on it besides SELECT.
                let mut exported = Vec::new();
                let _ = copy.input.apply_with_subqueries(|n| {
                    if let LogicalPlan::TableScan(scan) = n
                        && !is_cte_work_table(scan)
                    {
                        exported.push(Access::Table(Privilege::Copy, scan.table_name.clone()));
                    }
                    Ok(TreeNodeRecursion::Continue)
                });
                out.extend(exported);
                out.push(Access::Location(copy.output_url.clone()));
                external_accesses(
                    std::slice::from_ref(&copy.output_url),
                    &copy.options,
                    declared.as_deref(),
                    &mut out,
                );
            }
            LogicalPlan::Ddl(ddl) => match ddl {
                DdlStatement::CreateExternalTable(c) => {
                    out.push(Access::Table(Privilege::Create, c.name.clone()));
                    // A database table's LOCATION is its name there: its connection options
                    // are what the gate checks.
                    if !declared
                        .as_deref()
                        .is_some_and(|d| d.location_is_a_name(&c.file_type))
                    {
                        out.extend(c.locations.iter().cloned().map(Access::Location));
                    }
                    let before = out.len();
                    external_accesses(&c.locations, &c.options, declared.as_deref(), &mut out);
                    // A database table naming no host connects to the connector's default
                    // one (this machine): that must be allowed like any other host.
                    if declared
                        .as_deref()
                        .is_some_and(|d| d.location_is_a_name(&c.file_type))
                        && !out[before..]
                            .iter()
                            .any(|a| matches!(a, Access::Host { .. } | Access::PathOption { .. }))
                    {
                        out.push(Access::Host {
                            origin: format!("{} table without `connection` or `host`", c.file_type),
                            value: "localhost".into(),
                        });
                    }
                }
                DdlStatement::CreateMemoryTable(c) => {
                    out.push(Access::Table(Privilege::Create, c.name.clone()))
                }
                DdlStatement::CreateView(c) => {
                    out.push(Access::Table(Privilege::Create, c.name.clone()))
                }
                DdlStatement::DropTable(d) => {
                    out.push(Access::Table(Privilege::Drop, d.name.clone()))
                }
                DdlStatement::DropView(d) => {
                    out.push(Access::Table(Privilege::Drop, d.name.clone()))
                }
                DdlStatement::CreateCatalogSchema(_) => {
                    out.push(Access::AdminOnly("CREATE SCHEMA"))
                }
                DdlStatement::CreateCatalog(_) => out.push(Access::AdminOnly("CREATE DATABASE")),
                DdlStatement::CreateIndex(_) => out.push(Access::AdminOnly("CREATE INDEX")),
                DdlStatement::DropCatalogSchema(_) => out.push(Access::AdminOnly("DROP SCHEMA")),
                DdlStatement::CreateFunction(_) => out.push(Access::AdminOnly("CREATE FUNCTION")),
                DdlStatement::DropFunction(_) => out.push(Access::AdminOnly("DROP FUNCTION")),
            },
            LogicalPlan::Statement(s) => match s {
                // SQL-level prepared statements live in the shared session; Flight clients have
                // their own (stateless) prepared statements.
                Statement::Prepare(_) => out.push(Access::AdminOnly("PREPARE")),
                Statement::Execute(_) => out.push(Access::AdminOnly("EXECUTE")),
                Statement::Deallocate(_) => out.push(Access::AdminOnly("DEALLOCATE")),
                Statement::SetVariable(_) | Statement::ResetVariable(_) => {}
                Statement::TransactionStart(_) | Statement::TransactionEnd(_) => {}
            },
            LogicalPlan::DescribeTable(_) => {
                // The plan holds only the schema: find the table in the statement text.
                match described_tables(state, sql) {
                    Some(tables) => out.extend(
                        tables
                            .into_iter()
                            .map(|t| Access::Table(Privilege::Select, t)),
                    ),
                    None => out.push(Access::AdminOnly("DESCRIBE")),
                }
            }
            _ => {}
        }
        Ok(TreeNodeRecursion::Continue)
    });
    out
}

/// The path options, hosts and secrets of a table's or a `COPY`'s locations and options.
fn external_accesses(
    locations: &[String],
    options: &std::collections::HashMap<String, String>,
    declared: Option<&crate::DeclaredParams>,
    out: &mut Vec<Access>,
) {
    // What the connector declared the option to be; undeclared options by their names.
    let kind_of = |key: &str| match declared.and_then(|d| d.kind(key)) {
        Some(crate::ParamKind::Path) => OptionKind::Path,
        Some(crate::ParamKind::Url) => OptionKind::Url,
        Some(crate::ParamKind::Host) => OptionKind::Host,
        Some(crate::ParamKind::Plain | crate::ParamKind::Secret) => OptionKind::Plain,
        None => gate::option_kind(key),
    };
    let mut hosts = Vec::new();
    let mut secrets = Vec::new();
    for location in locations {
        secrets.extend(gate::secret_references(location));
        if gate::is_network_url(location.trim())
            && let Ok(endpoints) = gate::endpoint_of(location)
        {
            hosts.extend(endpoints);
        }
    }
    // DataFusion files options it does not know under `format.`.
    let plain = |k: &str| k.strip_prefix("format.").unwrap_or(k).to_string();
    let port = options
        .iter()
        .find(|(k, _)| plain(k) == "port")
        .map(|(_, v)| v.as_str());
    for (key, value) in options {
        secrets.extend(gate::secret_references(value));
        let kind = kind_of(key);
        match kind {
            OptionKind::Path => out.push(Access::PathOption {
                key: key.clone(),
                value: value.clone(),
            }),
            OptionKind::Url | OptionKind::Host => {
                let value = match (kind, port) {
                    (OptionKind::Host, Some(port)) if !value.contains(':') => {
                        format!("{value}:{port}")
                    }
                    _ => value.clone(),
                };
                if let Ok(endpoints) = gate::endpoint_of(&value) {
                    hosts.extend(endpoints);
                }
                out.push(Access::Host {
                    origin: format!("option `{key}`"),
                    value,
                });
            }
            OptionKind::Plain => {}
        }
    }
    secrets.sort();
    secrets.dedup();
    out.extend(secrets.into_iter().map(|name| Access::Secret {
        name,
        hosts: hosts.clone(),
    }));
}

fn described_tables(state: &SessionState, sql: &str) -> Option<Vec<TableReference>> {
    let dialect = state.config().options().sql_parser.dialect;
    let statement = state.sql_to_statement(sql, &dialect).ok()?;
    let tables = state.resolve_table_references(&statement).ok()?;
    (!tables.is_empty()).then_some(tables)
}

fn is_cte_work_table(scan: &datafusion::logical_expr::TableScan) -> bool {
    datafusion::datasource::source_as_provider(&scan.source)
        .map(|p| {
            p.as_ref()
                .is::<datafusion::catalog::cte_worktable::CteWorkTable>()
        })
        .unwrap_or(false)
}
