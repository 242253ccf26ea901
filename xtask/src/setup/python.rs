//! The Python virtualenv `target/deploy-venv` with the validators the
//! deployment-manifest tests run (they work offline once installed).

use std::process::Command;

use anyhow::Result;

use super::{ok, step};
use crate::cmd;

/// Pinned: the tests validate against the schemas these versions bundle.
const REQUIREMENTS: &[&str] = &[
    "kubernetes-validate==1.37.0",
    "jsonschema==4.26.0",
    "referencing==0.37.0",
    "PyYAML==6.0.4",
];

/// Creates the virtualenv and installs [`REQUIREMENTS`] unless they are there.
pub(super) fn ensure() -> Result<()> {
    step(&format!(
        "Python virtualenv target/deploy-venv ({})",
        REQUIREMENTS.join(", ")
    ));
    let venv = crate::target_dir().join("deploy-venv");
    let python = venv.join("bin").join("python3");
    let freeze = python
        .is_file()
        .then(|| cmd::stdout(Command::new(&python).args(["-m", "pip", "freeze"])).ok())
        .flatten()
        .unwrap_or_default();
    if installed(&freeze) {
        ok("already installed");
        return Ok(());
    }
    if !python.is_file() {
        cmd::run(
            Command::new("/usr/bin/python3")
                .arg("-m")
                .arg("venv")
                .arg(&venv),
        )?;
    }
    cmd::run(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(REQUIREMENTS),
    )?;
    ok("installed");
    Ok(())
}

/// Whether `pip freeze` output lists every requirement at its version.
fn installed(freeze: &str) -> bool {
    REQUIREMENTS.iter().all(|req| {
        freeze
            .lines()
            .any(|line| line.trim().eq_ignore_ascii_case(req))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pip_freeze() {
        let all = "attrs==26.1.0\nkubernetes-validate==1.37.0\njsonschema==4.26.0\nreferencing==0.37.0\npyyaml==6.0.4\n";
        assert!(installed(all));
        assert!(!installed("jsonschema==4.26.0\n"));
        assert!(!installed(""));
    }
}
