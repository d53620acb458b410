//! File formats beyond DataFusion's built-ins (CSV, JSON, Parquet, Avro, Arrow are native).
//!
//! [`tsv`] adds `STORED AS TSV` and `.tsv` sinks as tab-separated CSV with its own extension.

pub mod tsv;

use std::sync::Arc;

use datafusion::datasource::listing_table_factory::ListingTableFactory;
use datafusion::error::Result;
use datafusion::execution::SessionStateBuilder;
use engine::{Connector, ParamSpec};

/// Local and object-store files in every format.
#[derive(Debug, Default)]
pub struct FilesConnector;

const PARAMS: &[ParamSpec] = &[
    ParamSpec {
        name: "format.has_header",
        description: "CSV/TSV: first line holds column names (default true)",
        secret: false,
    },
    ParamSpec {
        name: "format.delimiter",
        description: "CSV: field delimiter (TSV: tab)",
        secret: false,
    },
    ParamSpec {
        name: "format.compression",
        description: "CSV/TSV/JSON: gzip, bzip2, xz, zstd or uncompressed",
        secret: false,
    },
];

impl Connector for FilesConnector {
    fn name(&self) -> &'static str {
        "files"
    }

    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }

    fn register(&self, mut builder: SessionStateBuilder) -> Result<SessionStateBuilder> {
        builder
            .file_formats()
            .get_or_insert_with(Vec::new)
            .push(Arc::new(tsv::TsvFormatFactory));
        // `STORED AS TSV` resolves through the table factory map, keyed by the upper-case name.
        builder
            .table_factories()
            .get_or_insert_with(Default::default)
            .insert("TSV".into(), Arc::new(ListingTableFactory::new()));
        Ok(builder)
    }
}
