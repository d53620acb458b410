//! The configuration reference of `docs/configuration.md`, generated from the configuration
//! structs: their fields (the keys serde reads, see [`super::env::sections`]), the type and the
//! doc comment of each, and the environment variable the one rule of [`super::env`] gives it.
//! A test fails when the page and the structs drift apart; `FLOWENGINE_BLESS=1 cargo test -p
//! flowengine-engine configuration_reference` rewrites the page.

/// Where each section's struct is written.
const SOURCES: &[(&str, &str, &str)] = &[
    ("", "EngineConfig", include_str!("../config.rs")),
    (
        "server",
        "ServerConfig",
        include_str!("../server_config.rs"),
    ),
    (
        "server.tls",
        "TlsConfig",
        include_str!("../server_config.rs"),
    ),
    (
        "security",
        "SecurityConfig",
        include_str!("../security/config.rs"),
    ),
    (
        "parquet_encryption",
        "ParquetEncryptionConfig",
        include_str!("../encryption.rs"),
    ),
];

/// Markers around the generated part of the page.
pub const START: &str = "<!-- reference: generated from the configuration structs; do not edit -->";
pub const END: &str = "<!-- end of reference -->";

/// A field of a configuration struct: its key, type and doc comment.
#[derive(Debug, PartialEq, Eq)]
pub struct Field {
    pub key: String,
    pub ty: String,
    pub doc: String,
}

/// The fields of `pub struct name` in `source`, in order.
pub fn fields(source: &str, name: &str) -> Vec<Field> {
    let header = format!("pub struct {name} {{");
    let Some(start) = source.find(&header) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut doc: Vec<String> = Vec::new();
    for line in source[start + header.len()..].lines() {
        let t = line.trim();
        if line.starts_with('}') {
            break;
        }
        if let Some(d) = t.strip_prefix("///") {
            doc.push(d.trim().to_string());
        } else if let Some(field) = t.strip_prefix("pub ")
            && let Some((key, ty)) = field.split_once(':')
        {
            out.push(Field {
                key: key.trim().to_string(),
                ty: ty.trim().trim_end_matches(',').to_string(),
                doc: doc.join(" "),
            });
            doc.clear();
        } else if !t.starts_with("#[") && !t.is_empty() {
            doc.clear();
        }
    }
    out
}

/// The generated reference (between [`START`] and [`END`]).
pub fn markdown() -> String {
    let mut out = String::new();
    for (section, name, source) in SOURCES {
        let title = if section.is_empty() {
            "Top level".to_string()
        } else {
            format!("`[{section}]`")
        };
        out.push_str(&format!("\n### {title}\n\n"));
        out.push_str("| key | environment variable | type | description |\n|---|---|---|---|\n");
        for f in fields(source, name) {
            out.push_str(&format!(
                "| `{}` | `{}` | `{}` | {} |\n",
                f.key,
                super::env::variable(section, &f.key),
                f.ty.replace('|', "\\|"),
                f.doc.replace('|', "\\|")
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parsed_fields_are_the_keys_serde_reads() {
        let sections = super::super::env::sections();
        for ((section, name, source), (probed_section, keys)) in SOURCES.iter().zip(&sections) {
            assert_eq!(section, probed_section);
            let parsed: Vec<String> = fields(source, name).into_iter().map(|f| f.key).collect();
            assert_eq!(parsed, keys.to_vec(), "{name}");
        }
    }

    #[test]
    fn configuration_reference_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/configuration.md");
        let page = std::fs::read_to_string(path).expect("docs/configuration.md");
        let (Some(a), Some(b)) = (page.find(START), page.find(END)) else {
            panic!("docs/configuration.md has no generated reference ({START} ... {END})");
        };
        let current = &page[a + START.len()..b];
        let expected = markdown();
        if current != expected {
            if std::env::var_os("FLOWENGINE_BLESS").is_some() {
                let page = format!("{}{START}{expected}{}", &page[..a], &page[b..]);
                std::fs::write(path, page).unwrap();
                return;
            }
            panic!(
                "docs/configuration.md's reference is out of date with the configuration structs; \
                 run `FLOWENGINE_BLESS=1 cargo test -p flowengine-engine configuration_reference` \
                 and commit the page"
            );
        }
    }
}
