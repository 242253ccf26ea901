//! bpf-linker, built against the nightly toolchain's own `libLLVM.so` (see
//! `/work/shared/BUILDING-EBPF.md`): the machine has no system LLVM of the
//! version the nightly uses, so the linker is tied to that exact nightly.
//!
//! A stamp file next to the installed binary records the nightly's
//! `commit-hash`; the linker is reinstalled when the nightly changes, when the
//! binary no longer runs, or when it is not the pinned version.

use std::{
    fs, io,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result};

use super::{cargo_home, ok, step};
use crate::cmd;

/// The bpf-linker release this project builds with.
const VERSION: &str = "0.13.0";
/// The stamp file, in `$CARGO_HOME/bin`, holding the nightly's commit hash.
const STAMP: &str = ".bpf-linker-nightly";

/// What to do about the installed bpf-linker.
#[derive(Debug, PartialEq, Eq)]
enum Decision {
    /// It runs, is the pinned version and was built for this nightly.
    Current,
    /// It runs and is the pinned version, but nothing records its nightly:
    /// record the current one.
    WriteStamp,
    /// Install it (again), for the given reason.
    Install(String),
}

/// Decides from `bpf-linker --version` output (`None` when it did not run),
/// the stamp file's contents (`None` when absent) and the nightly's commit hash.
fn decide(version_output: Option<&str>, stamp: Option<&str>, nightly_commit: &str) -> Decision {
    let Some(version_output) = version_output else {
        return Decision::Install("not installed, or it does not run".to_owned());
    };
    let version = version_output.trim();
    if version != format!("bpf-linker {VERSION}") {
        return Decision::Install(format!("found `{version}`, want bpf-linker {VERSION}"));
    }
    match stamp.map(str::trim) {
        None => Decision::WriteStamp,
        Some(recorded) if recorded == nightly_commit => Decision::Current,
        Some(recorded) => Decision::Install(format!(
            "built for nightly {recorded}, the nightly is now {nightly_commit}"
        )),
    }
}

/// The facts about the nightly toolchain the install needs.
#[derive(Debug, PartialEq, Eq)]
struct Nightly {
    commit: String,
    llvm_major: String,
}

impl Nightly {
    /// Parses `rustc +nightly -vV` output.
    fn parse(version_verbose: &str) -> Result<Self> {
        let field = |name: &str| {
            version_verbose
                .lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
                .filter(|value| !value.is_empty())
                .with_context(|| {
                    format!("`rustc +nightly -vV` printed no `{name}:` line:\n{version_verbose}")
                })
        };
        let commit = field("commit-hash")?.to_owned();
        let llvm = field("LLVM version")?;
        let llvm_major = llvm
            .split('.')
            .next()
            .filter(|major| !major.is_empty() && major.bytes().all(|b| b.is_ascii_digit()))
            .with_context(|| format!("cannot read the LLVM major version from `{llvm}`"))?
            .to_owned();
        Ok(Self { commit, llvm_major })
    }
}

/// Makes sure a bpf-linker built for the current nightly is installed.
pub(super) fn ensure() -> Result<()> {
    step(&format!(
        "bpf-linker {VERSION} built for the current nightly"
    ));
    let nightly = Nightly::parse(&cmd::stdout(
        Command::new("rustc").args(["+nightly", "-vV"]),
    )?)?;
    let bin_dir = cargo_home()?.join("bin");
    let binary = bin_dir.join("bpf-linker");
    let stamp_path = bin_dir.join(STAMP);

    let version_output = if binary.exists() {
        match cmd::stdout(Command::new(&binary).arg("--version")) {
            Ok(output) => Some(output),
            Err(error) => {
                eprintln!("    {} does not run: {error:#}", binary.display());
                None
            }
        }
    } else {
        eprintln!("    {} does not exist", binary.display());
        None
    };
    let stamp = read_stamp(&stamp_path)?;

    match decide(version_output.as_deref(), stamp.as_deref(), &nightly.commit) {
        Decision::Current => {
            ok(&format!("already built for nightly {}", nightly.commit));
            return Ok(());
        }
        Decision::WriteStamp => {
            eprintln!(
                "    it runs, but {} is missing: recording nightly {}",
                stamp_path.display(),
                nightly.commit
            );
        }
        Decision::Install(reason) => {
            eprintln!("    {reason}: installing it (about a minute)");
            install(&nightly, &bin_dir)?;
            let version = cmd::stdout(Command::new(&binary).arg("--version"))
                .context("the freshly installed bpf-linker does not run")?;
            eprintln!("    installed: {}", version.trim());
        }
    }
    fs::write(&stamp_path, format!("{}\n", nightly.commit))
        .with_context(|| format!("cannot write the stamp file {}", stamp_path.display()))?;
    ok(&format!("recorded in {}", stamp_path.display()));
    Ok(())
}

fn read_stamp(path: &Path) -> Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(contents) => Ok(Some(contents)),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error)
            .with_context(|| format!("cannot read the stamp file {}; remove it", path.display())),
    }
}

/// `cargo install bpf-linker` linked against the nightly's `libLLVM.so`.
fn install(nightly: &Nightly, bin_dir: &Path) -> Result<()> {
    let sysroot = cmd::stdout(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let lib = PathBuf::from(sysroot.trim()).join("lib");
    let llvm_so = find_llvm_so(&lib)?;
    let root = bin_dir.parent().unwrap_or(bin_dir);
    let target_dir = crate::workspace_root().join("target").join("bpf-linker");
    cmd::run(&mut install_command(
        &nightly.llvm_major,
        &lib,
        &llvm_so,
        root,
        &target_dir,
    ))
}

/// The install command of the recipe: no default features (they pick an LLVM
/// version), `no-llvm-linking` (else it links the system's LLVM), and
/// RUSTFLAGS that link and find the nightly's `libLLVM.so` at run time.
fn install_command(
    llvm_major: &str,
    lib: &Path,
    llvm_so: &str,
    root: &Path,
    target_dir: &Path,
) -> Command {
    let lib = lib.display();
    let mut cargo = Command::new("cargo");
    cargo
        .current_dir(root)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env(
            "RUSTFLAGS",
            format!("-L native={lib} -l dylib:+verbatim={llvm_so} -C link-arg=-Wl,-rpath,{lib}"),
        )
        .arg("install")
        .arg(format!("bpf-linker@{VERSION}"))
        .args(["--locked", "--force", "--no-default-features", "--features"])
        .arg(format!("llvm-{llvm_major},no-llvm-linking"))
        .arg("--root")
        .arg(root)
        .arg("--target-dir")
        .arg(target_dir);
    cargo
}

/// The nightly's `libLLVM.so.*` file name in its sysroot's `lib`.
fn find_llvm_so(lib: &Path) -> Result<String> {
    let entries = fs::read_dir(lib).with_context(|| {
        format!(
            "cannot list the nightly's library directory {}",
            lib.display()
        )
    })?;
    let mut names: Vec<String> = entries
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with("libLLVM.so."))
        .collect();
    names.sort();
    names.into_iter().next().with_context(|| {
        format!(
            "the nightly toolchain ships no libLLVM.so.* in {}; bpf-linker cannot be built \
             against it (install a bpf-linker matching the nightly's LLVM by hand)",
            lib.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMMIT: &str = "e50aa6fba4e63ab34c72bf9acfd2c307c1155d1a";

    #[test]
    fn current_when_stamp_matches() {
        let stamp = format!("{COMMIT}\n");
        assert_eq!(
            decide(Some("bpf-linker 0.13.0\n"), Some(&stamp), COMMIT),
            Decision::Current
        );
    }

    #[test]
    fn writes_stamp_when_it_runs_without_one() {
        assert_eq!(
            decide(Some("bpf-linker 0.13.0\n"), None, COMMIT),
            Decision::WriteStamp
        );
    }

    #[test]
    fn reinstalls_for_another_nightly_a_broken_binary_or_another_version() {
        let other = decide(Some("bpf-linker 0.13.0"), Some("0123abc\n"), COMMIT);
        assert!(
            matches!(&other, Decision::Install(why) if why.contains("0123abc") && why.contains(COMMIT)),
            "{other:?}"
        );
        assert!(matches!(
            decide(None, Some(COMMIT), COMMIT),
            Decision::Install(_)
        ));
        let old = decide(Some("bpf-linker 0.9.13"), Some(COMMIT), COMMIT);
        assert!(
            matches!(&old, Decision::Install(why) if why.contains("0.9.13")),
            "{old:?}"
        );
    }

    #[test]
    fn install_command_follows_the_recipe() {
        let lib = Path::new("/r/toolchains/nightly/lib");
        let cargo = install_command(
            "22",
            lib,
            "libLLVM.so.22.1-rust-1.97.0-nightly",
            Path::new("/root/.cargo"),
            Path::new("/w/target/bpf-linker"),
        );
        assert_eq!(
            cmd::display(&cargo),
            "cd /root/.cargo && env -u CARGO_ENCODED_RUSTFLAGS RUSTFLAGS='-L \
             native=/r/toolchains/nightly/lib -l dylib:+verbatim=libLLVM.so.22.1-rust-1.97.0-nightly \
             -C link-arg=-Wl,-rpath,/r/toolchains/nightly/lib' cargo install bpf-linker@0.13.0 \
             --locked --force --no-default-features --features llvm-22,no-llvm-linking --root \
             /root/.cargo --target-dir /w/target/bpf-linker"
        );
    }

    #[test]
    fn parses_rustc_version_verbose() {
        let text = "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)\nbinary: rustc\n\
                    commit-hash: e50aa6fba4e63ab34c72bf9acfd2c307c1155d1a\n\
                    commit-date: 2026-05-19\nhost: x86_64-unknown-linux-gnu\n\
                    release: 1.97.0-nightly\nLLVM version: 22.1.4\n";
        assert_eq!(
            Nightly::parse(text).expect("valid output"),
            Nightly {
                commit: COMMIT.to_owned(),
                llvm_major: "22".to_owned()
            }
        );
        let error = Nightly::parse("rustc 1.97.0\ncommit-hash: abc\n").expect_err("no LLVM line");
        assert!(format!("{error:#}").contains("LLVM version"), "{error:#}");
    }
}
