//! Debian's cloud kernels, fetched as packages through apt with sources,
//! lists, status, cache and preferences of its own (under
//! `target/vm/apt`, given as `-o` options, which override every
//! configuration file; `/etc/apt` untouched) against the Debian mirror this
//! machine's apt already uses, unpacked (no install) under
//! `target/vm/kernels`. The machine's own apt.conf.d still applies (its
//! proxy, authentication and validity settings for that mirror). Offline,
//! the newest kernel of each line already unpacked is used.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result};

use crate::cmd;

/// A kernel line the matrix boots: the newest package of it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Line {
    /// `5.10`.
    pub(crate) name: &'static str,
    /// The Debian suite whose security updates carry it.
    suite: &'static str,
    /// Package names are `<prefix><number><suffix>`; the highest number is
    /// the newest.
    prefix: &'static str,
    suffix: &'static str,
    /// Who ships it, for the README.
    pub(crate) shipped_by: &'static str,
}

pub(crate) const LINES: [Line; 3] = [
    Line {
        name: "5.10",
        suite: "bullseye-security",
        prefix: "linux-image-5.10.0-",
        suffix: "-cloud-amd64",
        shipped_by: "Debian 11 (bullseye); Amazon Linux 2 (kernel-5.10)",
    },
    Line {
        name: "6.1",
        suite: "bookworm-security",
        prefix: "linux-image-6.1.0-",
        suffix: "-cloud-amd64",
        shipped_by: "Debian 12 (bookworm); Amazon Linux 2023 (6.1)",
    },
    Line {
        name: "6.12",
        suite: "trixie-security",
        prefix: "linux-image-6.12.",
        suffix: "+deb13-cloud-amd64",
        shipped_by: "Debian 13 (trixie)",
    },
];

impl Line {
    /// The number in `package` if it is of this line.
    fn number(&self, package: &str) -> Option<u32> {
        package
            .strip_prefix(self.prefix)?
            .strip_suffix(self.suffix)?
            .parse()
            .ok()
    }

    /// The newest package of this line among `packages`.
    fn newest<'a>(&self, packages: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
        packages
            .into_iter()
            .filter_map(|p| Some((self.number(p)?, p)))
            .max_by_key(|(n, _)| *n)
            .map(|(_, p)| p)
    }
}

/// A kernel ready to boot.
#[derive(Clone, Debug)]
pub(crate) struct Kernel {
    pub(crate) line: Line,
    /// `uname -r`: `5.10.0-46-cloud-amd64`.
    pub(crate) release: String,
    /// Where the package is unpacked (`boot/`, `lib/modules/`).
    pub(crate) root: PathBuf,
}

impl Kernel {
    pub(crate) fn vmlinuz(&self) -> PathBuf {
        self.root
            .join("boot")
            .join(format!("vmlinuz-{}", self.release))
    }

    pub(crate) fn modules(&self) -> PathBuf {
        self.root.join("lib/modules").join(&self.release)
    }
}

/// The newest kernel of each of `lines`, fetched and unpacked under `dir`
/// (kept there: a second run fetches nothing it has).
pub(crate) fn fetch(lines: &[Line], dir: &Path) -> Result<Vec<Kernel>> {
    let apt = Apt::new(&dir.join("apt"), lines)?;
    let names = match apt.update().and_then(|()| apt.package_names()) {
        Ok(names) => names,
        Err(err) => match cached(lines, &dir.join("kernels")) {
            Some(names) => {
                eprintln!(
                    "    warning: cannot update the kernel list ({err:#}); using the kernels unpacked before"
                );
                names
            }
            None => return Err(err),
        },
    };
    let mut kernels = Vec::new();
    for line in lines {
        let package = line.newest(names.iter().map(String::as_str)).with_context(|| {
            format!(
                "no {}<N>{} package in {}: is the mirror's security archive in this machine's apt sources?",
                line.prefix, line.suffix, line.suite
            )
        })?;
        let release = package.trim_start_matches("linux-image-").to_owned();
        let root = dir.join("kernels").join(&release);
        if !root
            .join("boot")
            .join(format!("vmlinuz-{release}"))
            .exists()
        {
            let deb = apt.download(package, &dir.join("debs"))?;
            unpack(&deb, &root, &release)?;
        }
        eprintln!("    kernel {}: {release}", line.name);
        kernels.push(Kernel {
            line: *line,
            release,
            root,
        });
    }
    Ok(kernels)
}

/// The package names of the kernels unpacked under `dir`, if every one
/// of `lines` has one.
fn cached(lines: &[Line], dir: &Path) -> Option<Vec<String>> {
    let names: Vec<String> = fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| e.path().join("boot").is_dir())
        .filter_map(|e| e.file_name().to_str().map(|n| format!("linux-image-{n}")))
        .collect();
    lines
        .iter()
        .all(|l| l.newest(names.iter().map(String::as_str)).is_some())
        .then_some(names)
}

/// `dpkg-deb -x` into `root` (through a scratch directory, so a cut run
/// leaves nothing half-unpacked), then `depmod`.
fn unpack(deb: &Path, root: &Path, release: &str) -> Result<()> {
    let scratch = root.with_file_name(format!("{release}.partial"));
    let _ = fs::remove_dir_all(&scratch);
    fs::create_dir_all(&scratch)?;
    cmd::run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&scratch))?;
    // Newer packages put the modules under usr/lib (merged /usr).
    if !scratch.join("lib").exists() && scratch.join("usr/lib").exists() {
        std::os::unix::fs::symlink("usr/lib", scratch.join("lib"))?;
    }
    cmd::run(Command::new("depmod").arg("-b").arg(&scratch).arg(release))?;
    let _ = fs::remove_dir_all(root);
    fs::rename(&scratch, root).with_context(|| format!("moving {} into place", scratch.display()))
}

/// apt with directories of its own.
struct Apt {
    /// `-o` options, each `Name=value`.
    options: Vec<String>,
}

impl Apt {
    /// Write the configuration: the security suites of `lines` from the
    /// mirror this machine's apt uses for its own security updates.
    fn new(dir: &Path, lines: &[Line]) -> Result<Self> {
        let mirror = security_mirror()?;
        for sub in ["state/lists/partial", "cache/archives/partial", "etc/parts"] {
            fs::create_dir_all(dir.join(sub))?;
        }
        fs::write(dir.join("state/status"), "")?;
        let mut sources = String::new();
        for line in lines {
            writeln!(
                sources,
                "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {mirror} {} main",
                line.suite
            )?;
        }
        fs::write(dir.join("etc/sources.list"), sources)?;
        fs::write(dir.join("etc/preferences"), "")?;
        let d = dir.display();
        let options = [
            format!("Dir::State={d}/state"),
            format!("Dir::State::status={d}/state/status"),
            format!("Dir::Cache={d}/cache"),
            format!("Dir::Etc::SourceList={d}/etc/sources.list"),
            format!("Dir::Etc::SourceParts={d}/etc/parts"),
            format!("Dir::Etc::Preferences={d}/etc/preferences"),
            format!("Dir::Etc::PreferencesParts={d}/etc/parts"),
            "APT::Architecture=amd64".to_owned(),
            "Acquire::Languages=none".to_owned(),
            "APT::Sandbox::User=root".to_owned(),
        ];
        Ok(Self {
            options: options.to_vec(),
        })
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        for option in &self.options {
            c.arg("-o").arg(option);
        }
        c
    }

    fn update(&self) -> Result<()> {
        cmd::run(self.command("apt-get").args(["-q", "update"]))
    }

    fn package_names(&self) -> Result<Vec<String>> {
        let text = cmd::stdout(self.command("apt-cache").args(["pkgnames", "linux-image-"]))?;
        Ok(text.lines().map(str::to_owned).collect())
    }

    /// Download `package`'s `.deb` into `into`; its path.
    fn download(&self, package: &str, into: &Path) -> Result<PathBuf> {
        fs::create_dir_all(into)?;
        cmd::run(
            self.command("apt-get")
                .current_dir(into)
                .args(["-q", "download", package]),
        )?;
        let prefix = format!("{package}_");
        fs::read_dir(into)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| {
                p.extension().is_some_and(|e| e == "deb")
                    && p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(&prefix))
            })
            .with_context(|| {
                format!(
                    "apt-get download {package} left no .deb in {}",
                    into.display()
                )
            })
    }
}

/// The URI of the mirror this machine's apt takes its security updates
/// from (`*-security` in `/etc/apt/sources.list.d/*.sources` or
/// `/etc/apt/sources.list`).
fn security_mirror() -> Result<String> {
    let mut texts = Vec::new();
    if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
        for entry in dir.filter_map(Result::ok) {
            let path = entry.path();
            if path
                .extension()
                .is_some_and(|e| e == "sources" || e == "list")
            {
                texts.push(fs::read_to_string(&path).unwrap_or_default());
            }
        }
    }
    texts.push(fs::read_to_string("/etc/apt/sources.list").unwrap_or_default());
    texts
        .iter()
        .find_map(|t| security_uri(t))
        .context("this machine's apt has no *-security source to take Debian's kernels from; add one (deb822 .sources or sources.list)")
}

/// The URI of the first `*-security` source in `text`: deb822 stanzas
/// (`URIs:` and `Suites:`) or one-line `deb URI SUITE ...` entries.
fn security_uri(text: &str) -> Option<String> {
    let is_security = |suite: &str| suite.ends_with("-security");
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
        };
        if let (Some(uris), Some(suites)) = (field("URIs:"), field("Suites:"))
            && suites.split_whitespace().any(is_security)
            && let Some(uri) = uris.split_whitespace().next()
        {
            return Some(uri.to_owned());
        }
    }
    text.lines().find_map(|line| {
        let mut words = line
            .split_whitespace()
            .filter(|w| !(w.starts_with('[') || w.ends_with(']')));
        (words.next()? == "deb").then_some(())?;
        let uri = words.next()?;
        is_security(words.next()?).then(|| uri.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_package_of_each_line_is_chosen() {
        let names = [
            "linux-image-5.10.0-9-cloud-amd64",
            "linux-image-5.10.0-46-cloud-amd64",
            "linux-image-5.10.0-46-amd64",
            "linux-image-5.10.0-46-cloud-amd64-dbg",
            "linux-image-6.1.0-57-cloud-amd64",
            "linux-image-6.12.118+deb13-cloud-amd64",
            "linux-image-6.12.9+deb13-cloud-amd64",
            "linux-image-6.12.118+deb12-cloud-amd64",
        ];
        let newest: Vec<_> = LINES.iter().map(|l| l.newest(names)).collect();
        assert_eq!(
            newest,
            [
                Some("linux-image-5.10.0-46-cloud-amd64"),
                Some("linux-image-6.1.0-57-cloud-amd64"),
                Some("linux-image-6.12.118+deb13-cloud-amd64"),
            ]
        );
    }

    #[test]
    fn the_security_mirror_is_read_from_either_format() {
        let deb822 = "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n\n\
                      Types: deb\nURIs: http://mirror.example/security\nSuites: bookworm-security\nComponents: main\n";
        assert_eq!(
            security_uri(deb822).as_deref(),
            Some("http://mirror.example/security")
        );
        let list = "deb http://mirror.example/debian bookworm main\n\
                    deb [signed-by=/k.gpg] http://mirror.example/sec bookworm-security main\n";
        assert_eq!(
            security_uri(list).as_deref(),
            Some("http://mirror.example/sec")
        );
        assert_eq!(security_uri("deb http://x/debian bookworm main\n"), None);
    }
}
