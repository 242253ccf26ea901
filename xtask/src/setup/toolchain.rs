//! The nightly toolchain and its components: `rust-src` (the eBPF crate
//! builds with `rustup run nightly cargo build -Z build-std=core`), and
//! `clippy` and `rustfmt` (CI lints the eBPF crate and checks the format
//! with nightly).

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
        "--component",
        "clippy",
        "--component",
        "rustfmt",
    ]))
}

/// The nightly components the build and CI use.
const COMPONENTS: [&str; 3] = ["rust-src", "clippy", "rustfmt"];

/// Makes sure the nightly toolchain has [`COMPONENTS`].
pub(super) fn components() -> Result<()> {
    step("rust-src, clippy and rustfmt for nightly");
    let installed = cmd::stdout(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))?;
    let missing = missing(&installed);
    if missing.is_empty() {
        ok("already installed");
        return Ok(());
    }
    eprintln!("    not installed: adding {}", missing.join(", "));
    cmd::run(
        Command::new("rustup")
            .args(["component", "add"])
            .args(&missing)
            .args(["--toolchain", "nightly"]),
    )
}

/// Which of [`COMPONENTS`] `rustup component list --installed` does not
/// list (it names most with their host: `clippy-x86_64-unknown-linux-gnu`).
fn missing(installed: &str) -> Vec<&'static str> {
    COMPONENTS
        .into_iter()
        .filter(|c| {
            !installed.lines().any(|line| {
                let line = line.trim();
                line == *c
                    || line
                        .strip_prefix(c)
                        .is_some_and(|rest| rest.starts_with('-'))
            })
        })
        .collect()
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

    #[test]
    fn missing_components_by_name_with_or_without_the_host() {
        let all = "clippy-x86_64-unknown-linux-gnu\nrust-src\nrust-std-x86_64-unknown-linux-gnu\nrustfmt-x86_64-unknown-linux-gnu\n";
        assert!(missing(all).is_empty());
        assert_eq!(
            missing("rust-src\nrust-std-x86_64-unknown-linux-gnu\n"),
            ["clippy", "rustfmt"]
        );
        assert_eq!(missing("rust-std-x86_64-unknown-linux-gnu\n"), COMPONENTS);
    }
}
