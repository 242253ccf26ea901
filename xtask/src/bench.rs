//! `cargo xtask bench`: setup, release build, then the load benchmark
//! (`tests/benches/load.rs`) against the real kernel (root). It prints a
//! Markdown table; BENCHMARKS.md records the numbers.
//!
//! `cargo xtask soak`: the same preparation, then the bounded churn run of
//! `tests/benches/soak.rs`; it fails when the counts are not exact or the
//! exporter's memory grew.

use std::process::Command;

use anyhow::{Result, bail};

use crate::{build, cmd, setup};

pub(crate) fn run() -> Result<()> {
    run_bench("bench", "load", &[])
}

/// Longest soak allowed, in seconds.
const SOAK_MAX_SECONDS: u64 = 600;

pub(crate) fn soak(seconds: u64) -> Result<()> {
    if !(60..=SOAK_MAX_SECONDS).contains(&seconds) {
        bail!(
            "--seconds {seconds} is out of range: the soak runs 60 to {SOAK_MAX_SECONDS} seconds"
        );
    }
    run_bench(
        "soak",
        "soak",
        &["--seconds".to_owned(), seconds.to_string()],
    )
}

fn run_bench(command: &str, bench: &str, args: &[String]) -> Result<()> {
    if !crate::is_root() {
        bail!(
            "`cargo xtask {command}` needs root: it loads the eBPF program and creates network \
             namespaces; run `sudo -E env PATH=\"$PATH\" cargo xtask {command}`"
        );
    }
    setup::run(setup::Parts::ALL)?;
    let binary = build::release()?;
    eprintln!("==> {bench}");
    cmd::run(
        Command::new("cargo")
            .current_dir(crate::workspace_root())
            .env("GEOIP_EXPORTER_BIN", &binary)
            .args(["bench", "-p", "geoip-tests", "--bench", bench, "--"])
            .args(args),
    )
}
