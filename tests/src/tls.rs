//! Certificates for the Ingress tests and benchmark, as an operator makes
//! them: `openssl req` (Debian's, installed by `cargo xtask setup`).

use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// A self-signed ECDSA P-256 certificate for `host`, valid a day: the
/// paths of `DIR/HOST.crt` and `DIR/HOST.key` (PEM).
pub fn self_signed(dir: &Path, host: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (crt, key) = (dir.join(format!("{host}.crt")), dir.join(format!("{host}.key")));
    let out = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .args(["-subj", &format!("/CN={host}"), "-addext", &format!("subjectAltName=DNS:{host}")])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .output()
        .context("openssl (cargo xtask setup installs it)")?;
    anyhow::ensure!(out.status.success(), "openssl req for {host}: {}", String::from_utf8_lossy(&out.stderr));
    Ok((crt, key))
}
