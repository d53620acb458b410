//! Test certificates made with the `openssl` command: a CA, a server certificate for
//! 127.0.0.1/localhost, and client certificates (for mutual TLS) with a chosen common name.

use std::path::{Path, PathBuf};
use std::process::Command;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl (Debian package openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A certificate authority in `dir`: `<name>.pem` and `<name>.key`.
pub(crate) fn ca(dir: &Path, name: &str) -> PathBuf {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
        ],
    );
    dir.join(format!("{name}.pem"))
}

/// A leaf certificate `<name>.pem`/`<name>.key` signed by CA `ca_name`, for a server
/// (127.0.0.1, localhost) or, with `client`, for client authentication with common name `cn`.
pub(crate) fn leaf(
    dir: &Path,
    ca_name: &str,
    name: &str,
    cn: &str,
    client: bool,
) -> (PathBuf, PathBuf) {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={cn}"),
        ],
    );
    let ext = dir.join(format!("{name}.ext"));
    let text = if client {
        "extendedKeyUsage=clientAuth\n".to_string()
    } else {
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n".to_string()
    };
    std::fs::write(&ext, text).unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca_name}.pem"),
            "-CAkey",
            &format!("{ca_name}.key"),
            "-CAcreateserial",
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
        ],
    );
    (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    )
}

/// An RSA key pair for signing test JWTs: the private key's PEM path, and the JWKS `n` (the
/// modulus, base64url) of its public half.
pub(crate) fn rsa_key(dir: &Path, name: &str) -> (PathBuf, String) {
    use base64::Engine as _;
    openssl(dir, &["genrsa", "-out", &format!("{name}.key"), "2048"]);
    let out = Command::new("openssl")
        .args(["rsa", "-in", &format!("{name}.key"), "-noout", "-modulus"])
        .current_dir(dir)
        .output()
        .expect("run openssl");
    let text = String::from_utf8(out.stdout).unwrap();
    let hex = text.trim().trim_start_matches("Modulus=");
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    (
        dir.join(format!("{name}.key")),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes),
    )
}
