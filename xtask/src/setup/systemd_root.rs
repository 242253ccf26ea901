//! `<target>/systemd-root`: a minimal Debian of this machine's release with
//! systemd, made with debootstrap from the mirror this machine's apt uses.
//! The install test boots it with `systemd-nspawn` to run the packaged
//! service under systemd itself (systemd is not PID 1 on these machines).
//! Made once; the test boots it with `--volatile=overlay`, so it stays as
//! made.

use std::{fs, path::Path, process::Command};

use anyhow::{Context, Result, bail};

use super::{Report, ok, step};
use crate::cmd;

/// Packages besides debootstrap's minimal base: systemd as PID 1 and what
/// the package's maintainer scripts call.
const INCLUDE: &str = "systemd,systemd-sysv,dbus,init-system-helpers";

/// The finished root has this file (written last).
const STAMP: &str = ".geoip-systemd-root";

/// Makes the root unless it is there.
pub(super) fn ensure(root: bool, report: &mut Report) -> Result<()> {
    let dir = crate::target_dir().join("systemd-root");
    step(&format!(
        "{} (a Debian with systemd for the install test, debootstrap)",
        dir.display()
    ));
    if dir.join(STAMP).is_file() {
        ok("already made");
        return Ok(());
    }
    if !root {
        report.skip("debootstrap the systemd root", "needs root");
        return Ok(());
    }
    let release = fs::read_to_string("/etc/os-release").context("cannot read /etc/os-release")?;
    let codename = os_release_value(&release, "VERSION_CODENAME").context(
        "/etc/os-release has no VERSION_CODENAME: not a Debian release debootstrap knows",
    )?;
    let mirror = apt_mirror(Path::new("/etc/apt"), &codename)?;
    if dir.exists() {
        // A run that was cut short.
        fs::remove_dir_all(&dir).with_context(|| format!("cannot remove {}", dir.display()))?;
    }
    eprintln!("    making it (about two minutes)");
    cmd::run(
        Command::new("debootstrap")
            .arg("--variant=minbase")
            .arg(format!("--include={INCLUDE}"))
            .arg(&codename)
            .arg(&dir)
            .arg(&mirror),
    )?;
    fs::write(dir.join(STAMP), format!("{codename}\n"))
        .with_context(|| format!("cannot write {}", dir.join(STAMP).display()))?;
    ok(&format!("made ({codename})"));
    Ok(())
}

/// `KEY=value` (quotes removed) from os-release text.
fn os_release_value(text: &str, key: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .find(|v| !v.is_empty())
}

/// The URI of the first apt source of `codename`'s main archive (deb822
/// `.sources` files first, then `sources.list` lines).
fn apt_mirror(apt: &Path, codename: &str) -> Result<String> {
    let mut texts = Vec::new();
    if let Ok(entries) = fs::read_dir(apt.join("sources.list.d")) {
        let mut paths: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for path in paths {
            if path.extension().is_some_and(|e| e == "sources") {
                texts.push((true, fs::read_to_string(&path).unwrap_or_default()));
            }
        }
    }
    texts.push((
        false,
        fs::read_to_string(apt.join("sources.list")).unwrap_or_default(),
    ));
    for (deb822, text) in &texts {
        let found = if *deb822 {
            deb822_mirror(text, codename)
        } else {
            one_line_mirror(text, codename)
        };
        if let Some(uri) = found {
            return Ok(uri);
        }
    }
    bail!(
        "no apt source of {codename} in {}: debootstrap needs a Debian mirror",
        apt.display()
    )
}

/// From deb822 stanzas: the URI of one with `Types: deb` and the suite.
fn deb822_mirror(text: &str, codename: &str) -> Option<String> {
    text.split("\n\n").find_map(|stanza| {
        let field = |name: &str| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
        };
        let types = field("Types")?;
        let suites = field("Suites")?;
        (types.split_whitespace().any(|t| t == "deb")
            && suites.split_whitespace().any(|s| s == codename))
        .then(|| field("URIs"))
        .flatten()
        .and_then(|uris| uris.split_whitespace().next())
        .map(str::to_owned)
    })
}

/// From `deb [options] URI SUITE COMPONENTS` lines.
fn one_line_mirror(text: &str, codename: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let mut words = line.split_whitespace().filter(|w| !w.starts_with('['));
        if words.next()? != "deb" {
            return None;
        }
        let uri = words.next()?;
        (words.next()? == codename).then(|| uri.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_mirror_of_the_release() {
        let deb822 = "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\n\
                      Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n";
        assert_eq!(
            deb822_mirror(deb822, "bookworm").as_deref(),
            Some("http://mirror.example/debian")
        );
        assert_eq!(deb822_mirror(deb822, "trixie"), None);
        assert_eq!(
            deb822_mirror(
                "Types: deb-src\nURIs: http://x/\nSuites: bookworm\n",
                "bookworm"
            ),
            None
        );
        let list = "# deb http://old/ bookworm main\ndeb-src http://src/ bookworm main\n\
                    deb [arch=amd64] http://mirror.example/debian bookworm main\n";
        assert_eq!(
            one_line_mirror(list, "bookworm").as_deref(),
            Some("http://mirror.example/debian")
        );
        assert_eq!(
            os_release_value(
                "NAME=\"Debian\"\nVERSION_CODENAME=bookworm\n",
                "VERSION_CODENAME"
            )
            .as_deref(),
            Some("bookworm")
        );
    }
}
