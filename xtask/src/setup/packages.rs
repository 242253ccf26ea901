//! Debian packages the tests need, installed with apt only when missing.

use std::process::Command;

use anyhow::{Result, bail};

use super::{Report, ok, step};
use crate::cmd;

/// One Debian package setup makes sure of.
#[derive(Debug)]
struct DebPackage {
    /// The Debian package name.
    name: &'static str,
    /// Leave the package alone when this program is on PATH (for example an
    /// npm that did not come from Debian).
    unless_on_path: Option<&'static str>,
    /// What the tests use it for.
    why: &'static str,
}

/// Everything the tests need from Debian. Add packages here.
const PACKAGES: &[DebPackage] = &[
    DebPackage {
        name: "iproute2",
        unless_on_path: None,
        why: "`ip netns`, veth links and routes for the test hosts",
    },
    DebPackage {
        name: "util-linux",
        unless_on_path: None,
        why: "`mount`, `unshare`",
    },
    DebPackage {
        name: "procps",
        unless_on_path: None,
        why: "`ps`, `sysctl`",
    },
    DebPackage {
        name: "bpftool",
        unless_on_path: None,
        why: "the shutdown test lists the kernel's programs and maps",
    },
    DebPackage {
        name: "prometheus",
        unless_on_path: None,
        why: "`promtool check metrics` on the live /metrics, and a real Prometheus server",
    },
    DebPackage {
        name: "chromium",
        unless_on_path: None,
        why: "the browser test of the built-in map",
    },
    DebPackage {
        name: "chromium-driver",
        unless_on_path: None,
        why: "drives Chromium in the browser test (WebDriver)",
    },
    DebPackage {
        name: "python3-venv",
        unless_on_path: None,
        why: "the virtualenv with the Kubernetes manifest validators",
    },
    DebPackage {
        name: "python3-seccomp",
        unless_on_path: None,
        why: "the systemd unit test applies the unit's system call filter",
    },
    DebPackage {
        name: "systemd",
        unless_on_path: Some("systemd-analyze"),
        why: "`systemd-analyze verify` and `security` on the unit (not as PID 1)",
    },
    DebPackage {
        name: "dpkg-dev",
        unless_on_path: Some("dpkg-shlibdeps"),
        why: "cargo-deb works out the package's dependencies with dpkg-shlibdeps",
    },
    DebPackage {
        name: "lintian",
        unless_on_path: None,
        why: "the install test holds the Debian package to Debian's own checks",
    },
    DebPackage {
        name: "debootstrap",
        unless_on_path: None,
        why: "the Debian root the install test boots with systemd",
    },
    DebPackage {
        name: "systemd-container",
        unless_on_path: None,
        why: "systemd-nspawn: the install test runs the packaged service under systemd",
    },
    DebPackage {
        name: "qemu-system-x86",
        unless_on_path: None,
        why: "`cargo xtask vm-test` boots Debian's kernels under qemu (with virtiofsd)",
    },
    DebPackage {
        name: "busybox-static",
        unless_on_path: None,
        why: "the guests' initramfs: mounts the host's files and switches root",
    },
    DebPackage {
        name: "kmod",
        unless_on_path: None,
        why: "depmod and modprobe list the modules each guest kernel needs",
    },
    DebPackage {
        name: "nodejs",
        unless_on_path: Some("npm"),
        why: "the npm client that `cargo xtask fetch-db` uses",
    },
    DebPackage {
        name: "npm",
        unless_on_path: Some("npm"),
        why: "the npm client that `cargo xtask fetch-db` uses",
    },
];

/// Installs the packages of [`PACKAGES`] that are missing (root only).
pub(super) fn ensure(root: bool, report: &mut Report) -> Result<()> {
    let mut missing = Vec::new();
    for package in PACKAGES {
        step(&format!(
            "Debian package {} ({})",
            package.name, package.why
        ));
        if let Some(program) = package.unless_on_path
            && let Some(found) = cmd::which(program)
        {
            ok(&format!(
                "not needed: {program} already on PATH at {}",
                found.display()
            ));
            continue;
        }
        if is_installed(package.name) {
            ok("already installed");
        } else {
            eprintln!("    not installed");
            missing.push(package.name);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    step(&format!("install Debian packages: {list}"));
    if !root {
        report.skip(&format!("apt-get install {list}"), "needs root");
        return Ok(());
    }
    if cmd::which("apt-get").is_none() {
        bail!(
            "missing packages: {list}; setup installs them with apt-get, which is not on PATH: \
             install them with this system's package manager"
        );
    }
    cmd::run(Command::new("apt-get").arg("update"))?;
    cmd::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing),
    )?;
    ok(&format!("installed {list}"));
    Ok(())
}

/// Whether dpkg reports `name` as installed (any failure of dpkg-query,
/// such as an unknown package, means no).
fn is_installed(name: &str) -> bool {
    cmd::stdout(Command::new("dpkg-query").args(["-W", "-f=${Status}", name]))
        .is_ok_and(|status| status_is_installed(&status))
}

fn status_is_installed(status: &str) -> bool {
    status.contains("install ok installed")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_dpkg_status() {
        assert!(status_is_installed("install ok installed"));
        assert!(!status_is_installed("unknown ok not-installed"));
        assert!(!status_is_installed("deinstall ok config-files"));
    }

    #[test]
    fn package_names_are_unique() {
        for (i, package) in PACKAGES.iter().enumerate() {
            assert!(
                PACKAGES[i + 1..]
                    .iter()
                    .all(|other| other.name != package.name),
                "{} listed twice",
                package.name
            );
        }
    }
}
