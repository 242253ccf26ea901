//! `cargo xtask test`: setup, build, the unit tests, the Debian package,
//! then the end-to-end tests against the real kernel (root), among them
//! the install test of that package; it ends with a one-line summary.

use std::{ffi::OsString, fmt, process::Command};

use anyhow::{Result, bail};
use clap::Args;

use crate::{build, cmd, package, setup, vm};

#[derive(Debug, Args)]
pub(crate) struct Options {
    /// Run only the unit tests (no root needed).
    #[arg(long, conflicts_with = "e2e")]
    unit: bool,
    /// Run only the end-to-end tests (root).
    #[arg(long)]
    e2e: bool,
    /// Skip the kernel matrix (the suites inside Debian's kernels under qemu).
    #[arg(long)]
    no_vm: bool,
    /// Arguments for the test binaries of both runs, after `--` (e.g. a name filter).
    /// Given, the kernel matrix is skipped (it runs its own suites).
    #[arg(last = true)]
    args: Vec<OsString>,
}

pub(crate) fn run(options: &Options) -> Result<()> {
    let unit = !options.e2e;
    let e2e = !options.unit;
    if e2e && !crate::is_root() {
        bail!(
            "the end-to-end tests need root: they load the eBPF program and create network \
             namespaces; run `sudo -E env PATH=\"$PATH\" cargo xtask test`, or `cargo xtask test --unit` for the \
             unit tests alone"
        );
    }
    let mut summary = Summary::default();
    let result = run_steps(options, unit, e2e, &mut summary);
    eprintln!("{summary}");
    result
}

fn run_steps(options: &Options, unit: bool, e2e: bool, summary: &mut Summary) -> Result<()> {
    let parts = if e2e {
        setup::Parts::ALL
    } else {
        setup::Parts::TOOLCHAIN
    };
    summary.plan("setup");
    if e2e {
        summary.plan("build");
    }
    if unit {
        summary.plan("unit tests");
    }
    if e2e {
        summary.plan("package");
        summary.plan("e2e tests");
        if vm(options) {
            summary.plan("kernel matrix");
        }
    }

    summary.record("setup", setup::run(parts))?;
    let binary = if e2e {
        Some(summary.record("build", build::release())?)
    } else {
        None
    };
    let workspace = crate::workspace_root();
    if unit {
        eprintln!("==> unit tests");
        let mut cargo = Command::new("cargo");
        cargo.current_dir(workspace).args([
            "test",
            "-p",
            "geoip-common",
            "-p",
            "geoip-user",
            "-p",
            "xtask",
        ]);
        if !options.args.is_empty() {
            cargo.arg("--").args(&options.args);
        }
        summary.record("unit tests", cmd::run(&mut cargo))?;
    }
    if let Some(binary) = binary {
        eprintln!("==> the Debian package (for the install test)");
        let deb = summary.record("package", package::of_binary(&binary))?;
        eprintln!("==> end-to-end tests");
        let result = cmd::run(
            Command::new("cargo")
                .current_dir(workspace)
                .env("GEOIP_EXPORTER_BIN", &binary)
                .env("GEOIP_DEB", &deb)
                .env(
                    "GEOIP_SYSTEMD_ROOT",
                    crate::target_dir().join("systemd-root"),
                )
                .args([
                    "test",
                    "--release",
                    "-p",
                    "geoip-tests",
                    "--",
                    "--test-threads=1",
                ])
                .args(&options.args),
        );
        summary.record("e2e tests", result)?;
        if vm(options) {
            let result = vm::matrix(&vm::Options::default(), &binary);
            summary.record("kernel matrix", result)?;
        }
    }
    Ok(())
}

/// Whether this run takes the kernel matrix too.
const fn vm(options: &Options) -> bool {
    !options.no_vm && options.args.is_empty()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    NotRun,
    Passed,
    Failed,
}

/// The steps of one `cargo xtask test` and how each ended.
#[derive(Debug, Default)]
struct Summary {
    steps: Vec<(&'static str, Status)>,
}

impl Summary {
    fn plan(&mut self, name: &'static str) {
        self.steps.push((name, Status::NotRun));
    }

    /// Records the outcome of step `name` and passes the result on.
    fn record<T>(&mut self, name: &'static str, result: Result<T>) -> Result<T> {
        let status = if result.is_ok() {
            Status::Passed
        } else {
            Status::Failed
        };
        if let Some(step) = self.steps.iter_mut().find(|(planned, _)| *planned == name) {
            step.1 = status;
        } else {
            self.steps.push((name, status));
        }
        result
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let failed = self
            .steps
            .iter()
            .any(|(_, status)| *status == Status::Failed);
        write!(f, "test summary: {}:", if failed { "FAILED" } else { "ok" })?;
        for (i, (name, status)) in self.steps.iter().enumerate() {
            let status = match status {
                Status::NotRun => "not run",
                Status::Passed => "ok",
                Status::Failed => "FAILED",
            };
            write!(f, "{} {name} {status}", if i == 0 { "" } else { "," })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use anyhow::anyhow;

    use super::*;

    #[test]
    fn summary_names_the_failed_step_and_what_did_not_run() {
        let mut summary = Summary::default();
        for name in ["setup", "build", "unit tests", "package", "e2e tests"] {
            summary.plan(name);
        }
        summary.record("setup", Ok(())).expect("passed");
        summary
            .record::<()>("build", Err(anyhow!("boom")))
            .expect_err("failed");
        assert_eq!(
            summary.to_string(),
            "test summary: FAILED: setup ok, build FAILED, unit tests not run, package not run, e2e tests not run"
        );
    }
}
