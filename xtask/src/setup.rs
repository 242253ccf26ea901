//! `cargo xtask setup`: check, and install when missing, what building and
//! testing need. Idempotent: a second run only checks.
//!
//! Each part is a submodule; every check prints what it looked at and either
//! `ok (already ...)` or what it did. Steps that need root are skipped (and
//! reported, making setup fail) when run as another user.

mod bpf_linker;
mod cargo_deb;
mod kernel;
mod packages;
mod python;
mod systemd_root;
mod toolchain;

use std::{env, path::PathBuf};

use anyhow::{Context, Result, bail};

/// Which parts of setup to run.
#[derive(Clone, Copy, Debug)]
#[expect(clippy::struct_excessive_bools, reason = "independent switches")]
pub(crate) struct Parts {
    /// Nightly toolchain, `rust-src`, bpf-linker: what building needs.
    pub(crate) toolchain: bool,
    /// cargo-deb: what `cargo xtask package` needs.
    pub(crate) packaging: bool,
    /// Debian packages the tests need.
    pub(crate) packages: bool,
    /// tracefs, bpffs, BTF: what loading the eBPF program needs.
    pub(crate) kernel: bool,
}

impl Parts {
    pub(crate) const ALL: Self = Self {
        toolchain: true,
        packaging: true,
        packages: true,
        kernel: true,
    };
    pub(crate) const TOOLCHAIN: Self = Self {
        toolchain: true,
        packaging: false,
        packages: false,
        kernel: false,
    };
    /// What `cargo xtask package` needs.
    pub(crate) const PACKAGING: Self = Self {
        toolchain: true,
        packaging: true,
        packages: false,
        kernel: false,
    };
    pub(crate) const KERNEL: Self = Self {
        toolchain: false,
        packaging: false,
        packages: false,
        kernel: true,
    };
}

/// What the steps found that did not end in "ok".
#[derive(Debug, Default)]
struct Report {
    /// Steps skipped because they need root.
    skipped: Vec<String>,
    /// Non-fatal problems.
    warnings: Vec<String>,
}

impl Report {
    fn skip(&mut self, step: &str, reason: &str) {
        eprintln!("    skipped: {reason}");
        self.skipped.push(format!("{step} ({reason})"));
    }

    fn warn(&mut self, message: String) {
        eprintln!("    warning: {message}");
        self.warnings.push(message);
    }
}

/// Runs the selected parts of setup.
pub(crate) fn run(parts: Parts) -> Result<()> {
    ensure_path()?;
    let root = crate::is_root();
    let mut report = Report::default();
    if parts.toolchain {
        toolchain::nightly()?;
        toolchain::components()?;
        bpf_linker::ensure()?;
    }
    if parts.packaging {
        cargo_deb::ensure()?;
    }
    if parts.packages {
        packages::ensure(root, &mut report)?;
        python::ensure()?;
        systemd_root::ensure(root, &mut report)?;
    }
    if parts.kernel {
        kernel::tracefs(root, &mut report)?;
        kernel::bpffs(root, &mut report)?;
        kernel::btf(&mut report);
    }
    if !report.skipped.is_empty() {
        bail!(
            "setup needs root for mounts and apt, and skipped: {}; run it as root, e.g. \
             `sudo -E env PATH=\"$PATH\" cargo xtask setup` (or do those steps by hand)",
            report.skipped.join("; ")
        );
    }
    if report.warnings.is_empty() {
        eprintln!("setup: everything in place");
    } else {
        eprintln!("setup: done with {} warning(s)", report.warnings.len());
    }
    Ok(())
}

/// Prints the header of one setup step.
fn step(name: &str) {
    eprintln!("==> {name}");
}

/// Prints the "ok" result of a step.
fn ok(detail: &str) {
    eprintln!("    ok ({detail})");
}

/// Cargo's home: `$CARGO_HOME`, else `$HOME/.cargo`.
pub(crate) fn cargo_home() -> Result<PathBuf> {
    if let Some(home) = env::var_os("CARGO_HOME").filter(|home| !home.is_empty()) {
        return Ok(PathBuf::from(home));
    }
    let home = env::var_os("HOME")
        .filter(|home| !home.is_empty())
        .context("neither CARGO_HOME nor HOME is set; set CARGO_HOME to cargo's home directory")?;
    Ok(PathBuf::from(home).join(".cargo"))
}

/// Puts `$CARGO_HOME/bin` at the front of PATH (for this process and every
/// child it starts) unless PATH already holds it: the build runs `rustup` and
/// `bpf-linker` from there.
pub(crate) fn ensure_path() -> Result<()> {
    let bin = cargo_home()?.join("bin");
    let path = env::var_os("PATH").unwrap_or_default();
    if env::split_paths(&path).any(|dir| dir == bin) {
        return Ok(());
    }
    let joined = env::join_paths(std::iter::once(bin.clone()).chain(env::split_paths(&path)))
        .with_context(|| {
            format!(
                "cannot add {} to PATH (it contains ':'); set CARGO_HOME to a path without ':'",
                bin.display()
            )
        })?;
    eprintln!("adding {} to PATH", bin.display());
    // SAFETY: xtask is single-threaded, so no other thread reads the
    // environment while it changes.
    unsafe { env::set_var("PATH", joined) };
    Ok(())
}
