//! `${NAME}` substitution in pipeline text, before parsing.
//!
//! Variables are replaced in code and in string literals (`LOCATION '${DATA}/orders.csv'`), but not
//! inside comments, so commented-out references never fail a run. `${NAME:-default}` falls back
//! to `default` when `NAME` is unset; `$${` writes a literal `${`.
//! An undefined variable is an error naming it and its line. `${secret:NAME}` is left as it is:
//! connectors resolve it when they connect ([`crate::secrets`]).

use crate::error::{EngineError, Result, SourceLocation};

/// Where variable values come from: `--var` first, then the environment.
pub trait VarLookup {
    fn lookup(&self, name: &str) -> Option<String>;
}

impl<F: Fn(&str) -> Option<String>> VarLookup for F {
    fn lookup(&self, name: &str) -> Option<String> {
        self(name)
    }
}

#[derive(Clone, Copy, PartialEq)]
enum State {
    Code,
    LineComment,
    BlockComment,
    Single { backslash_escapes: bool },
    Double,
}

/// Replace every `${NAME}` in `text`; `file` names the source in errors.
pub fn substitute(text: &str, file: &str, vars: &dyn VarLookup) -> Result<String> {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut state = State::Code;
    let mut line: u64 = 1;
    let mut col: u64 = 1;
    let mut i = 0;
    // Start of the run of text not yet copied into `out`.
    let mut copied = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let next = bytes.get(i + 1).copied();
        match state {
            State::Code => match b {
                b'-' if next == Some(b'-') => state = State::LineComment,
                b'/' if next == Some(b'*') => {
                    state = State::BlockComment;
                    i += 2;
                    col += 2;
                    continue;
                }
                b'\'' => {
                    let prev = if i > 0 { bytes[i - 1] } else { b' ' };
                    let before = if i > 1 { bytes[i - 2] } else { b' ' };
                    let e_prefix = (prev == b'E' || prev == b'e')
                        && !(before.is_ascii_alphanumeric() || before == b'_');
                    state = State::Single {
                        backslash_escapes: e_prefix,
                    };
                }
                b'"' => state = State::Double,
                _ => {}
            },
            State::LineComment => {
                if b == b'\n' {
                    state = State::Code;
                }
            }
            State::BlockComment => {
                if b == b'*' && next == Some(b'/') {
                    state = State::Code;
                    i += 2;
                    col += 2;
                    continue;
                }
            }
            State::Single { backslash_escapes } => {
                if backslash_escapes && b == b'\\' {
                    // skip the escaped character (keep line counting right)
                    if next == Some(b'\n') {
                        line += 1;
                        col = 0;
                    }
                    i += 2;
                    col += 2;
                    continue;
                }
                if b == b'\'' {
                    state = State::Code;
                }
            }
            State::Double => {
                if b == b'"' {
                    state = State::Code;
                }
            }
        }
        let in_comment = matches!(state, State::LineComment | State::BlockComment);
        if !in_comment && b == b'$' {
            if next == Some(b'$') && bytes.get(i + 2) == Some(&b'{') {
                // `$${` -> literal `${`
                out.push_str(&text[copied..i]);
                out.push_str("${");
                i += 3;
                col += 3;
                copied = i;
                continue;
            }
            if next == Some(b'{') && text[i + 2..].starts_with("secret:") {
                // `${secret:NAME}` is resolved by the connector that uses it, never here, so
                // the value never enters the statement text (see `crate::secrets`).
                i += 2;
                col += 2;
                continue;
            }
            if next == Some(b'{') {
                let location = SourceLocation {
                    file: file.to_string(),
                    line,
                    column: col,
                };
                let Some(close) = text[i + 2..].find('}') else {
                    return Err(EngineError::Syntax {
                        location,
                        message: "unterminated variable reference `${` (missing `}`)".into(),
                    });
                };
                let inner = &text[i + 2..i + 2 + close];
                let (name, default) = match inner.split_once(":-") {
                    Some((n, d)) => (n.trim(), Some(d)),
                    None => (inner.trim(), None),
                };
                if !is_valid_name(name) {
                    return Err(EngineError::Syntax {
                        location,
                        message: format!(
                            "invalid variable name `{name}` in `${{...}}`: use letters, digits and _, not starting with a digit"
                        ),
                    });
                }
                let value = vars
                    .lookup(name)
                    .or_else(|| default.map(str::to_string))
                    .ok_or_else(|| EngineError::UndefinedVariable {
                        location,
                        name: name.to_string(),
                    })?;
                out.push_str(&text[copied..i]);
                out.push_str(&value);
                let consumed = 2 + close + 1;
                col += text[i..i + consumed].chars().count() as u64;
                i += consumed;
                copied = i;
                continue;
            }
        }
        if b == b'\n' {
            line += 1;
            col = 1;
        } else if (b & 0xC0) != 0x80 {
            // count characters, not UTF-8 continuation bytes
            col += 1;
        }
        i += 1;
    }
    out.push_str(&text[copied..]);
    Ok(out)
}

fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(name: &str) -> Option<String> {
        match name {
            "DIR" => Some("/data".into()),
            "N" => Some("10".into()),
            _ => None,
        }
    }

    #[test]
    fn substitutes_in_code_and_strings() {
        let out = substitute("SELECT ${N} FROM '${DIR}/x.csv'", "p.sql", &vars).unwrap();
        assert_eq!(out, "SELECT 10 FROM '/data/x.csv'");
    }

    #[test]
    fn leaves_comments_and_escapes() {
        let out = substitute(
            "-- ${MISSING}\n/* ${ALSO} */ SELECT '$${DIR}'",
            "p.sql",
            &vars,
        )
        .unwrap();
        assert_eq!(out, "-- ${MISSING}\n/* ${ALSO} */ SELECT '${DIR}'");
    }

    #[test]
    fn undefined_names_variable_and_line() {
        let err = substitute("SELECT 1;\nSELECT ${NOPE};", "p.sql", &vars).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("NOPE"), "{msg}");
        assert!(msg.contains("p.sql:2:8"), "{msg}");
    }

    #[test]
    fn defaults_apply_only_when_unset() {
        let out = substitute("'${OUT:-out/x}' ${N:-5}", "p", &vars).unwrap();
        assert_eq!(out, "'out/x' 10");
    }

    #[test]
    fn bad_references_are_errors() {
        assert!(substitute("SELECT ${", "p", &vars).is_err());
        assert!(substitute("SELECT ${1x}", "p", &vars).is_err());
        // dollar placeholders and dollar quoting are untouched
        assert_eq!(
            substitute("SELECT $1, $$a$$", "p", &vars).unwrap(),
            "SELECT $1, $$a$$"
        );
    }

    #[test]
    fn secret_references_are_left_for_connectors() {
        let out = substitute(
            "OPTIONS ('pass' '${secret:PG_PASS}', 'n' '${N}')",
            "p",
            &vars,
        )
        .unwrap();
        assert_eq!(out, "OPTIONS ('pass' '${secret:PG_PASS}', 'n' '10')");
    }

    #[test]
    fn e_strings_with_escaped_quotes() {
        let out = substitute("SELECT E'it\\'s ${N}' -- ${X}", "p", &vars).unwrap();
        assert_eq!(out, "SELECT E'it\\'s 10' -- ${X}");
    }
}
