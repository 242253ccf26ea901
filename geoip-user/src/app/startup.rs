//! The privileged part of start-up, on the main thread before any other
//! thread exists: check every input that changes nothing in the kernel
//! (database, web config, listen address), load and attach the kernel
//! program, start the snapshot thread, then drop the main thread's
//! capabilities (threads made later, the runtime's included, inherit
//! none).

use std::{io, net::SocketAddr, sync::Arc};

use geoip_common::feature;

use super::error::AppError;
use crate::{
    capabilities,
    cli::{Args, Label},
    exclude::Exclusions,
    geo::{Databases, OpenError, Records, Wants},
    kernel::probe::{self, Probe},
    snapshot::Snapshotter,
    web::{BasicAuth, Transport, WebConfig},
};

/// What the privileged start-up made, for [`super::begin`].
pub(crate) struct Started {
    pub(super) databases: Databases,
    /// Basic auth, when the web config has users.
    pub(super) auth: Option<Arc<BasicAuth>>,
    pub(super) transport: Transport,
    pub(super) listener: std::net::TcpListener,
    pub(super) probe: Probe,
    pub(super) snapshotter: Snapshotter,
}

/// The databases, and the memory their opening took at its peak: what a
/// reload of them needs on top of what the exporter holds then (the old
/// ones serve until the new ones are in place).
pub(crate) struct Opened {
    pub(crate) databases: Databases,
    /// Bytes; `None` when /proc does not say.
    pub(crate) reload_bytes: Option<u64>,
}

/// The databases `--geoip.database` names, as `--labels` needs them.
pub(crate) fn open_databases(args: &Args) -> Result<Opened, OpenError> {
    // The peak from here on (what came before, such as reading the eBPF
    // object, is not the databases'): "5" resets VmHWM to VmRSS.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let before = memory().map(|m| m.resident);
    let databases = Databases::open(&args.database, wants(args))?;
    let after = memory().map(|m| m.peak);
    Ok(Opened {
        databases,
        reload_bytes: before.zip(after).map(|(b, a)| a.saturating_sub(b)),
    })
}

/// This process's memory, from `/proc/self/status`.
struct Memory {
    /// `VmRSS`: resident now.
    resident: u64,
    /// `VmHWM`: the most it was resident.
    peak: u64,
}

fn memory() -> Option<Memory> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kib * 1024)
    };
    Some(Memory {
        resident: field("VmRSS:")?,
        peak: field("VmHWM:")?,
    })
}

/// Everything that needs privileges, on the main thread before any other
/// thread exists: check the other inputs, load and attach the kernel
/// program, start the snapshot thread; then drop every capability of this
/// thread.
pub(crate) fn start(args: &Args, opened: Opened) -> Result<Started, AppError> {
    let databases = opened.databases;
    log_country_database(&databases, opened.reload_bytes);
    let (auth, transport) = match &args.web_config {
        Some(path) => {
            let web = WebConfig::load(path)?;
            let transport = web
                .tls
                .map_or(Transport::Plain, |t| Transport::Tls(Arc::new(t)));
            // Measures a check at the users' highest cost (up to a
            // second): here, not on the server's runtime.
            let auth = (!web.users.is_empty()).then(|| Arc::new(BasicAuth::new(web.users)));
            (auth, transport)
        }
        None => (None, Transport::Plain),
    };
    let listener = bind(args.listen_address)?;
    let probe = probe::prepare(args.ring_buffer_bytes, features(args))?.load_and_attach()?;
    tracing::info!(
        ring_buffer_bytes = args.ring_buffer_bytes,
        "kernel program attached to sock/inet_sock_set_state"
    );
    // Outbound connections already open are named after the process
    // holding them (the kernel program saw no connect() of theirs).
    let snapshotter = Snapshotter::start(
        Exclusions::new(&args.exclude).ranges(),
        args.labels.contains(&Label::Service),
    )?;
    // Reading the kernel's BTF (several MB) and the eBPF object left freed
    // heap behind; give it back to the system before serving.
    // SAFETY: malloc_trim has no preconditions.
    unsafe { libc::malloc_trim(0) };
    match capabilities::restrict_thread(0) {
        Ok(_) => tracing::info!(
            "capabilities dropped (the snapshot thread keeps CAP_SYS_ADMIN and CAP_SYS_PTRACE to enter network namespaces, and with --labels service CAP_DAC_READ_SEARCH until start-up has read /proc/PID/fd)"
        ),
        Err(err) => tracing::warn!(error = %err, "cannot drop capabilities"),
    }
    log_label_databases(&databases);
    Ok(Started {
        databases,
        auth,
        transport,
        listener,
        probe,
        snapshotter,
    })
}

fn log_country_database(databases: &Databases, reload_bytes: Option<u64>) {
    let db = databases.country.info();
    let ranges = databases.country.table_size();
    tracing::info!(
        path = %db.path.display(),
        database_type = %db.database_type,
        build_epoch = db.build_epoch,
        ipv4_ranges = ranges.0,
        ipv6_ranges = ranges.1,
        table_bytes = ranges.2,
        reload_needs_bytes = reload_bytes,
        "GeoIP database opened and flattened (a reload of the databases needs reload_needs_bytes more memory while it runs: leave room for it under a memory limit)"
    );
}

fn log_label_databases(databases: &Databases) {
    for (what, info) in [
        ("ASN", databases.asn.as_ref().map(Records::info)),
        ("city", databases.city.as_ref().map(Records::info)),
    ] {
        if let Some(info) = info {
            tracing::info!(path = %info.path.display(), database_type = %info.database_type, build_epoch = info.build_epoch, "{what} database opened");
        }
    }
}

fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, AppError> {
    let listener = std::net::TcpListener::bind(addr).map_err(|source| {
        if source.kind() == io::ErrorKind::AddrInUse {
            AppError::AddrInUse { addr, source }
        } else {
            AppError::Bind { addr, source }
        }
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| AppError::Bind { addr, source })?;
    Ok(listener)
}

/// What the kernel program reports beyond opens and closes.
pub(crate) fn features(args: &Args) -> u32 {
    let mut features = 0;
    if args.labels.contains(&Label::Service) {
        features |= feature::COMM;
    }
    if args.duration {
        features |= feature::TIME;
    }
    if args.bytes {
        features |= feature::BYTES;
    }
    features
}

/// The databases `--labels` needs besides a country database.
pub(super) fn wants(args: &Args) -> Wants {
    Wants {
        asn: args.labels.contains(&Label::Asn),
        city: args.labels.contains(&Label::City),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_says_its_memory() {
        let m = memory().unwrap();
        assert!(m.resident > 0 && m.peak >= m.resident);
    }
}
