//! Incremental loads: `CREATE INCREMENTAL VIEW name ON source BY column`.
//!
//! The view shows the rows of `source` whose `column` is above the watermark the pipeline
//! committed last time, and at most the high mark read when the view is created (so rows that
//! arrive during the run wait for the next one). The runner records the high mark as pending;
//! only when the whole run succeeded (every sink committed) does it become the new watermark.
//! A failed run therefore leaves the watermark where it was, and `--resume` reuses the failed
//! run's high mark so resumed steps see exactly the rows the first attempt saw.

use datafusion::arrow::array::Array;
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::util::display::array_value_to_string;
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::error::{DataFusionError, Result};
use datafusion::functions_aggregate::expr_fn::max;
use datafusion::prelude::{col, lit};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};

use crate::Engine;

/// A parsed `CREATE INCREMENTAL VIEW`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncrementalView {
    pub name: String,
    /// The source table (possibly qualified: `schema.table`).
    pub source: String,
    /// The monotonic column (a timestamp, date, number or text that only grows).
    pub column: String,
}

/// `Some` when `sql` is a `CREATE INCREMENTAL VIEW` statement (then `Err` describes a malformed
/// one); `None` for any other statement.
pub fn parse(sql: &str) -> Option<std::result::Result<IncrementalView, String>> {
    let tokens = Tokenizer::new(&GenericDialect {}, sql).tokenize().ok()?;
    let words: Vec<&Token> = tokens
        .iter()
        .filter(|t| !matches!(t, Token::Whitespace(_) | Token::SemiColon))
        .collect();
    let kw = |i: usize, k: &str| matches!(words.get(i), Some(Token::Word(w)) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(k));
    if !(kw(0, "CREATE") && kw(1, "INCREMENTAL")) {
        return None;
    }
    let usage = "expected CREATE INCREMENTAL VIEW name ON source_table BY column";
    if !kw(2, "VIEW") {
        return Some(Err(usage.into()));
    }
    // name ON a[.b[.c]] BY column
    let mut i = 3;
    let ident = |i: &mut usize| -> Option<String> {
        let mut parts = Vec::new();
        loop {
            match words.get(*i) {
                Some(Token::Word(w)) => parts.push(match w.quote_style {
                    Some(q) => format!("{q}{}{q}", w.value),
                    None => w.value.clone(),
                }),
                _ => return None,
            }
            *i += 1;
            if matches!(words.get(*i), Some(Token::Period)) {
                *i += 1;
            } else {
                return Some(parts.join("."));
            }
        }
    };
    let Some(name) = ident(&mut i) else {
        return Some(Err(usage.into()));
    };
    if !kw(i, "ON") {
        return Some(Err(usage.into()));
    }
    i += 1;
    let Some(source) = ident(&mut i) else {
        return Some(Err(usage.into()));
    };
    if !kw(i, "BY") {
        return Some(Err(usage.into()));
    }
    i += 1;
    let Some(column) = ident(&mut i) else {
        return Some(Err(usage.into()));
    };
    if i != words.len() {
        return Some(Err(format!("{usage}; unexpected text after the column")));
    }
    Some(Ok(IncrementalView {
        name,
        source,
        column: column.trim_matches('"').to_string(),
    }))
}

/// What creating an incremental view read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncrementalRange {
    /// Rows above this (the committed watermark) ...
    pub after: Option<String>,
    /// ... up to and including this: the watermark to commit when the run succeeds.
    pub upto: Option<String>,
}

/// The type of `view`'s column in its source (an error naming both when there is none).
pub fn column_type(view: &IncrementalView, source: &DFSchema) -> Result<DataType> {
    source
        .field_with_unqualified_name(&view.column)
        .map(|f| f.data_type().clone())
        .map_err(|_| {
            DataFusionError::Plan(format!(
                "incremental view {}: {} has no column {}",
                view.name, view.source, view.column
            ))
        })
}

impl Engine {
    /// Register `view` over the rows past `after`. `upto` fixes the high mark (on resume);
    /// otherwise it is read from the source now.
    pub async fn create_incremental_view(
        &self,
        view: &IncrementalView,
        after: Option<String>,
        upto: Option<Option<String>>,
    ) -> Result<IncrementalRange> {
        let source = self.context().table(view.source.as_str()).await?;
        self.create_incremental_view_over(view, source, after, upto)
            .await
    }

    /// [`Engine::create_incremental_view`] over `source`, the source table's rows as planned
    /// (possibly rewritten by access control).
    pub async fn create_incremental_view_over(
        &self,
        view: &IncrementalView,
        source: datafusion::dataframe::DataFrame,
        after: Option<String>,
        upto: Option<Option<String>>,
    ) -> Result<IncrementalRange> {
        let ctx = self.context();
        let dtype = column_type(view, source.schema())?;
        let value = |text: &str| -> Result<ScalarValue> {
            ScalarValue::try_from_string(text.to_string(), &dtype).map_err(|e| {
                DataFusionError::Plan(format!(
                    "incremental view {}: stored watermark '{text}' is not a {dtype}: {e}",
                    view.name
                ))
            })
        };
        let column = col(format!("\"{}\"", view.column.replace('"', "\"\"")));
        let mut rows = source;
        if let Some(after) = &after {
            rows = rows.filter(column.clone().gt(lit(value(after)?)))?;
        }
        let upto = match upto {
            Some(upto) => upto,
            None => {
                let batches = rows
                    .clone()
                    .aggregate(vec![], vec![max(column.clone()).alias("high")])?
                    .collect()
                    .await?;
                // Arrow's display form (ISO 8601 for timestamps) parses back as the column type.
                match batches.first() {
                    Some(b) if b.num_rows() > 0 && b.column(0).is_valid(0) => Some(
                        array_value_to_string(b.column(0), 0)
                            .map_err(|e| DataFusionError::ArrowError(Box::new(e), None))?,
                    ),
                    _ => None,
                }
            }
        };
        rows = match &upto {
            Some(upto) => rows.filter(column.lt_eq(lit(value(upto)?)))?,
            // Nothing past the watermark: an empty view of the same schema.
            None => rows.filter(lit(false))?,
        };
        ctx.deregister_table(view.name.as_str())?;
        ctx.register_table(view.name.as_str(), rows.into_view())?;
        Ok(IncrementalRange {
            after: after.clone(),
            upto: upto.or(after),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_statement_and_ignores_others() {
        assert_eq!(
            parse("CREATE INCREMENTAL VIEW new_orders ON raw.orders BY updated_at"),
            Some(Ok(IncrementalView {
                name: "new_orders".into(),
                source: "raw.orders".into(),
                column: "updated_at".into(),
            }))
        );
        assert_eq!(parse("create view v as select 1"), None);
        assert_eq!(parse("SELECT 1"), None);
        assert!(matches!(
            parse("CREATE INCREMENTAL VIEW v ON t"),
            Some(Err(_))
        ));
        assert!(matches!(
            parse("CREATE INCREMENTAL VIEW v ON t BY c extra"),
            Some(Err(_))
        ));
    }
}
