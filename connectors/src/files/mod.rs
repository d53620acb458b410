//! File formats beyond DataFusion's built-ins (CSV, JSON, Parquet, Avro, Arrow are native).
//!
//! [`tsv`] adds `STORED AS TSV` and `.tsv` sinks as tab-separated CSV with its own extension.
//! [`tolerant`] adds the `on_error` option (fail / skip / dead_letter) to CSV, TSV and JSON.

pub mod tolerant;
pub mod tsv;

use std::sync::Arc;

use datafusion::datasource::listing_table_factory::ListingTableFactory;
use datafusion::error::Result;
use datafusion::execution::SessionStateBuilder;
use engine::{Connector, ParamKind, ParamSpec};

/// Local and object-store files in every format.
#[derive(Debug, Default)]
pub struct FilesConnector;

const PARAMS: &[ParamSpec] = &[
    ParamSpec {
        name: "format.has_header",
        description: "CSV/TSV: first line holds column names (default true)",
        kind: ParamKind::Plain,
    },
    ParamSpec {
        name: "format.delimiter",
        description: "CSV: field delimiter (TSV: tab)",
        kind: ParamKind::Plain,
    },
    ParamSpec {
        name: "format.on_error",
        description: "CSV/TSV/JSON: fail (default), skip or dead_letter for records that cannot be decoded",
        kind: ParamKind::Plain,
    },
    ParamSpec {
        name: "format.dead_letter_path",
        description: "with on_error dead_letter: JSON-lines file receiving each bad record (file, line, offset, raw, reason)",
        kind: ParamKind::Path,
    },
    ParamSpec {
        name: "format.dead_letter_table",
        description: "with on_error dead_letter: session table receiving each bad record",
        kind: ParamKind::Plain,
    },
    ParamSpec {
        name: "format.max_bad_records",
        description: "with skip/dead_letter: fail once more bad records than this were met",
        kind: ParamKind::Plain,
    },
    ParamSpec {
        name: "format.compression",
        description: "CSV/TSV/JSON: gzip, bzip2, xz, zstd or uncompressed",
        kind: ParamKind::Plain,
    },
];

impl Connector for FilesConnector {
    fn failure_locator(&self) -> Option<Arc<dyn engine::failure::FailureLocator>> {
        Some(Arc::new(tolerant::locate::CsvFailureLocator))
    }

    fn name(&self) -> &'static str {
        "files"
    }

    fn params(&self) -> Vec<ParamSpec> {
        PARAMS.to_vec()
    }

    fn register(&self, mut builder: SessionStateBuilder) -> Result<SessionStateBuilder> {
        let formats = builder.file_formats().get_or_insert_with(Vec::new);
        formats.push(Arc::new(tsv::TsvFormatFactory));
        // The first factory registered for an extension wins: wrap CSV, TSV and JSON in place.
        for f in formats.iter_mut() {
            if matches!(f.get_ext().as_str(), "csv" | "tsv" | "json") {
                *f = Arc::new(tolerant::TolerantFormatFactory::new(Arc::clone(f)));
            }
        }
        // `STORED AS TSV` resolves through the table factory map, keyed by the upper-case name.
        builder
            .table_factories()
            .get_or_insert_with(Default::default)
            .insert("TSV".into(), Arc::new(ListingTableFactory::new()));
        Ok(builder)
    }
}
