//! `cargo xtask bench`: setup, the real database (fetch-db), release
//! build, then every benchmark in turn, alone on the machine:
//! 1. `pipeline` (`geoip-user/benches/pipeline.rs`): user space on one
//!    core with synthetic events, and lookups against the maxminddb crate;
//! 2. `load` (`tests/benches/load.rs`): the kernel program against an
//!    empty one on the same tracepoint, and churn at the machine's top
//!    connection rate;
//! 3. `scale` (`tests/benches/scale.rs`): 100,000 concurrent connections;
//! 4. `poller` (`tests/benches/poller.rs`): the polling design side by side;
//! 5. `options` (`tests/benches/options.rs`): the kernel's, the exporter's
//!    CPU and memory cost of each opt-in option.
//!
//! Each prints Markdown tables and `TARGET` lines; this gathers the latter
//! into one target-vs-measured table at the end (and in
//! `target/bench-report.md`), which BENCHMARKS.md records.
//!
//! `cargo xtask soak`: the same preparation, then the bounded churn run of
//! `tests/benches/soak.rs`; it fails when the counts are not exact or the
//! exporter's memory grew.

use std::{fmt::Write as _, process::Command, time::Instant};

use anyhow::{Context as _, Result, bail};

use crate::{build, cmd, fetch_db, setup};

/// The benchmarks, in the order they run: (package, bench, what it is).
const BENCHES: [(&str, &str, &str); 5] = [
    ("geoip-user", "pipeline", "user space on one core, lookups"),
    ("geoip-tests", "load", "kernel program and churn"),
    ("geoip-tests", "scale", "100,000 concurrent connections"),
    (
        "geoip-tests",
        "poller",
        "side by side with the polling design",
    ),
    ("geoip-tests", "options", "what each opt-in option costs"),
];

pub(crate) fn run() -> Result<()> {
    require_root("bench")?;
    setup::run(setup::Parts::ALL)?;
    fetch_db::fetch(fetch_db::Source::Dbip, &fetch_db::default_dir(), false)?;
    // The city lookup's cost on a full-size database (pipeline bench).
    fetch_db::fetch(fetch_db::Source::DbipCity, &fetch_db::default_dir(), false)?;
    let binary = build::release()?;
    let started = Instant::now();
    let mut report = String::new();
    let mut targets = Vec::new();
    for (package, bench, what) in BENCHES {
        eprintln!("==> {bench}: {what}");
        let mut command = Command::new("cargo");
        command
            .current_dir(crate::workspace_root())
            .env("GEOIP_EXPORTER_BIN", &binary)
            .args(["bench", "-p", package, "--bench", bench]);
        if package == "geoip-user" {
            command.args(["--features", "bench"]);
        }
        let out = tee(command.arg("--"))?;
        let _ = writeln!(report, "### {bench}: {what}\n");
        for line in out.lines() {
            if let Some(fields) = line.strip_prefix("TARGET\t") {
                targets.push(fields.split('\t').map(str::to_owned).collect::<Vec<_>>());
            } else {
                let _ = writeln!(report, "{line}");
            }
        }
        report.push('\n');
    }
    let mut summary =
        String::from("### Targets\n\n| target | goal | measured | |\n|---|---|---|---|\n");
    for t in &targets {
        let _ = writeln!(summary, "| {} |", t.join(" | "));
    }
    let _ = writeln!(
        summary,
        "\n`cargo xtask bench`: {:.0} s for the benchmarks.",
        started.elapsed().as_secs_f64()
    );
    println!("\n{summary}");
    report.push_str(&summary);
    let path = crate::workspace_root().join("target/bench-report.md");
    std::fs::write(&path, &report).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("==> report also in {}", path.display());
    Ok(())
}

/// Runs `cmd` with its stderr inherited and its stdout both shown as it
/// comes and returned; fails unless it exits with status 0.
fn tee(cmd: &mut Command) -> Result<String> {
    use std::io::BufRead as _;
    let line = cmd::announce(cmd);
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{line}`"))?;
    let mut out = String::new();
    if let Some(stdout) = child.stdout.take() {
        for l in std::io::BufReader::new(stdout).lines() {
            let l = l.with_context(|| format!("reading the output of `{line}`"))?;
            println!("{l}");
            out.push_str(&l);
            out.push('\n');
        }
    }
    let status = child
        .wait()
        .with_context(|| format!("waiting for `{line}`"))?;
    if !status.success() {
        bail!("command failed ({status}): {line}");
    }
    Ok(out)
}

fn require_root(command: &str) -> Result<()> {
    if !crate::is_root() {
        bail!(
            "`cargo xtask {command}` needs root: it loads the eBPF program and creates network \
             namespaces; run `sudo -E env PATH=\"$PATH\" cargo xtask {command}`"
        );
    }
    Ok(())
}

/// Longest soak allowed, in seconds.
const SOAK_MAX_SECONDS: u64 = 600;

pub(crate) fn soak(seconds: u64) -> Result<()> {
    if !(60..=SOAK_MAX_SECONDS).contains(&seconds) {
        bail!(
            "--seconds {seconds} is out of range: the soak runs 60 to {SOAK_MAX_SECONDS} seconds"
        );
    }
    require_root("soak")?;
    setup::run(setup::Parts::ALL)?;
    let binary = build::release()?;
    eprintln!("==> soak");
    cmd::run(
        Command::new("cargo")
            .current_dir(crate::workspace_root())
            .env("GEOIP_EXPORTER_BIN", &binary)
            .args(["bench", "-p", "geoip-tests", "--bench", "soak", "--"])
            .args(["--seconds", &seconds.to_string()]),
    )
}
