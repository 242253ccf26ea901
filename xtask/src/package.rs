//! `cargo xtask package`: the Debian package, made by cargo-deb from
//! `[package.metadata.deb]` in `geoip-user/Cargo.toml`.
//!
//! The release binary (with the kernel program embedded) is built first;
//! then what the package installs beside it is generated into
//! `<target>/release/package/`: the manual page and the completion scripts
//! (from the binary itself, so they match its flags), the systemd unit with
//! the packaged binary's path, and the list of the Rust crates linked into
//! the binary with their licences. `cargo deb --no-build` then writes
//! `<target>/debian/geoip-exporter_<version>-1_<arch>.deb`.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::{build, cmd, setup};

/// Where the repository's unit runs the binary (installed by hand).
const HAND_INSTALLED: &str = "ExecStart=/usr/local/bin/geoip-exporter ";
/// Where the package puts it.
const PACKAGED: &str = "ExecStart=/usr/bin/geoip-exporter ";

/// Builds the binary and the package; prints and returns the path of the
/// `.deb`.
pub(crate) fn run() -> Result<PathBuf> {
    setup::run(setup::Parts::PACKAGING)?;
    let binary = build::release()?;
    of_binary(&binary)
}

/// Packages `binary` (the release build, `<target>/release/geoip-exporter`,
/// which cargo-deb takes from there); prints and returns the `.deb`'s path.
pub(crate) fn of_binary(binary: &Path) -> Result<PathBuf> {
    // Without it cargo-deb only warns, and the package declares no
    // dependencies.
    if cmd::which("dpkg-shlibdeps").is_none() {
        bail!(
            "dpkg-shlibdeps is not installed; cargo-deb needs it to work out the package's dependencies: apt-get install dpkg-dev (or run cargo xtask setup as root)"
        );
    }
    let staging = crate::target_dir().join("release").join("package");
    eprintln!("==> generate the packaged files in {}", staging.display());
    fs::create_dir_all(&staging).with_context(|| format!("cannot create {}", staging.display()))?;
    let root = crate::workspace_root();

    let from_binary = |args: &[&str], file: &str| -> Result<()> {
        let text = cmd::stdout(Command::new(binary).args(args))?;
        write(&staging.join(file), &text)
    };
    from_binary(&["--man-page"], "geoip-exporter.8")?;
    // Debian policy: manual pages compressed (cargo-deb leaves files under
    // target/ as they are). -n: no name or time stamp, the same bytes for
    // the same page.
    cmd::run(
        Command::new("gzip")
            .args(["-9", "-n", "-f"])
            .arg(staging.join("geoip-exporter.8")),
    )?;
    from_binary(&["--completions", "bash"], "geoip-exporter.bash")?;
    from_binary(&["--completions", "zsh"], "_geoip-exporter")?;
    from_binary(&["--completions", "fish"], "geoip-exporter.fish")?;

    let unit_path = root.join("deploy/systemd/geoip-exporter.service");
    let unit = fs::read_to_string(&unit_path)
        .with_context(|| format!("cannot read {}", unit_path.display()))?;
    write(
        &staging.join("geoip-exporter.service"),
        &packaged_unit(&unit)?,
    )?;

    let metadata = cmd::stdout(Command::new("cargo").current_dir(root).args([
        "metadata",
        "--format-version",
        "1",
        "--locked",
        "--filter-platform",
        host_triple()?.as_str(),
    ]))?;
    write(
        &staging.join("THIRD-PARTY.md"),
        &third_party(&metadata, "geoip-user")?,
    )?;

    let changelog = root.join("deploy/debian/changelog");
    let text = fs::read_to_string(&changelog)
        .with_context(|| format!("cannot read {}", changelog.display()))?;
    let want = format!("{}-1", env!("CARGO_PKG_VERSION"));
    let newest = newest_entry(&text);
    if newest != Some(want.as_str()) {
        bail!(
            "the newest entry of {} is for {}, but the package is {want}: add an entry for it \
             (it is the package's changelog.Debian.gz)",
            changelog.display(),
            newest.unwrap_or("nothing")
        );
    }

    eprintln!("==> cargo deb");
    let out_dir = crate::target_dir().join("debian");
    let printed = cmd::stdout(
        Command::new("cargo")
            .current_dir(root)
            .args(["deb", "-p", "geoip-user", "--no-build", "--output"])
            .arg(&out_dir),
    )?;
    let deb = printed
        .lines()
        .rev()
        .map(str::trim)
        .map(PathBuf::from)
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .with_context(|| format!("cargo deb printed no .deb path:\n{printed}"))?;
    if !deb.is_file() {
        bail!("cargo deb reported {} but it does not exist", deb.display());
    }
    println!("{}", deb.display());
    Ok(deb)
}

fn write(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// The version of a Debian changelog's first entry: `pkg (VERSION) ...`.
fn newest_entry(changelog: &str) -> Option<&str> {
    let line = changelog.lines().find(|l| !l.trim().is_empty())?;
    let (_, rest) = line.split_once(" (")?;
    rest.split_once(')').map(|(version, _)| version)
}

/// The target triple of this machine, from `rustc -vV`.
fn host_triple() -> Result<String> {
    let version = cmd::stdout(Command::new("rustc").arg("-vV"))?;
    version
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(|h| h.trim().to_owned())
        .context("`rustc -vV` printed no host: line")
}

/// The repository's unit as the package installs it: the binary in
/// `/usr/bin`, and the comment on installing it by hand replaced.
fn packaged_unit(unit: &str) -> Result<String> {
    if unit.matches(HAND_INSTALLED).count() != 1 {
        bail!("the unit has no single `{HAND_INSTALLED}` line to point at /usr/bin");
    }
    let mut out = String::with_capacity(unit.len());
    let mut skipping = false;
    let mut replaced = false;
    for line in unit.lines() {
        if line.starts_with("# Install by hand") {
            skipping = true;
            replaced = true;
            out.push_str(
                "# Installed by the geoip-exporter Debian package. Its flags are in\n\
                 # /etc/default/geoip-exporter; `sudo geoip-exporter check` checks this host\n\
                 # with them; then: systemctl enable --now geoip-exporter\n",
            );
            continue;
        }
        if skipping {
            if line == "#" {
                skipping = false;
            } else {
                continue;
            }
        }
        out.push_str(&line.replace(HAND_INSTALLED, PACKAGED));
        out.push('\n');
    }
    if !replaced || out.contains("/usr/local") {
        bail!(
            "the unit's `# Install by hand` comment block was not found, or /usr/local remains; update packaged_unit() with the unit"
        );
    }
    Ok(out)
}

#[derive(Deserialize)]
struct Metadata {
    packages: Vec<Package>,
    resolve: Resolve,
}

#[derive(Deserialize)]
struct Package {
    id: String,
    name: String,
    version: String,
    license: Option<String>,
    source: Option<String>,
}

#[derive(Deserialize)]
struct Resolve {
    nodes: Vec<Node>,
}

#[derive(Deserialize)]
struct Node {
    id: String,
    deps: Vec<NodeDep>,
}

#[derive(Deserialize)]
struct NodeDep {
    pkg: String,
    dep_kinds: Vec<DepKind>,
}

#[derive(Deserialize)]
struct DepKind {
    /// `null` for a normal dependency, else "dev" or "build".
    kind: Option<String>,
}

/// `THIRD-PARTY.md`: every crate from a registry that `root` links (its
/// normal dependencies, transitively; not build scripts' or tests'), with
/// its licence.
fn third_party(metadata_json: &str, root: &str) -> Result<String> {
    let metadata: Metadata =
        serde_json::from_str(metadata_json).context("cannot parse `cargo metadata` output")?;
    let packages: BTreeMap<&str, &Package> = metadata
        .packages
        .iter()
        .map(|p| (p.id.as_str(), p))
        .collect();
    let nodes: BTreeMap<&str, &Node> = metadata
        .resolve
        .nodes
        .iter()
        .map(|n| (n.id.as_str(), n))
        .collect();
    let start = metadata
        .packages
        .iter()
        .find(|p| p.name == root && p.source.is_none())
        .with_context(|| format!("`cargo metadata` lists no workspace package {root}"))?;
    let mut seen = BTreeSet::new();
    let mut todo = vec![start.id.as_str()];
    while let Some(id) = todo.pop() {
        if !seen.insert(id) {
            continue;
        }
        let node = nodes
            .get(id)
            .with_context(|| format!("`cargo metadata` has no resolve node for {id}"))?;
        for dep in &node.deps {
            if dep.dep_kinds.iter().any(|k| k.kind.is_none()) {
                todo.push(dep.pkg.as_str());
            }
        }
    }
    let mut rows: Vec<(&str, &str, &str)> = Vec::new();
    for id in seen {
        let package = packages
            .get(id)
            .with_context(|| format!("`cargo metadata` has no package {id}"))?;
        if package.source.is_none() {
            continue; // this workspace's own crates
        }
        let license = package
            .license
            .as_deref()
            .with_context(|| format!("{} {} declares no licence", package.name, package.version))?;
        rows.push((&package.name, &package.version, license));
    }
    rows.sort_unstable();
    let mut text = String::from(
        "# Rust crates linked into /usr/bin/geoip-exporter\n\n\
         Each keeps its own licence (SPDX expressions, as each crate declares them).\n\
         Their full texts are in each crate's source, e.g. `cargo vendor` of this\n\
         version's source tree; the Apache-2.0 text is in\n\
         /usr/share/common-licenses/Apache-2.0, the MIT terms in LICENSE-MIT here.\n\n\
         | crate | version | licence |\n|---|---|---|\n",
    );
    for (name, version, license) in &rows {
        let _ = writeln!(text, "| {name} | {version} | {license} |");
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_packaged_unit_runs_usr_bin_and_drops_the_by_hand_comment() {
        let unit = fs::read_to_string(
            crate::workspace_root().join("deploy/systemd/geoip-exporter.service"),
        )
        .expect("the unit");
        let packaged = packaged_unit(&unit).expect("packaged");
        assert!(packaged.contains("\nExecStart=/usr/bin/geoip-exporter $GEOIP_EXPORTER_ARGS\n"));
        assert!(!packaged.contains("/usr/local") && !packaged.contains("install -m"));
        assert!(packaged.contains("# Installed by the geoip-exporter Debian package."));
        // Everything but the comment and the path is the same unit.
        let settings = |text: &str| -> Vec<String> {
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .map(|l| l.replace("/usr/local/bin/", "/usr/bin/"))
                .collect()
        };
        assert_eq!(settings(&unit), settings(&packaged));
        assert!(packaged_unit(&unit.replace("# Install by hand", "# Install")).is_err());
    }

    #[test]
    fn the_changelog_names_this_version() {
        assert_eq!(
            newest_entry("\ngeoip-exporter (1.2.3-1) unstable; urgency=medium\n"),
            Some("1.2.3-1")
        );
        assert_eq!(newest_entry("nonsense"), None);
        let text = fs::read_to_string(crate::workspace_root().join("deploy/debian/changelog"))
            .expect("changelog");
        assert_eq!(
            newest_entry(&text),
            Some(format!("{}-1", env!("CARGO_PKG_VERSION")).as_str())
        );
    }

    #[test]
    fn third_party_follows_normal_dependencies_only() {
        let json = r#"{
          "packages": [
            {"id": "a", "name": "geoip-user", "version": "0.1.0", "license": "MIT", "source": null},
            {"id": "b", "name": "tokio", "version": "1.0.0", "license": "MIT", "source": "registry"},
            {"id": "c", "name": "mio", "version": "1.0.0", "license": "MIT", "source": "registry"},
            {"id": "d", "name": "cc", "version": "1.0.0", "license": "MIT OR Apache-2.0", "source": "registry"},
            {"id": "e", "name": "geoip-common", "version": "0.1.0", "license": "MIT", "source": null}
          ],
          "resolve": {"nodes": [
            {"id": "a", "deps": [
              {"pkg": "b", "dep_kinds": [{"kind": null}]},
              {"pkg": "d", "dep_kinds": [{"kind": "build"}]},
              {"pkg": "e", "dep_kinds": [{"kind": null}]}]},
            {"id": "b", "deps": [{"pkg": "c", "dep_kinds": [{"kind": null}]}]},
            {"id": "c", "deps": []},
            {"id": "d", "deps": []},
            {"id": "e", "deps": []}
          ]}
        }"#;
        let text = third_party(json, "geoip-user").expect("list");
        assert!(
            text.contains("| mio | 1.0.0 | MIT |\n| tokio | 1.0.0 | MIT |\n"),
            "{text}"
        );
        assert!(
            !text.contains("| cc ") && !text.contains("geoip-common"),
            "{text}"
        );
    }
}
