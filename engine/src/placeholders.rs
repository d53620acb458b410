//! Positional `?` placeholders (JDBC, ODBC and ADBC clients write them) numbered as DataFusion's
//! `$1`, `$2`, ...: DataFusion's planner names every `?` alike, so two of them could not be told
//! apart.

use datafusion::sql::sqlparser::dialect::dialect_from_str;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};

/// `sql` with each `?` placeholder replaced by `$N` in order of appearance. Text in strings,
/// quoted identifiers and comments is untouched. Returns `sql` unchanged when it has no `?`
/// placeholder or cannot be tokenized (the planner then reports the error).
pub fn number_question_marks(sql: &str, dialect: &str) -> String {
    if !sql.contains('?') {
        return sql.to_string();
    }
    let Some(dialect) = dialect_from_str(dialect) else {
        return sql.to_string();
    };
    let Ok(tokens) = Tokenizer::new(dialect.as_ref(), sql).tokenize() else {
        return sql.to_string();
    };
    if !tokens
        .iter()
        .any(|t| matches!(t, Token::Placeholder(p) if p == "?"))
    {
        return sql.to_string();
    }
    let mut n = 0;
    let mut out = String::with_capacity(sql.len() + 8);
    for token in tokens {
        match token {
            Token::Placeholder(p) if p == "?" => {
                n += 1;
                out.push_str(&format!("${n}"));
            }
            other => out.push_str(&other.to_string()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::number_question_marks as n;

    #[test]
    fn numbers_question_marks_outside_strings() {
        assert_eq!(
            n(
                "SELECT * FROM t WHERE a = ? AND b = '?' AND c > ?",
                "generic"
            ),
            "SELECT * FROM t WHERE a = $1 AND b = '?' AND c > $2"
        );
        assert_eq!(n("SELECT $1", "generic"), "SELECT $1");
        assert_eq!(
            n("INSERT INTO t VALUES (?, ?) -- why?", "generic"),
            "INSERT INTO t VALUES ($1, $2) -- why?"
        );
        assert_eq!(n("SELECT 'it''s?'", "generic"), "SELECT 'it''s?'");
    }
}
