//! `cargo xtask build`: the toolchain checks of setup, then
//! `cargo build -p geoip-user` (which builds the eBPF object through its
//! build script).

use std::{path::PathBuf, process::Command};

use anyhow::{Result, bail};
use clap::Args;

use crate::{cmd, setup};

/// The exporter's binary name (geoip-user's `[[bin]]`).
pub(crate) const BINARY: &str = "geoip-exporter";

#[derive(Debug, Args)]
pub(crate) struct Options {
    /// Build with the dev profile (target/debug) instead of release.
    #[arg(long)]
    debug: bool,
}

/// Builds the exporter with the release profile; returns its path.
pub(crate) fn release() -> Result<PathBuf> {
    run(&Options { debug: false })
}

/// Builds the exporter; prints and returns the path of the binary.
pub(crate) fn run(options: &Options) -> Result<PathBuf> {
    setup::run(setup::Parts::TOOLCHAIN)?;
    eprintln!("==> build {BINARY}");
    let mut cargo = Command::new("cargo");
    cargo
        .current_dir(crate::workspace_root())
        .args(["build", "-p", "geoip-user"]);
    if !options.debug {
        cargo.arg("--release");
    }
    cmd::run(&mut cargo)?;
    let profile = if options.debug { "debug" } else { "release" };
    let binary = crate::target_dir().join(profile).join(BINARY);
    if !binary.is_file() {
        bail!(
            "cargo built geoip-user but {} does not exist; is the target directory \
             configured elsewhere (build.target-dir)? unset it or set CARGO_TARGET_DIR",
            binary.display()
        );
    }
    println!("{}", binary.display());
    Ok(binary)
}
