//! Builds the kernel program (`geoip-ebpf`) for the BPF target with the
//! nightly toolchain and `bpf-linker`, into `OUT_DIR/geoip`, which
//! `src/kernel/probe.rs` embeds in the binary; and, first, the map page's country
//! shapes into `OUT_DIR/world.json` (`build/worldmap.rs`), which `src/web/page.rs`
//! embeds.

use std::{path::Path, process::Command};

use anyhow::{Context as _, anyhow};

#[path = "build/worldmap.rs"]
mod worldmap;

fn main() -> anyhow::Result<()> {
    stamp();
    let out_dir = std::env::var("OUT_DIR").context("OUT_DIR not set")?;
    worldmap::generate(Path::new(&out_dir))
        .context("generating the map's country shapes failed")?;
    if std::env::var_os("CARGO_FEATURE_FUZZING").is_some() {
        // Fuzz builds exercise parsers only and never load the program;
        // the BPF target cannot take the sanitizer flags they use.
        std::fs::write(Path::new(&out_dir).join("geoip"), b"")
            .context("writing the empty kernel object for fuzzing")?;
        return Ok(());
    }
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?;
    let workspace = Path::new(&manifest_dir)
        .parent()
        .ok_or_else(|| anyhow!("{manifest_dir} has no parent directory"))?;
    let ebpf_dir = workspace.join("geoip-ebpf");
    let common_dir = workspace.join("geoip-common");
    println!("cargo:rerun-if-changed={}", common_dir.display());
    let root_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow!("{} is not UTF-8", ebpf_dir.display()))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "geoip-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context("building the kernel program geoip-ebpf failed; `cargo xtask setup` installs what it needs (nightly rust-src, bpf-linker)")
}

/// The commit and the build date the binary reports (`--version`,
/// `geoip_exporter_build_info`), as `GEOIP_GIT_COMMIT` and
/// `GEOIP_BUILD_DATE`: the source tree's git commit (`unknown` outside a
/// checkout), and the UTC date of `SOURCE_DATE_EPOCH` (reproducible
/// builds, e.g. Debian's), else of today.
fn stamp() {
    let run = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .output()
            .ok()
            .filter(|out| out.status.success())
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .map(|text| text.trim().to_owned())
            .filter(|text| !text.is_empty())
    };
    let commit = run("git", &["rev-parse", "--short=12", "HEAD"]);
    println!(
        "cargo:rustc-env=GEOIP_GIT_COMMIT={}",
        commit.as_deref().unwrap_or("unknown")
    );
    // Built again when HEAD moves (a commit, a checkout).
    if let Some(git_dir) = run("git", &["rev-parse", "--absolute-git-dir"]) {
        // (A path that does not exist would rerun this script every build.)
        for path in ["HEAD", "refs/heads", "packed-refs"] {
            let path = Path::new(&git_dir).join(path);
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    let date = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(epoch) => run("date", &["-u", "-d", &format!("@{epoch}"), "+%Y-%m-%d"]),
        Err(_) => run("date", &["-u", "+%Y-%m-%d"]),
    };
    println!(
        "cargo:rustc-env=GEOIP_BUILD_DATE={}",
        date.as_deref().unwrap_or("unknown")
    );
}
