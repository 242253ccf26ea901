//! `cargo xtask run -- [exporter flags]`: build, then replace this process
//! with the exporter (under `sudo -E` when not root), so its exit code is
//! the command's.

use std::{ffi::OsString, os::unix::process::CommandExt, path::Path, process::Command};

use anyhow::{Result, bail};
use clap::Args;

use crate::{build, cmd, fetch_db, setup};

/// The flag that names the `GeoIP` database.
const DATABASE_FLAG: &str = "--geoip.database";

#[derive(Debug, Args)]
pub(crate) struct Options {
    /// Flags for geoip-exporter (after `--`). Without --geoip.database, the
    /// default database data/dbip-country.mmdb is used (fetched if absent).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<OsString>,
}

pub(crate) fn run(options: Options) -> Result<()> {
    let binary = build::release()?;
    let root = crate::is_root();
    if root {
        setup::run(setup::Parts::KERNEL)?;
    }
    let mut args = options.args;
    if !has_database_flag(&args) {
        let source = fetch_db::Source::Dbip;
        let database = fetch_db::default_dir().join(source.file());
        if !database.exists() {
            eprintln!(
                "no {DATABASE_FLAG} given and {} is absent: fetching it",
                database.display()
            );
            fetch_db::fetch(source, &fetch_db::default_dir(), false)?;
        }
        args.push(DATABASE_FLAG.into());
        args.push(database.into_os_string());
    }
    let mut exporter = if root {
        let mut exporter = Command::new(&binary);
        exporter.args(&args);
        exporter
    } else {
        sudo(&binary, &args)?
    };
    let line = cmd::announce(&exporter);
    let error = exporter.exec();
    bail!("cannot start `{line}`: {error}")
}

/// `sudo -E <binary> <args>`, or an error saying what the exporter needs.
fn sudo(binary: &Path, args: &[OsString]) -> Result<Command> {
    let Some(sudo) = cmd::which("sudo") else {
        bail!(
            "geoip-exporter needs root (or CAP_BPF and CAP_PERFMON) to load its eBPF program, \
             and sudo is not on PATH: run `cargo xtask run` as root, or run {} with those \
             capabilities",
            binary.display()
        );
    };
    eprintln!("not root: running the exporter under sudo");
    let mut command = Command::new(sudo);
    command.arg("-E").arg(binary).args(args);
    Ok(command)
}

/// Whether the exporter flags name a database (`--geoip.database X` or
/// `--geoip.database=X`). Flags after a bare `--` are positional, not flags.
fn has_database_flag(args: &[OsString]) -> bool {
    args.iter()
        .map(|arg| arg.to_string_lossy())
        .take_while(|arg| arg != "--")
        .any(|arg| {
            arg == DATABASE_FLAG
                || arg
                    .strip_prefix(DATABASE_FLAG)
                    .is_some_and(|rest| rest.starts_with('='))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn passes_exporter_flags_through_with_or_without_separator() {
        for line in [
            &[
                "run",
                "--",
                "--geoip.database=/x.mmdb",
                "--web.listen-address",
                ":9100",
            ][..],
            &[
                "run",
                "--geoip.database=/x.mmdb",
                "--web.listen-address",
                ":9100",
            ][..],
        ] {
            let cli = crate::tests::parse(line).expect("valid command line");
            let crate::Command::Run(options) = cli.command else {
                panic!("parsed {line:?} as {:?}", cli.command);
            };
            assert_eq!(
                options.args,
                args(&["--geoip.database=/x.mmdb", "--web.listen-address", ":9100"])
            );
        }
    }

    #[test]
    fn sees_database_flag_in_both_forms() {
        assert!(has_database_flag(&args(&["--geoip.database", "/x.mmdb"])));
        assert!(has_database_flag(&args(&[
            "--web.listen-address=:9100",
            "--geoip.database=/x.mmdb"
        ])));
    }

    #[test]
    fn ignores_lookalikes_and_positionals() {
        assert!(!has_database_flag(&args(&[])));
        assert!(!has_database_flag(&args(&["--geoip.database-reload=1m"])));
        assert!(!has_database_flag(&args(&[
            "--web.listen-address",
            ":9100"
        ])));
        assert!(!has_database_flag(&args(&[
            "--",
            "--geoip.database=/x.mmdb"
        ])));
    }
}
