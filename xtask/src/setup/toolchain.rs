//! The nightly toolchain and its `rust-src` component: the eBPF crate builds
//! with `rustup run nightly cargo build -Z build-std=core`.

use std::process::Command;

use anyhow::Result;

use super::{ok, step};
use crate::cmd;

/// Makes sure rustup has a nightly toolchain.
pub(super) fn nightly() -> Result<()> {
    step("nightly toolchain");
    let list = cmd::stdout(Command::new("rustup").args(["toolchain", "list"]))?;
    if let Some(name) = find_nightly(&list) {
        ok(&format!("already installed: {name}"));
        return Ok(());
    }
    eprintln!("    not installed: installing it");
    cmd::run(Command::new("rustup").args([
        "toolchain",
        "install",
        "nightly",
        "--profile",
        "minimal",
        "--component",
        "rust-src",
    ]))
}

/// Makes sure the nightly toolchain has `rust-src` (for `-Z build-std=core`).
pub(super) fn rust_src() -> Result<()> {
    step("rust-src for nightly");
    let installed = cmd::stdout(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))?;
    if installed.lines().any(|line| line.trim() == "rust-src") {
        ok("already installed");
        return Ok(());
    }
    eprintln!("    not installed: adding it");
    cmd::run(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ]))
}

/// The name of the toolchain `+nightly` selects in `rustup toolchain list`
/// output, if any (`nightly-<host>`, not a dated `nightly-2024-01-01-<host>`).
fn find_nightly(list: &str) -> Option<&str> {
    list.lines()
        .filter_map(|line| line.split_whitespace().next())
        .find(|name| match name.strip_prefix("nightly") {
            Some(rest) => {
                rest.is_empty()
                    || rest
                        .strip_prefix('-')
                        .is_some_and(|host| !host.starts_with(|c: char| c.is_ascii_digit()))
            }
            None => false,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_plain_nightly_but_not_dated_ones() {
        let list = "stable-x86_64-unknown-linux-gnu (active, default)\n\
                    nightly-2024-01-01-x86_64-unknown-linux-gnu\n\
                    nightly-x86_64-unknown-linux-gnu\n";
        assert_eq!(find_nightly(list), Some("nightly-x86_64-unknown-linux-gnu"));
        let dated_only = "stable-x86_64-unknown-linux-gnu\n\
                          nightly-2024-01-01-x86_64-unknown-linux-gnu\n";
        assert_eq!(find_nightly(dated_only), None);
        assert_eq!(find_nightly("nightly (default)\n"), Some("nightly"));
    }
}
