//! `cargo xtask bench`: setup, release build, then the load benchmark
//! (`tests/benches/load.rs`) against the real kernel (root). It prints a
//! Markdown table; BENCHMARKS.md records the numbers.

use std::process::Command;

use anyhow::{Result, bail};

use crate::{build, cmd, setup};

pub(crate) fn run() -> Result<()> {
    if !crate::is_root() {
        bail!(
            "the benchmark needs root: it loads the eBPF program and creates a network \
             namespace; run `sudo -E env PATH=\"$PATH\" cargo xtask bench`"
        );
    }
    setup::run(setup::Parts::ALL)?;
    let binary = build::release()?;
    eprintln!("==> load benchmark");
    cmd::run(
        Command::new("cargo")
            .current_dir(crate::workspace_root())
            .env("GEOIP_EXPORTER_BIN", &binary)
            .args(["bench", "-p", "geoip-tests", "--bench", "load"]),
    )
}
