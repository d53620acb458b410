//! Tab-separated values: DataFusion's CSV reader and writer with a tab delimiter and the `.tsv`
//! extension, so `STORED AS TSV`, directories of `*.tsv` files and `COPY ... TO 'x.tsv'` work.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::Session;
use datafusion::common::{GetExt, Statistics};
use datafusion::datasource::file_format::csv::{CsvFormat, CsvFormatFactory};
use datafusion::datasource::file_format::file_compression_type::FileCompressionType;
use datafusion::datasource::file_format::{FileFormat, FileFormatFactory};
use datafusion::datasource::physical_plan::{FileScanConfig, FileSinkConfig, FileSource};
use datafusion::datasource::table_schema::TableSchema;
use datafusion::error::{DataFusionError, Result};
use datafusion::physical_expr::LexRequirement;
use datafusion::physical_plan::ExecutionPlan;
use object_store::{ObjectMeta, ObjectStore};

/// Creates [`TsvFormat`]s for `STORED AS TSV` and `.tsv` paths.
#[derive(Debug, Default)]
pub struct TsvFormatFactory;

impl GetExt for TsvFormatFactory {
    fn get_ext(&self) -> String {
        "tsv".into()
    }
}

impl FileFormatFactory for TsvFormatFactory {
    fn create(
        &self,
        state: &dyn Session,
        format_options: &HashMap<String, String>,
    ) -> Result<Arc<dyn FileFormat>> {
        let mut options = format_options.clone();
        if !options.contains_key("format.delimiter") && !options.contains_key("delimiter") {
            options.insert("format.delimiter".into(), "\t".into());
        }
        let csv = CsvFormatFactory::new().create(state, &options)?;
        let csv = csv
            .as_ref()
            .downcast_ref::<CsvFormat>()
            .ok_or_else(|| DataFusionError::Internal("CSV factory made no CsvFormat".into()))?;
        Ok(Arc::new(TsvFormat {
            inner: CsvFormat::default().with_options(csv.options().clone()),
        }))
    }

    fn default(&self) -> Arc<dyn FileFormat> {
        Arc::new(TsvFormat {
            inner: CsvFormat::default().with_delimiter(b'\t'),
        })
    }
}

/// CSV with tabs, reporting `tsv` as its extension.
#[derive(Debug)]
pub struct TsvFormat {
    inner: CsvFormat,
}

impl TsvFormat {
    /// The CSV options (tab delimiter unless overridden).
    pub fn csv_options(&self) -> &datafusion::common::config::CsvOptions {
        self.inner.options()
    }
}

#[async_trait]
impl FileFormat for TsvFormat {
    fn get_ext(&self) -> String {
        "tsv".into()
    }

    fn get_ext_with_compression(&self, compression: &FileCompressionType) -> Result<String> {
        Ok(format!("tsv{}", compression.get_ext()))
    }

    fn compression_type(&self) -> Option<FileCompressionType> {
        self.inner.compression_type()
    }

    async fn infer_schema(
        &self,
        state: &dyn Session,
        store: &Arc<dyn ObjectStore>,
        objects: &[ObjectMeta],
    ) -> Result<SchemaRef> {
        self.inner.infer_schema(state, store, objects).await
    }

    async fn infer_stats(
        &self,
        state: &dyn Session,
        store: &Arc<dyn ObjectStore>,
        table_schema: SchemaRef,
        object: &ObjectMeta,
    ) -> Result<Statistics> {
        self.inner
            .infer_stats(state, store, table_schema, object)
            .await
    }

    async fn create_physical_plan(
        &self,
        state: &dyn Session,
        conf: FileScanConfig,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.inner.create_physical_plan(state, conf).await
    }

    async fn create_writer_physical_plan(
        &self,
        input: Arc<dyn ExecutionPlan>,
        state: &dyn Session,
        conf: FileSinkConfig,
        order_requirements: Option<LexRequirement>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.inner
            .create_writer_physical_plan(input, state, conf, order_requirements)
            .await
    }

    fn file_source(&self, table_schema: TableSchema) -> Arc<dyn FileSource> {
        self.inner.file_source(table_schema)
    }
}
