//! `cargo xtask fuzz`: every fuzz target in `fuzz/` (cargo-fuzz, libFuzzer,
//! nightly) for a bounded time each, seeded from `fuzz/seeds/<target>/`;
//! prints the executions and findings per target and fails on a finding.

use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use crate::{cmd, setup};

/// The targets, as `fuzz/Cargo.toml` names them.
pub(crate) const TARGETS: &[&str] = &[
    "event_record",
    "exclude_list",
    "flag_values",
    "web_config",
    "btf",
    "tracepoint_format",
    "sock_diag_reply",
    "database",
    "search_tree",
];

/// The seconds one input may take before it is a finding: 10, and 2 for
/// the search-tree walk, whose every input must be quick (the walk is
/// bounded by the file's size).
fn timeout(target: &str) -> u32 {
    if target == "search_tree" { 2 } else { 10 }
}

/// The cargo-fuzz release `cargo xtask fuzz` installs.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

#[derive(Debug, Args)]
pub(crate) struct Options {
    /// Seconds per target (1 to 3600).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    seconds: u64,
    /// Only these targets (default: all).
    #[arg(long = "target", value_name = "NAME")]
    targets: Vec<String>,
}

/// One target's run.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    runs: u64,
    finding: Option<String>,
}

pub(crate) fn run(options: &Options) -> Result<()> {
    for t in &options.targets {
        if !TARGETS.contains(&t.as_str()) {
            bail!(
                "--target {t}: no such fuzz target; the targets are {}",
                TARGETS.join(", ")
            );
        }
    }
    setup::run(setup::Parts::TOOLCHAIN)?;
    ensure_cargo_fuzz()?;
    let dir = crate::workspace_root().join("fuzz");
    eprintln!("==> build the fuzz targets (nightly, sanitizers)");
    cmd::run(
        Command::new("cargo")
            .current_dir(&dir)
            .args(["+nightly", "fuzz", "build", "-O"]),
    )?;
    let chosen: Vec<&str> = if options.targets.is_empty() {
        TARGETS.to_vec()
    } else {
        options.targets.iter().map(String::as_str).collect()
    };
    let mut rows = Vec::new();
    for target in chosen {
        eprintln!("==> fuzz {target} for {} s", options.seconds);
        let corpus = dir.join("corpus").join(target);
        fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
        let seeds = dir.join("seeds").join(target);
        let out = Command::new("cargo")
            .current_dir(&dir)
            .args(["+nightly", "fuzz", "run", "-O", target])
            .arg(&corpus)
            .arg(&seeds)
            .args([
                "--",
                &format!("-max_total_time={}", options.seconds),
                "-rss_limit_mb=2048",
                &format!("-timeout={}", timeout(target)),
                "-print_final_stats=1",
            ])
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running cargo fuzz for {target}"))?;
        let log = String::from_utf8_lossy(&out.stderr);
        let outcome = outcome(&log, out.status.success());
        if let Some(finding) = &outcome.finding {
            eprintln!("{log}");
            eprintln!("    FINDING: {finding}");
        } else {
            eprintln!("    ok: {} executions", outcome.runs);
        }
        rows.push((target, outcome));
    }
    println!("| target | seconds | executions | findings |\n|---|---|---|---|");
    for (target, o) in &rows {
        println!(
            "| {target} | {} | {} | {} |",
            options.seconds,
            o.runs,
            o.finding.as_deref().unwrap_or("none")
        );
    }
    let found: Vec<&str> = rows
        .iter()
        .filter(|(_, o)| o.finding.is_some())
        .map(|(t, _)| *t)
        .collect();
    if !found.is_empty() {
        bail!(
            "fuzzing found crashes in {}; the inputs are in fuzz/artifacts/<target>/ (reproduce with `cargo +nightly fuzz run <target> <file>` in fuzz/)",
            found.join(", ")
        );
    }
    Ok(())
}

/// Executions and the finding, from libFuzzer's output.
fn outcome(log: &str, success: bool) -> Outcome {
    let runs = log
        .lines()
        .rev()
        .find_map(|l| {
            let rest = l.trim().strip_prefix("stat::number_of_executed_units:")?;
            rest.trim().parse().ok()
        })
        .or_else(|| {
            log.lines().rev().find_map(|l| {
                let rest = l.trim().strip_prefix("Done ")?;
                rest.split_whitespace().next()?.parse().ok()
            })
        })
        .unwrap_or(0);
    let finding = if success {
        None
    } else {
        Some(
            log.lines()
                .find(|l| l.contains("SUMMARY:") || l.contains("panicked at"))
                .or_else(|| log.lines().find(|l| l.contains("==ERROR")))
                .unwrap_or("libFuzzer exited with an error")
                .trim()
                .to_owned(),
        )
    };
    Outcome { runs, finding }
}

/// Install cargo-fuzz if `cargo fuzz` is not there.
fn ensure_cargo_fuzz() -> Result<()> {
    eprintln!("==> cargo-fuzz");
    let home = setup::cargo_home()?;
    if Path::new(&home.join("bin/cargo-fuzz")).exists() {
        eprintln!("    ok (already installed)");
        return Ok(());
    }
    eprintln!("    not installed: installing cargo-fuzz {CARGO_FUZZ_VERSION}");
    cmd::run(Command::new("cargo").args([
        "install",
        "cargo-fuzz",
        "--locked",
        "--version",
        CARGO_FUZZ_VERSION,
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_executions_and_findings() {
        let clean = "#1024 pulse cov: 10\nDone 123456 runs in 21 second(s)\nstat::number_of_executed_units: 123457\n";
        assert_eq!(
            outcome(clean, true),
            Outcome {
                runs: 123_457,
                finding: None
            }
        );
        let crash = "INFO: seed\nthread '<unnamed>' panicked at src/x.rs:1:1:\nboom\n==1==ERROR: libFuzzer: deadly signal\nSUMMARY: libFuzzer: deadly signal\n";
        let o = outcome(crash, false);
        assert_eq!(o.runs, 0);
        assert_eq!(
            o.finding.as_deref(),
            Some("thread '<unnamed>' panicked at src/x.rs:1:1:")
        );
    }

    #[test]
    fn every_target_has_a_file_and_seeds() {
        let dir = crate::workspace_root().join("fuzz");
        let manifest = fs::read_to_string(dir.join("Cargo.toml")).expect("fuzz/Cargo.toml");
        for target in TARGETS {
            assert!(
                dir.join(format!("fuzz_targets/{target}.rs")).exists(),
                "{target}"
            );
            assert!(
                manifest.contains(&format!("name = \"{target}\"")),
                "{target}"
            );
            let seeds = fs::read_dir(dir.join("seeds").join(target)).map_or(0, Iterator::count);
            assert!(seeds > 0, "fuzz/seeds/{target} has no seed");
        }
    }
}
