//! `cargo xtask`: the developer workflow of geoip-exporter.
//!
//! # Layout
//!
//! - `main.rs`: the command line (clap) and paths shared by every subcommand.
//! - `cmd`: runs external commands, printing each one first; failures name the
//!   command line and its exit status.
//! - `setup`: idempotent machine preparation (nightly + `rust-src`, bpf-linker,
//!   Debian packages, tracefs/bpffs/BTF) and `ensure_path`.
//! - `build`: `cargo build -p geoip-user` after the toolchain checks.
//! - `run`: build, then exec the exporter (under sudo when needed).
//! - `test`: unit tests, then the end-to-end tests against the real kernel
//!   (the install test among them, on the package `package` builds).
//! - `package`: the Debian package (cargo-deb).
//! - `bench`: the load benchmark (`tests/benches/load.rs`).
//! - `soak`: a bounded churn run (`tests/benches/soak.rs`).
//! - `fuzz`: every fuzz target in `fuzz/` for a bounded time.
//! - `fetch_db`: download a free country database with the npm client;
//!   `mmdb_check` opens and verifies it.
//! - `layout`: the exporter's module graph and the rules it keeps (no
//!   circle, imports down the layout `geoip-user/src/lib.rs` gives).
//! - `vm`: the kernel matrix: the real-kernel suites inside Debian's
//!   kernels 5.10, 6.1 and 6.12 under qemu (`cargo xtask test` runs it).
//! - `civil`: calendar dates, the exporter's own file.

mod bench;
mod build;
/// Calendar dates, shared with the exporter (one file for both).
#[path = "../../geoip-user/src/civil.rs"]
mod civil;
mod cmd;
mod fetch_db;
mod fuzz;
mod layout;
mod mmdb_check;
mod package;
mod run;
mod setup;
mod test;
mod vm;

use std::{
    env,
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::{Parser, Subcommand};

/// Developer tasks for geoip-exporter.
#[derive(Debug, Parser)]
#[command(name = "xtask", bin_name = "cargo xtask", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check and install what building and testing need (idempotent; root for
    /// packages and mounts).
    Setup,
    /// Build the exporter (target/release/geoip-exporter).
    Build(build::Options),
    /// Build, then run the exporter; arguments after `--` go to it.
    Run(run::Options),
    /// Run the unit tests, then the end-to-end tests (root).
    Test(test::Options),
    /// Build the Debian package (target/debian/geoip-exporter_VERSION-1_ARCH.deb) with cargo-deb.
    Package,
    /// Download a free IP-to-country database (mmdb) into data/.
    FetchDb(fetch_db::Options),
    /// Load benchmark against the real kernel (root): churn and memory.
    Bench,
    /// Bounded churn run against the real kernel (root), with reconciles and database reloads: exact counts and no memory growth afterwards.
    Soak {
        /// How long to churn, 60 to 600 seconds.
        #[arg(long, default_value_t = 300)]
        seconds: u64,
    },
    /// Fuzz every parser of outside input (cargo-fuzz, nightly) for a bounded time each.
    Fuzz(fuzz::Options),
    /// Run the real-kernel suites inside Debian's kernels 5.10, 6.1 and 6.12 under qemu (root); print what passed where.
    VmTest(vm::Options),
    /// Print the exporter's module graph (top-level modules in layout order, what each imports) and check its rules: no import circle, imports only down the layout.
    Layout,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup => setup::run(setup::Parts::ALL),
        Command::Build(options) => build::run(&options).map(|_| ()),
        Command::Run(options) => run::run(options),
        Command::Test(options) => test::run(&options),
        Command::Package => package::run().map(|_| ()),
        Command::FetchDb(options) => fetch_db::run(&options),
        Command::Bench => bench::run(),
        Command::Soak { seconds } => bench::soak(seconds),
        Command::Fuzz(options) => fuzz::run(&options),
        Command::Layout => layout::run(),
        Command::VmTest(options) => vm::run(&options),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root: the parent of xtask's own manifest directory.
fn workspace_root() -> &'static Path {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir)
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` when set, else `<workspace>/target`.
fn target_dir() -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                // cargo resolves a relative CARGO_TARGET_DIR against its working
                // directory, which is ours.
                env::current_dir().map_or_else(|_| dir.clone(), |cwd| cwd.join(&dir))
            }
        }
        _ => workspace_root().join("target"),
    }
}

/// Whether this process runs with effective user id 0.
fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    pub(crate) fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("xtask").chain(args.iter().copied()))
    }

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn test_and_fetch_db_options() {
        assert!(parse(&["test", "--unit", "--", "geo::"]).is_ok());
        assert!(parse(&["test", "--unit", "--e2e"]).is_err());
        assert!(parse(&["fetch-db", "--source", "geo-whois-asn", "--force"]).is_ok());
        assert!(parse(&["fetch-db", "--source", "maxmind"]).is_err());
    }
}
