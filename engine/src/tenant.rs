//! Per-tenant sessions: a tenant's statements plan against its own catalog (its default) and
//! draw memory from a [`TenantPool`], a quota inside the server's shared pool. Catalog, functions,
//! object stores and spill directory stay shared with the server's session.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use datafusion::catalog::{CatalogProvider, MemoryCatalogProvider, MemorySchemaProvider};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::memory_pool::{
    MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation,
};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::SessionContext;

use crate::session::Engine;

/// A quota over another pool: a reservation must fit both the tenant's limit and the shared
/// pool. The shared pool keeps its own accounting (and its view of the largest consumers).
#[derive(Debug)]
pub struct TenantPool {
    name: String,
    tenant: String,
    limit: usize,
    used: AtomicUsize,
    inner: Arc<dyn MemoryPool>,
}

impl TenantPool {
    pub fn new(tenant: &str, limit: usize, inner: Arc<dyn MemoryPool>) -> Self {
        Self {
            name: format!("tenant:{tenant}"),
            tenant: tenant.to_string(),
            limit,
            used: AtomicUsize::new(0),
            inner,
        }
    }
}

impl fmt::Display for TenantPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (limit {} bytes) over {}",
            self.name, self.limit, self.inner
        )
    }
}

impl MemoryPool for TenantPool {
    fn name(&self) -> &str {
        &self.name
    }

    fn register(&self, consumer: &MemoryConsumer) {
        self.inner.register(consumer)
    }

    fn unregister(&self, consumer: &MemoryConsumer) {
        self.inner.unregister(consumer)
    }

    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        self.inner.grow(reservation, additional);
        self.used.fetch_add(additional, Ordering::AcqRel);
    }

    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        self.inner.shrink(reservation, shrink);
        self.used.fetch_sub(shrink, Ordering::AcqRel);
    }

    fn try_grow(&self, reservation: &MemoryReservation, additional: usize) -> Result<()> {
        // Reserve in the quota first, then in the shared pool; undo the quota if that fails.
        let reserved = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(additional).filter(|n| *n <= self.limit)
            });
        if let Err(used) = reserved {
            return Err(DataFusionError::ResourcesExhausted(format!(
                "tenant `{}` memory quota: {} cannot grow by {additional} bytes, {used} of the \
                 tenant's {} bytes are in use (security.tenants.memory_limit)",
                self.tenant,
                reservation.consumer().name(),
                self.limit
            )));
        }
        if let Err(e) = self.inner.try_grow(reservation, additional) {
            self.used.fetch_sub(additional, Ordering::AcqRel);
            return Err(e);
        }
        Ok(())
    }

    fn reserved(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    fn memory_limit(&self) -> MemoryLimit {
        MemoryLimit::Finite(self.limit)
    }
}

impl Engine {
    /// The session a tenant's statements run in: `catalog` is its default (created with an
    /// empty default schema when nothing defines it), and with `memory_limit` its queries share
    /// a [`TenantPool`] of that size.
    pub fn for_tenant(
        &self,
        tenant: &str,
        catalog: &str,
        memory_limit: Option<u64>,
    ) -> Result<Engine> {
        let ctx = self.context();
        let mut state = ctx.state();
        let default_schema = state.config().options().catalog.default_schema.clone();
        if ctx.catalog(catalog).is_none() {
            let provider = MemoryCatalogProvider::new();
            provider.register_schema(&default_schema, Arc::new(MemorySchemaProvider::new()))?;
            ctx.register_catalog(catalog, Arc::new(provider));
        }
        state.config_mut().options_mut().catalog.default_catalog = catalog.to_string();
        let mut builder = SessionStateBuilder::new_from_existing(state.clone());
        if let Some(limit) = memory_limit {
            let shared = state.runtime_env();
            let pool = TenantPool::new(
                tenant,
                usize::try_from(limit).unwrap_or(usize::MAX),
                Arc::clone(&shared.memory_pool),
            );
            let runtime = RuntimeEnvBuilder::from_runtime_env(shared)
                .with_memory_pool(Arc::new(pool))
                .build_arc()?;
            builder = builder.with_runtime_env(runtime);
        }
        Ok(self.with_context(SessionContext::new_with_state(builder.build())))
    }
}
