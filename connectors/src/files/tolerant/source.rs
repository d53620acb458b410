//! `STORED AS CSV|TSV|JSON ... OPTIONS ('on_error' ...)`: a DataFusion file format whose scan
//! decodes with [`CsvDecoder`] or [`JsonDecoder`] and hands bad records to the table's
//! [`BadRecordPolicy`]. Listing, globs, hive partitions, projection, limits and byte-range
//! parallelism stay DataFusion's; writing goes to the wrapped format.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::Session;
use datafusion::common::Statistics;
use datafusion::common::config::CsvOptions;
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::file_format::file_compression_type::FileCompressionType;
use datafusion::datasource::physical_plan::{
    FileOpenFuture, FileOpener, FileScanConfig, FileScanConfigBuilder, FileSinkConfig, FileSource,
};
use datafusion::datasource::projection::{ProjectionOpener, SplitProjection};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::table_schema::TableSchema;
use datafusion::error::{DataFusionError, Result};
use datafusion::physical_expr::LexRequirement;
use datafusion::physical_expr::projection::ProjectionExprs;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::metrics::{Count, ExecutionPlanMetricsSet, MetricBuilder};
use datafusion_datasource::PartitionedFile;
use engine::bad_records::BadRecordPolicy;
use object_store::{ObjectMeta, ObjectStore};
use regex::Regex;

use super::csv_decoder::{CsvDecoder, CsvDialect};
use super::input::{ByteInput, LineIndex, RecordDecoder, ScanTarget, decode_stream};
use super::json_decoder::JsonDecoder;

/// Which decoder a tolerant scan uses.
#[derive(Debug, Clone)]
pub enum Kind {
    /// CSV or TSV with these options (`has_header`, `newlines_in_values` resolved at planning).
    Csv(Box<CsvOptions>),
    /// Newline-delimited JSON.
    Json,
}

/// A CSV/TSV/JSON format (`inner`) read tolerantly.
#[derive(Debug)]
pub struct TolerantFormat {
    inner: Arc<dyn FileFormat>,
    kind: Kind,
    policy: Arc<BadRecordPolicy>,
}

impl TolerantFormat {
    pub fn new(inner: Arc<dyn FileFormat>, kind: Kind, policy: Arc<BadRecordPolicy>) -> Self {
        Self {
            inner,
            kind,
            policy,
        }
    }
}

#[async_trait]
impl FileFormat for TolerantFormat {
    fn get_ext(&self) -> String {
        self.inner.get_ext()
    }

    fn get_ext_with_compression(&self, c: &FileCompressionType) -> Result<String> {
        self.inner.get_ext_with_compression(c)
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
        let catalog = &state.config_options().catalog;
        let kind = match &self.kind {
            Kind::Csv(options) => {
                let mut options = options.clone();
                options.has_header = Some(options.has_header.unwrap_or(catalog.has_header));
                options.newlines_in_values = Some(
                    options
                        .newlines_in_values
                        .unwrap_or(catalog.newlines_in_values),
                );
                Kind::Csv(options)
            }
            Kind::Json => Kind::Json,
        };
        let source = conf
            .file_source
            .downcast_ref::<TolerantSource>()
            .ok_or_else(|| DataFusionError::Internal("tolerant scan without its source".into()))?
            .clone()
            .with_kind(kind)?;
        let compression = self
            .inner
            .compression_type()
            .unwrap_or(FileCompressionType::UNCOMPRESSED);
        let config = FileScanConfigBuilder::from(conf)
            .with_file_compression_type(compression)
            .with_source(Arc::new(source))
            .build();
        Ok(DataSourceExec::from_data_source(config))
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
        let kind = match &self.kind {
            Kind::Csv(options) => {
                let mut options = options.clone();
                options.has_header = Some(options.has_header.unwrap_or(true));
                Kind::Csv(options)
            }
            Kind::Json => Kind::Json,
        };
        Arc::new(TolerantSource {
            dialect: None,
            kind,
            policy: Arc::clone(&self.policy),
            batch_size: 8192,
            projection: SplitProjection::unprojected(&table_schema),
            table_schema,
            metrics: ExecutionPlanMetricsSet::new(),
            lines: Arc::new(LineIndex::default()),
        })
    }
}

fn dialect(options: &CsvOptions, null_regex: Option<Regex>) -> CsvDialect {
    CsvDialect {
        delimiter: options.delimiter,
        quote: options.quote,
        escape: options.escape,
        terminator: options.terminator,
        comment: options.comment,
        double_quote: options.double_quote.unwrap_or(true),
        newlines_in_values: options.newlines_in_values.unwrap_or(false),
        truncated_rows: options.truncated_rows.unwrap_or(false),
        null_regex,
    }
}

/// The scan side: one opener per partition, each decoding its files or byte ranges.
#[derive(Debug, Clone)]
pub struct TolerantSource {
    kind: Kind,
    /// The CSV dialect, compiled once the options are final.
    dialect: Option<Arc<CsvDialect>>,
    policy: Arc<BadRecordPolicy>,
    batch_size: usize,
    table_schema: TableSchema,
    projection: SplitProjection,
    metrics: ExecutionPlanMetricsSet,
    /// Newline counts of finished byte ranges, shared by the scan's partitions.
    lines: Arc<LineIndex>,
}

impl TolerantSource {
    /// A strict CSV source decoding every column of `table_schema`, to find where a read by
    /// DataFusion's reader failed (see [`super::locate`]).
    pub(crate) fn strict_csv(options: CsvOptions, table_schema: TableSchema) -> Result<Self> {
        let policy = Arc::new(BadRecordPolicy::strict(Arc::new(
            engine::bad_records::BadRecordLedger::default(),
        )));
        Self {
            kind: Kind::Json,
            dialect: None,
            policy,
            batch_size: 8192,
            projection: SplitProjection::unprojected(&table_schema),
            table_schema,
            metrics: ExecutionPlanMetricsSet::new(),
            lines: Arc::new(LineIndex::default()),
        }
        .with_kind(Kind::Csv(Box::new(options)))
    }

    fn with_kind(mut self, kind: Kind) -> Result<Self> {
        if let Kind::Csv(options) = &kind {
            let null_regex = match options.null_regex.as_deref() {
                Some(r) if !r.is_empty() => Some(Regex::new(r).map_err(|e| {
                    DataFusionError::Configuration(format!("invalid CSV null_regex '{r}': {e}"))
                })?),
                _ => None,
            };
            self.dialect = Some(Arc::new(dialect(options, null_regex)));
        }
        self.kind = kind;
        Ok(self)
    }

    fn csv_options(&self) -> Option<&CsvOptions> {
        match &self.kind {
            Kind::Csv(o) => Some(o),
            Kind::Json => None,
        }
    }

    /// A decoder for one file or byte range.
    pub(crate) fn decoder(&self, starts_file: bool) -> Result<Box<dyn RecordDecoder>> {
        let schema = Arc::clone(self.table_schema.file_schema());
        let projection = self.projection.file_indices.clone();
        Ok(match &self.kind {
            Kind::Csv(options) => {
                let dialect = self
                    .dialect
                    .clone()
                    .unwrap_or_else(|| Arc::new(dialect(options, None)));
                Box::new(CsvDecoder::new(
                    dialect,
                    schema,
                    projection,
                    self.batch_size,
                    starts_file && options.has_header.unwrap_or(true),
                )?)
            }
            Kind::Json => Box::new(JsonDecoder::new(schema, projection, self.batch_size)?),
        })
    }
}

impl FileSource for TolerantSource {
    fn create_file_opener(
        &self,
        object_store: Arc<dyn ObjectStore>,
        base_config: &FileScanConfig,
        partition_index: usize,
    ) -> Result<Arc<dyn FileOpener>> {
        let opener = Arc::new(TolerantOpener {
            source: Arc::new(self.clone()),
            target: ScanTarget {
                store: object_store,
                url: base_config.object_store_url.as_str().to_string(),
                compression: base_config.file_compression_type,
                terminator: self
                    .csv_options()
                    .and_then(|o| o.terminator)
                    .unwrap_or(b'\n'),
            },
            bad_records: MetricBuilder::new(&self.metrics).counter("bad_records", partition_index),
        }) as Arc<dyn FileOpener>;
        ProjectionOpener::try_new(
            self.projection.clone(),
            opener,
            self.table_schema.file_schema(),
        )
    }

    fn table_schema(&self) -> &TableSchema {
        &self.table_schema
    }

    fn with_batch_size(&self, batch_size: usize) -> Arc<dyn FileSource> {
        let mut s = self.clone();
        s.batch_size = batch_size;
        Arc::new(s)
    }

    fn try_pushdown_projection(
        &self,
        projection: &ProjectionExprs,
    ) -> Result<Option<Arc<dyn FileSource>>> {
        let mut s = self.clone();
        let merged = self.projection.source.try_merge(projection)?;
        s.projection = SplitProjection::new(self.table_schema.file_schema(), &merged);
        Ok(Some(Arc::new(s)))
    }

    fn projection(&self) -> Option<&ProjectionExprs> {
        Some(&self.projection.source)
    }

    fn metrics(&self) -> &ExecutionPlanMetricsSet {
        &self.metrics
    }

    fn file_type(&self) -> &str {
        match self.kind {
            Kind::Csv(_) => "csv",
            Kind::Json => "json",
        }
    }

    fn supports_repartitioning(&self) -> bool {
        self.csv_options()
            .is_none_or(|o| !o.newlines_in_values.unwrap_or(false))
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(
            &Arc<dyn datafusion::physical_plan::PhysicalExpr>,
        ) -> Result<datafusion::common::tree_node::TreeNodeRecursion>,
    ) -> Result<datafusion::common::tree_node::TreeNodeRecursion> {
        datafusion::physical_plan::apply_expression_roots(self.projection.source.iter(), f)
    }

    fn fmt_extra(
        &self,
        _t: datafusion::physical_plan::DisplayFormatType,
        f: &mut std::fmt::Formatter<'_>,
    ) -> std::fmt::Result {
        if let Some(o) = self.csv_options() {
            write!(f, ", has_header={}", o.has_header.unwrap_or(true))?;
        }
        write!(f, ", on_error={}", self.policy.policy)
    }
}

struct TolerantOpener {
    source: Arc<TolerantSource>,
    target: ScanTarget,
    bad_records: Count,
}

impl FileOpener for TolerantOpener {
    fn open(&self, file: PartitionedFile) -> Result<FileOpenFuture> {
        let source = Arc::clone(&self.source);
        let target = self.target.clone();
        let bad_records = self.bad_records.clone();
        Ok(Box::pin(async move {
            let range = file.range.as_ref().map(|r| (r.start as u64, r.end as u64));
            let starts_file = range.is_none_or(|(s, _)| s == 0);
            let input = ByteInput::open(&target, &file.object_meta, range).await?;
            let decoder = source.decoder(starts_file)?;
            let name: Arc<str> = target.display_name(&file.object_meta).into();
            Ok(decode_stream(
                input,
                decoder,
                Arc::clone(&source.policy),
                name,
                Arc::clone(&source.lines),
                bad_records,
            ))
        }))
    }
}
