//! `cargo xtask vm-test`: the real-kernel suites inside Debian's kernels
//! 5.10, 6.1 and 6.12 under qemu (KVM where it is real, else software
//! emulation), one table of what passed where.
//!
//! - `kernels`: fetch and unpack the newest cloud kernel of each line.
//! - `initramfs`: busybox, the modules to reach the host's files, an init.
//! - `guest`: boot one kernel on this machine's files, run one script.
//! - `suites`: what runs inside, the script, reading its output.
//! - `report`: the table, the failures, the README's table.

mod guest;
mod initramfs;
mod kernels;
mod report;
mod suites;

use std::{
    fs,
    path::Path,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Result, bail};
use clap::Args;

use self::{
    guest::Boot,
    kernels::{Kernel, LINES},
    report::Row,
    suites::Suite,
};

#[derive(Debug, Args, Default)]
pub(crate) struct Options {
    /// Only these kernel lines (5.10, 6.1, 6.12); repeat for more.
    #[arg(long = "kernel", value_name = "LINE")]
    kernels: Vec<String>,
    /// Only these suites (check, e2e, faults, service, measures); repeat for more.
    #[arg(long = "suite", value_name = "NAME")]
    suites: Vec<String>,
    /// Write the results into the README's "Supported kernels" table.
    #[arg(long)]
    update_readme: bool,
    /// Instead of the suites, run this shell script in each guest (as root,
    /// in the workspace) and show its output: to look into one kernel.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["suites", "update_readme"])]
    script: Option<std::path::PathBuf>,
}

/// `cargo xtask vm-test`: build, then the matrix.
pub(crate) fn run(options: &Options) -> Result<()> {
    if !crate::is_root() {
        bail!(
            "the kernel matrix needs root (the tests inside load the eBPF program); run it with sudo"
        );
    }
    crate::setup::run(crate::setup::Parts::ALL)?;
    let binary = crate::build::release()?;
    matrix(options, &binary)
}

/// The matrix with the exporter built at `binary`.
pub(crate) fn matrix(options: &Options, binary: &Path) -> Result<()> {
    let lines = chosen_lines(&options.kernels)?;
    let suites = suites::chosen(&options.suites)?;
    let workspace = crate::workspace_root();
    let dir = crate::target_dir().join("vm");
    for path in [workspace, &dir, binary] {
        plain_path(path)?;
    }
    eprintln!("==> kernel matrix: Debian's kernels {}", names(&lines));
    let kernels = kernels::fetch(&lines, &dir)?;
    if let Some(path) = &options.script {
        return run_script(&kernels, path, &dir);
    }
    eprintln!("==> the test executables, for the guests");
    let executables = suites::build_executables(workspace)?;
    let script = suites::script(&suites, &executables, workspace, binary)?;
    let mut rows = Vec::new();
    for kernel in kernels {
        rows.push(boot(&kernel, &suites, &script, &dir)?);
    }
    let table = report::table(&rows, &suites);
    eprint!("{table}");
    fs::write(dir.join("results.txt"), &table)?;
    let accel = if guest::uses_kvm() {
        "KVM"
    } else {
        "qemu's software emulation"
    };
    let readme_table = report::readme_table(&rows, &suites, &today(), accel);
    fs::write(dir.join("readme-table.md"), &readme_table)?;
    if options.update_readme {
        let path = workspace.join("README.md");
        let text = report::with_table(&fs::read_to_string(&path)?, &readme_table)?;
        fs::write(&path, text)?;
        eprintln!("README.md: the Supported kernels table rewritten");
    }
    let failures = report::failures(&rows);
    if !failures.is_empty() {
        bail!("the kernel matrix failed:\n  {}", failures.join("\n  "));
    }
    Ok(())
}

/// Boot `kernel` and run the suites' `script` in it.
fn boot(kernel: &Kernel, suites: &[Suite], script: &str, dir: &Path) -> Result<Row> {
    let prefix = format!("[{}]", kernel.line.name);
    eprintln!("==> {prefix} booting {}", kernel.release);
    let work = dir.join("run").join(&kernel.release);
    fs::create_dir_all(&work)?;
    let initramfs = dir.join(format!("initramfs-{}.cpio", kernel.release));
    initramfs::write(kernel, &initramfs)?;
    let script_path = work.join("suites.sh");
    fs::write(&script_path, script)?;
    // Software emulation is about 10x slower than the host.
    let timeout = if guest::uses_kvm() {
        Duration::from_mins(10)
    } else {
        Duration::from_mins(25)
    };
    let outcome = Boot {
        kernel,
        initramfs: &initramfs,
        script: &script_path,
        dir: &work,
        timeout,
    }
    .run(&prefix)?;
    fs::write(work.join("output.log"), &outcome.output)?;
    let trouble = outcome.status.is_none().then(|| {
        format!(
            "the guest did not finish its script (console: {})",
            outcome.console.display()
        )
    });
    Ok(Row {
        kernel: kernel.clone(),
        ran: suites::read(&outcome.output, suites),
        elapsed: outcome.elapsed,
        status: outcome.status,
        trouble,
    })
}

/// Boot each of `kernels` with the script at `path`; fail if it fails in
/// any.
fn run_script(kernels: &[Kernel], path: &Path, dir: &Path) -> Result<()> {
    let text = fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read the script {}: {e}", path.display()))?;
    let script = format!("cd '{}'\n{text}", crate::workspace_root().display());
    let mut failed = Vec::new();
    for kernel in kernels {
        let row = boot(kernel, &[], &script, dir)?;
        match (row.trouble, row.status) {
            (Some(trouble), _) => failed.push(format!("{}: {trouble}", kernel.release)),
            (None, Some(0)) => {}
            (None, status) => failed.push(format!(
                "{}: the script exited with {}",
                kernel.release,
                status.unwrap_or(-1)
            )),
        }
    }
    if !failed.is_empty() {
        bail!("{}", failed.join("\n"));
    }
    Ok(())
}

/// Fails on a path the guest's command line and scripts cannot carry as
/// they are (white space, quotes, a backslash).
fn plain_path(path: &Path) -> Result<()> {
    let text = path.to_string_lossy();
    if text
        .chars()
        .any(|c| c.is_whitespace() || "'\"\\$`".contains(c))
    {
        bail!(
            "the kernel matrix needs paths without spaces, quotes or backslashes (the guests' command line and scripts name them): {text}; move the checkout or set CARGO_TARGET_DIR"
        );
    }
    Ok(())
}

fn chosen_lines(only: &[String]) -> Result<Vec<kernels::Line>> {
    if only.is_empty() {
        return Ok(LINES.to_vec());
    }
    only.iter()
        .map(|name| match LINES.iter().find(|l| l.name == name) {
            Some(line) => Ok(*line),
            None => bail!("no kernel line {name:?}: the matrix has {}", names(&LINES)),
        })
        .collect()
}

fn names(lines: &[kernels::Line]) -> String {
    lines.iter().map(|l| l.name).collect::<Vec<_>>().join(", ")
}

fn today() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    crate::civil::date(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_the_guest_cannot_carry_are_refused() {
        assert!(plain_path(Path::new("/work/main/target/vm")).is_ok());
        assert!(plain_path(Path::new("/work/my project/target")).is_err());
        assert!(plain_path(Path::new("/work/it's")).is_err());
    }

    #[test]
    fn kernel_lines_are_chosen_by_name() {
        assert_eq!(chosen_lines(&[]).unwrap().len(), 3);
        let one = chosen_lines(&["6.1".to_owned()]).unwrap();
        assert_eq!(one[0].name, "6.1");
        let err = chosen_lines(&["4.19".to_owned()]).unwrap_err().to_string();
        assert!(err.contains("5.10, 6.1, 6.12"), "{err}");
    }
}
