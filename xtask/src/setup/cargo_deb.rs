//! cargo-deb, which `cargo xtask package` builds the Debian package with.
//! Pinned, and installed with `--locked` so its own dependencies are the
//! ones its release was tested with.

use std::process::Command;

use anyhow::{Context, Result};

use super::{ok, step};
use crate::cmd;

/// The cargo-deb release this project packages with.
pub(crate) const VERSION: &str = "3.8.0";

/// Installs cargo-deb [`VERSION`] unless `cargo deb --version` reports it.
pub(super) fn ensure() -> Result<()> {
    step(&format!("cargo-deb {VERSION}"));
    let want = format!("cargo-deb {VERSION}");
    let found = cmd::stdout(Command::new("cargo").args(["deb", "--version"])).ok();
    if found.as_deref().map(str::trim) == Some(want.as_str()) {
        ok("already installed");
        return Ok(());
    }
    eprintln!(
        "    found {}: installing it (about two minutes)",
        found.as_deref().map_or("none", str::trim)
    );
    cmd::run(Command::new("cargo").args([
        "install",
        "cargo-deb",
        "--version",
        VERSION,
        "--locked",
    ]))?;
    let found = cmd::stdout(Command::new("cargo").args(["deb", "--version"]))
        .context("the freshly installed cargo-deb does not run")?;
    eprintln!("    installed: {}", found.trim());
    Ok(())
}
