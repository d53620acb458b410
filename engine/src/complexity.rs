//! A check of SQL text before it is parsed: statements whose expression trees or query trees
//! would be deep enough to exhaust a thread's stack while they are parsed, planned, optimized,
//! executed or dropped are refused with a clear error instead.
//!
//! The parser already limits nesting (parentheses, subqueries), but operator chains
//! (`1+1+...`, `a=1 OR a=2 OR ...`), set operations (`UNION ALL` x 5,000) and chains of CTEs
//! each referring to the previous one are parsed iteratively into trees as deep as they are
//! long, which every later recursive pass then walks. The check works on tokens, with no
//! recursion: it bounds the depth those trees can reach.

use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};

/// Limits on one statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ComplexityLimits {
    /// The deepest expression tree: operators chained at one level, summed over the levels
    /// that enclose them.
    pub max_expression_depth: usize,
    /// `SELECT`s, set operations and CTEs in one statement.
    pub max_query_blocks: usize,
}

/// The defaults keep 2.5-3x below what overflowed a 16 MiB stack (the server's worker threads)
/// in a debug build, whose frames are larger than a release build's: `1+1+...` planned and ran
/// at 5,000 terms and overflowed at 20,000; 3,000 `UNION ALL` branches (6,000 blocks) ran and
/// 5,000 overflowed; 3,000 chained CTEs ran.
impl Default for ComplexityLimits {
    fn default() -> Self {
        Self {
            max_expression_depth: 2_000,
            max_query_blocks: 2_000,
        }
    }
}

/// Why a statement was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TooComplex {
    #[error(
        "statement too complex: its expressions nest {depth} operators deep (limit {limit}); \
         split long chains of AND/OR/+ into IN lists, CASE or several statements"
    )]
    Expression { depth: usize, limit: usize },
    #[error(
        "statement too complex: it holds {blocks} SELECTs, set operations and CTEs (limit {limit})"
    )]
    Query { blocks: usize, limit: usize },
}

/// Check `sql` (one or more statements) against `limits`. Text that does not tokenize is left
/// for the parser to report.
pub fn check(sql: &str, limits: ComplexityLimits) -> Result<(), TooComplex> {
    let Ok(tokens) = Tokenizer::new(&GenericDialect {}, sql).tokenize() else {
        return Ok(());
    };
    // Operators chained at each open parenthesis level; the deepest a tree can get at a point
    // is the sum over the open levels.
    let mut levels: Vec<usize> = vec![0];
    let mut enclosing = 0usize;
    let mut blocks = 0usize;
    let mut after_as = false;
    for token in &tokens {
        if matches!(token, Token::Whitespace(_)) {
            continue;
        }
        // `name AS (` in a WITH list: one more CTE.
        if std::mem::take(&mut after_as) && *token == Token::LParen {
            blocks += 1;
        }
        let operator = match token {
            Token::LParen => {
                enclosing += levels.last().copied().unwrap_or(0);
                levels.push(0);
                false
            }
            Token::RParen => {
                if levels.len() > 1 {
                    levels.pop();
                    enclosing -= levels.last().copied().unwrap_or(0);
                }
                false
            }
            Token::SemiColon => {
                levels = vec![0];
                enclosing = 0;
                blocks = 0;
                false
            }
            Token::Word(w) => match w.keyword {
                Keyword::UNION | Keyword::INTERSECT | Keyword::EXCEPT => {
                    blocks += 1;
                    true
                }
                Keyword::SELECT | Keyword::WITH => {
                    blocks += 1;
                    false
                }
                Keyword::AS => {
                    after_as = true;
                    false
                }
                // Keywords that combine two operands into a tree node.
                Keyword::AND
                | Keyword::OR
                | Keyword::XOR
                | Keyword::LIKE
                | Keyword::ILIKE
                | Keyword::SIMILAR
                | Keyword::REGEXP
                | Keyword::RLIKE
                | Keyword::IS
                | Keyword::IN
                | Keyword::BETWEEN
                | Keyword::COLLATE
                | Keyword::AT
                | Keyword::DIV
                | Keyword::OVERLAPS => true,
                _ => false,
            },
            // Names, literals and separators build no deeper trees.
            Token::EOF
            | Token::Number(..)
            | Token::Char(_)
            | Token::SingleQuotedString(_)
            | Token::DoubleQuotedString(_)
            | Token::TripleSingleQuotedString(_)
            | Token::TripleDoubleQuotedString(_)
            | Token::DollarQuotedString(_)
            | Token::SingleQuotedByteStringLiteral(_)
            | Token::DoubleQuotedByteStringLiteral(_)
            | Token::TripleSingleQuotedByteStringLiteral(_)
            | Token::TripleDoubleQuotedByteStringLiteral(_)
            | Token::SingleQuotedRawStringLiteral(_)
            | Token::DoubleQuotedRawStringLiteral(_)
            | Token::TripleSingleQuotedRawStringLiteral(_)
            | Token::TripleDoubleQuotedRawStringLiteral(_)
            | Token::NationalStringLiteral(_)
            | Token::QuoteDelimitedStringLiteral(..)
            | Token::NationalQuoteDelimitedStringLiteral(..)
            | Token::EscapedStringLiteral(_)
            | Token::UnicodeStringLiteral(_)
            | Token::HexStringLiteral(_)
            | Token::Comma
            | Token::Whitespace(_)
            | Token::Period
            | Token::Colon
            | Token::LBracket
            | Token::RBracket
            | Token::LBrace
            | Token::RBrace
            | Token::Placeholder(_) => false,
            // Every other symbol is an operator (unknown ones count too: fail closed).
            _ => true,
        };
        if operator && let Some(level) = levels.last_mut() {
            *level += 1;
            let depth = enclosing + *level;
            if depth > limits.max_expression_depth {
                return Err(TooComplex::Expression {
                    depth,
                    limit: limits.max_expression_depth,
                });
            }
        }
        if blocks > limits.max_query_blocks {
            return Err(TooComplex::Query {
                blocks,
                limit: limits.max_query_blocks,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ComplexityLimits {
        ComplexityLimits::default()
    }

    #[test]
    fn ordinary_statements_pass() {
        for sql in [
            "SELECT a + b * 2 FROM t WHERE x = 1 AND y LIKE 'a%' OR z IS NULL",
            "WITH a AS (SELECT 1 AS x), b AS (SELECT x FROM a) SELECT * FROM b UNION ALL SELECT 2",
            "SELECT * FROM t WHERE id IN (1, 2, 3, 4, 5, 6, 7, 8, 9, 10)",
        ] {
            assert_eq!(check(sql, limits()), Ok(()), "{sql}");
        }
        let in_list = format!(
            "SELECT * FROM t WHERE id IN ({})",
            (0..100_000)
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
        assert_eq!(check(&in_list, limits()), Ok(()));
        // Limits count per statement.
        let many = "SELECT 1 + 1 + 1;".repeat(1_000);
        assert_eq!(check(&many, limits()), Ok(()));
        let wide = format!(
            "SELECT {} FROM t",
            (0..2_000)
                .map(|i| format!("c{i} AS a{i}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        assert_eq!(check(&wide, limits()), Ok(()));
    }

    #[test]
    fn deep_and_wide_statements_are_refused() {
        let plus = format!("SELECT {}", vec!["1"; 2_500].join("+"));
        assert!(matches!(
            check(&plus, limits()),
            Err(TooComplex::Expression { .. })
        ));
        let ors = format!(
            "SELECT 1 WHERE {}",
            (0..5_000)
                .map(|i| format!("1={i}"))
                .collect::<Vec<_>>()
                .join(" OR ")
        );
        assert!(check(&ors, limits()).is_err());
        let unions = vec!["SELECT 1"; 5_000].join(" UNION ALL ");
        assert!(matches!(
            check(&unions, limits()),
            Err(TooComplex::Query { .. })
        ));
        let mut ctes = String::from("WITH c0 AS (SELECT 1 AS x)");
        for i in 1..1_500 {
            ctes.push_str(&format!(", c{i} AS (SELECT x FROM c{})", i - 1));
        }
        ctes.push_str(" SELECT * FROM c1499");
        assert!(check(&ctes, limits()).is_err());
        // Operators spread over nested parentheses add up.
        let nested = format!(
            "SELECT {}",
            (0..80)
                .map(|_| format!("({} + ", vec!["1"; 30].join("+")))
                .collect::<String>()
                + "1"
                + &")".repeat(80)
        );
        assert!(check(&nested, limits()).is_err());
    }
}
