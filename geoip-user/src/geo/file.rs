//! Opening one database file: read it whole, check that it is a MaxMind
//! DB, and say what it is; and the errors of opening and looking up.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    sync::atomic::AtomicBool,
};

use maxminddb::{MaxMindDbError, Reader};

use super::tree;
use crate::{
    byte_size::ByteSize,
    memory_room,
    untrusted_file::{self, Bound, FileError},
};

#[derive(Debug, thiserror::Error)]
pub(crate) enum OpenError {
    #[error(
        "cannot open GeoIP database {}: no such file; get one (DB-IP Lite or geoipupdate: /etc/default/geoip-exporter and the README's \"Get a database\" say how; `cargo xtask fetch-db` in a source tree) or pass --geoip.database PATH",
        path.display()
    )]
    NotFound { path: PathBuf },
    #[error(
        "GeoIP database {} cannot be used: {why}; pass a regular .mmdb file of at most {} to --geoip.database",
        path.display(),
        ByteSize(MAX_DATABASE.max)
    )]
    Refused { path: PathBuf, why: FileError },
    #[error(
        "cannot read GeoIP database {}: it is {}, and {under} leaves room for {} only; raise the memory limit (a reload needs room for the new databases while the old ones serve; start-up logs how much) or use a smaller database",
        path.display(),
        ByteSize(*size),
        ByteSize(*room)
    )]
    NoMemory {
        path: PathBuf,
        size: u64,
        room: u64,
        under: memory_room::Limit,
    },
    #[error("cannot read GeoIP database {}; check the path and its permissions", path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        source: FileError,
    },
    #[error(
        "reading GeoIP database {} was given up: it took longer than a reload may; it stays unused",
        path.display()
    )]
    GivenUp { path: PathBuf },
    #[error(
        "GeoIP database {} is empty (0 bytes); download it again (`cargo xtask fetch-db`) or pass another --geoip.database",
        path.display()
    )]
    Empty { path: PathBuf },
    #[error(
        "GeoIP database {} is not a MaxMind DB (.mmdb) file or is damaged (truncated?); download it again or pass another --geoip.database",
        path.display()
    )]
    Invalid {
        path: PathBuf,
        #[source]
        source: MaxMindDbError,
    },
    #[error(
        "GeoIP database {} (type {database_type:?}) has no country data in any of its networks ({checked} read); it looks like an ASN or other non-location database. Use a Country or City database (GeoLite2/GeoIP2 Country or City, DB-IP lite, ip-location-db), e.g. from `cargo xtask fetch-db`",
        path.display()
    )]
    NoCountry {
        path: PathBuf,
        database_type: String,
        checked: usize,
    },
    #[error(
        "two {what} databases given, {} and {}; pass one of them to --geoip.database (two of one kind only as an IPv4-only file and an IPv6 one)",
        first.display(),
        second.display()
    )]
    Duplicate {
        what: &'static str,
        first: PathBuf,
        second: PathBuf,
    },
    #[error(
        "--labels {label} needs {what}; pass one with another --geoip.database (e.g. {examples})"
    )]
    Missing {
        label: &'static str,
        what: &'static str,
        examples: &'static str,
    },
    #[error(
        "GeoIP database {} (type {database_type:?}) has no {what} in any of its first networks; it is not the {what} database it is used as",
        path.display()
    )]
    NoAnswers {
        path: PathBuf,
        database_type: String,
        what: &'static str,
    },
}

/// What the exporter tells about the database it uses.
#[derive(Clone, Debug)]
pub(crate) struct DatabaseInfo {
    pub(crate) path: PathBuf,
    pub(crate) database_type: String,
    pub(crate) build_epoch: u64,
    pub(crate) ip_version: u16,
}

impl DatabaseInfo {
    pub(crate) fn of(reader: &Reader<Vec<u8>>, path: &Path) -> Self {
        let meta = reader.metadata();
        Self {
            path: path.to_owned(),
            database_type: meta.database_type.clone(),
            build_epoch: meta.build_epoch,
            ip_version: meta.ip_version,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the database record for {addr} could not be decoded (damaged database?)")]
pub(crate) struct LookupError {
    pub(super) addr: IpAddr,
}

/// The largest database file read: the largest real ones (commercial
/// city and ISP databases) are a few hundred megabytes.
pub(crate) const MAX_DATABASE: Bound = Bound {
    what: "a GeoIP database",
    max: 2 << 30,
};

/// Where a MaxMind DB's metadata begins: within its last 128 KiB.
const METADATA_MARKER: &[u8] = b"\xab\xcd\xefMaxMind.com";
const METADATA_SPAN: u64 = 128 << 10;

/// Read the database file at `path` whole and check it is a MaxMind DB:
/// a regular file of at most [`MAX_DATABASE`] whose last 128 KiB hold the
/// metadata (looked at before the rest is read), and that fits in the
/// memory the process may still take; given up when `stop` is set.
pub(super) fn read(path: &Path, stop: &AtomicBool) -> Result<Reader<Vec<u8>>, OpenError> {
    let path_buf = || path.to_owned();
    let unreadable = |source: FileError| match source {
        FileError::NotFound => OpenError::NotFound { path: path_buf() },
        FileError::Stopped => OpenError::GivenUp { path: path_buf() },
        why if why.is_refusal() => OpenError::Refused {
            path: path_buf(),
            why,
        },
        source => OpenError::Unreadable {
            path: path_buf(),
            source,
        },
    };
    let file = untrusted_file::open(path, MAX_DATABASE).map_err(unreadable)?;
    if file.size() == 0 {
        return Err(OpenError::Empty {
            path: path.to_owned(),
        });
    }
    let tail = file.tail(METADATA_SPAN).map_err(unreadable)?;
    if rfind(&tail, METADATA_MARKER).is_none() {
        return Err(OpenError::Invalid {
            path: path.to_owned(),
            source: MaxMindDbError::invalid_database("no MaxMind DB metadata in its last 128 KiB"),
        });
    }
    if let Some(room) = memory_room::now()
        && file.size() > room.bytes
    {
        return Err(OpenError::NoMemory {
            path: path_buf(),
            size: file.size(),
            room: room.bytes,
            under: room.under,
        });
    }
    check(file.read_all_until(stop).map_err(unreadable)?, path)
}

fn rfind(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).rposition(|w| w == needle)
}

/// Check that `bytes`, read from `path`, are a MaxMind DB whose search
/// tree a walk can follow in bounded time ([`tree::check`]).
pub(super) fn check(bytes: Vec<u8>, path: &Path) -> Result<Reader<Vec<u8>>, OpenError> {
    if bytes.is_empty() {
        return Err(OpenError::Empty {
            path: path.to_owned(),
        });
    }
    let invalid = |source| OpenError::Invalid {
        path: path.to_owned(),
        source,
    };
    let meta = Reader::from_source(bytes.as_slice())
        .map_err(invalid)?
        .metadata()
        .clone();
    let node_count = usize::try_from(meta.node_count).unwrap_or(usize::MAX);
    tree::check(&bytes, node_count, meta.record_size, meta.ip_version).map_err(invalid)?;
    Reader::from_source(bytes).map_err(invalid)
}
