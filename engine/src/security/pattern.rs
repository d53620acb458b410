//! Table patterns in grants and policies: `catalog.schema.table`, each part a name or `*`.
//! Shorter patterns (`table`, `schema.table`) are completed with the session's default catalog
//! and schema, so `orders` means `datafusion.public.orders` by default.

use datafusion::common::{ResolvedTableReference, TableReference};

/// A parsed pattern. Names compare case-sensitively, as DataFusion resolves them (unquoted SQL
/// identifiers are lower-cased before they get here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TablePattern {
    catalog: Option<String>,
    schema: Option<String>,
    table: String,
}

impl TablePattern {
    /// Parse `a.b.c`, `b.c` or `c`; `*` matches any name in its position.
    pub fn parse(text: &str) -> Result<Self, String> {
        let parts: Vec<&str> = text.split('.').map(str::trim).collect();
        if parts.iter().any(|p| p.is_empty()) || parts.len() > 3 {
            return Err("expected `table`, `schema.table` or `catalog.schema.table`".into());
        }
        let own = |s: &str| s.to_string();
        Ok(match parts.as_slice() {
            [t] => Self {
                catalog: None,
                schema: None,
                table: own(t),
            },
            [s, t] => Self {
                catalog: None,
                schema: Some(own(s)),
                table: own(t),
            },
            [c, s, t] => Self {
                catalog: Some(own(c)),
                schema: Some(own(s)),
                table: own(t),
            },
            _ => return Err("expected `table`, `schema.table` or `catalog.schema.table`".into()),
        })
    }

    /// Whether the pattern's schema part is exactly `schema` (no wildcard, not left to default).
    pub fn names_schema(&self, schema: &str) -> bool {
        self.schema.as_deref() == Some(schema)
    }

    /// Whether the pattern covers `table`, completing missing parts with the defaults.
    pub fn matches(&self, table: &ResolvedTableReference, catalog: &str, schema: &str) -> bool {
        let part = |p: &Option<String>, default: &str, actual: &str| {
            glob(p.as_deref().unwrap_or(default), actual)
        };
        part(&self.catalog, catalog, &table.catalog)
            && part(&self.schema, schema, &table.schema)
            && glob(&self.table, &table.table)
    }
}

/// `*` matches any run of characters (also none); everything else matches itself.
fn glob(pattern: &str, name: &str) -> bool {
    let Some((head, rest)) = pattern.split_once('*') else {
        return pattern == name;
    };
    let Some(mut left) = name.strip_prefix(head) else {
        return false;
    };
    let mut pieces: Vec<&str> = rest.split('*').collect();
    let last = pieces.pop().unwrap_or_default();
    for piece in pieces {
        match left.find(piece) {
            Some(i) => left = &left[i + piece.len()..],
            None => return false,
        }
    }
    left.len() >= last.len() && left.ends_with(last)
}

/// Resolve a table reference from a plan against the defaults.
pub fn resolve(table: &TableReference, catalog: &str, schema: &str) -> ResolvedTableReference {
    table.clone().resolve(catalog, schema)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(c: &str, s: &str, t: &str) -> ResolvedTableReference {
        ResolvedTableReference {
            catalog: c.into(),
            schema: s.into(),
            table: t.into(),
        }
    }

    #[test]
    fn patterns_complete_with_defaults_and_match_wildcards() {
        let p = TablePattern::parse("orders").unwrap();
        assert!(p.matches(&r("datafusion", "public", "orders"), "datafusion", "public"));
        assert!(!p.matches(&r("datafusion", "other", "orders"), "datafusion", "public"));
        let p = TablePattern::parse("datafusion.*.*").unwrap();
        assert!(p.matches(&r("datafusion", "x", "y"), "datafusion", "public"));
        assert!(!p.matches(&r("tenant_b", "x", "y"), "datafusion", "public"));
        let p = TablePattern::parse("scratch_*").unwrap();
        assert!(p.matches(
            &r("datafusion", "public", "scratch_1"),
            "datafusion",
            "public"
        ));
        assert!(!p.matches(
            &r("datafusion", "public", "scratch"),
            "datafusion",
            "public"
        ));
        assert!(
            glob("a*b*c", "aXbYc") && glob("*", "") && !glob("a*b", "ab_") && glob("*_x", "a_x")
        );
        assert!(TablePattern::parse("a..b").is_err());
        assert!(TablePattern::parse("a.b.c.d").is_err());
    }
}
