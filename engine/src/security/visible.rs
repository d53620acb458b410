//! A caller's view of the catalog: the same catalogs, schemas and tables, but listings
//! (`information_schema`, `SHOW TABLES`) name only the tables the caller may see, the way the
//! Flight `GetTables` answer does. Lookups by name are not filtered: a query on a table the
//! caller may not read still reaches the policy and gets its "permission denied".

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::{CatalogProvider, CatalogProviderList, SchemaProvider, TableProvider};
use datafusion::error::Result;

/// Whether the caller may see `catalog.schema.table` (`table` is `None` for the catalog or
/// schema itself).
pub type Visibility = Arc<dyn Fn(&str, &str, Option<&str>) -> bool + Send + Sync>;

/// `inner`, listed through `visible`.
pub struct VisibleCatalogs {
    inner: Arc<dyn CatalogProviderList>,
    visible: Visibility,
}

impl VisibleCatalogs {
    pub fn new(inner: Arc<dyn CatalogProviderList>, visible: Visibility) -> Self {
        Self { inner, visible }
    }
}

impl fmt::Debug for VisibleCatalogs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VisibleCatalogs").finish_non_exhaustive()
    }
}

impl CatalogProviderList for VisibleCatalogs {
    fn register_catalog(
        &self,
        name: String,
        catalog: Arc<dyn CatalogProvider>,
    ) -> Option<Arc<dyn CatalogProvider>> {
        self.inner.register_catalog(name, catalog)
    }

    fn catalog_names(&self) -> Vec<String> {
        self.inner
            .catalog_names()
            .into_iter()
            .filter(|c| (self.visible)(c, "", None))
            .collect()
    }

    fn catalog(&self, name: &str) -> Option<Arc<dyn CatalogProvider>> {
        let inner = self.inner.catalog(name)?;
        Some(Arc::new(VisibleCatalog {
            name: name.to_string(),
            inner,
            visible: Arc::clone(&self.visible),
        }))
    }
}

struct VisibleCatalog {
    name: String,
    inner: Arc<dyn CatalogProvider>,
    visible: Visibility,
}

impl fmt::Debug for VisibleCatalog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VisibleCatalog")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl CatalogProvider for VisibleCatalog {
    fn schema_names(&self) -> Vec<String> {
        self.inner.schema_names()
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        let inner = self.inner.schema(name)?;
        Some(Arc::new(VisibleSchema {
            catalog: self.name.clone(),
            schema: name.to_string(),
            inner,
            visible: Arc::clone(&self.visible),
        }))
    }

    fn register_schema(
        &self,
        name: &str,
        schema: Arc<dyn SchemaProvider>,
    ) -> Result<Option<Arc<dyn SchemaProvider>>> {
        self.inner.register_schema(name, schema)
    }

    fn deregister_schema(
        &self,
        name: &str,
        cascade: bool,
    ) -> Result<Option<Arc<dyn SchemaProvider>>> {
        self.inner.deregister_schema(name, cascade)
    }
}

struct VisibleSchema {
    catalog: String,
    schema: String,
    inner: Arc<dyn SchemaProvider>,
    visible: Visibility,
}

impl fmt::Debug for VisibleSchema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VisibleSchema")
            .field("catalog", &self.catalog)
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl SchemaProvider for VisibleSchema {
    fn owner_name(&self) -> Option<&str> {
        self.inner.owner_name()
    }

    fn table_names(&self) -> Vec<String> {
        self.inner
            .table_names()
            .into_iter()
            .filter(|t| (self.visible)(&self.catalog, &self.schema, Some(t)))
            .collect()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        self.inner.table(name).await
    }

    async fn table_type(&self, name: &str) -> Result<Option<datafusion::datasource::TableType>> {
        self.inner.table_type(name).await
    }

    fn register_table(
        &self,
        name: String,
        table: Arc<dyn TableProvider>,
    ) -> Result<Option<Arc<dyn TableProvider>>> {
        self.inner.register_table(name, table)
    }

    fn deregister_table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        self.inner.deregister_table(name)
    }

    fn table_exist(&self, name: &str) -> bool {
        self.inner.table_exist(name)
    }
}
