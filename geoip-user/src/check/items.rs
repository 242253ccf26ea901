//! The items that change nothing in the kernel, each a [`Finding`] that
//! says what was found and, when it is not ok, what to do.

use std::{fmt::Write as _, io, path::Path};

use super::report::Finding;
use crate::{
    app::Opened,
    capabilities::{
        self, CAP_BPF, CAP_DAC_READ_SEARCH, CAP_PERFMON, CAP_SYS_ADMIN, CAP_SYS_PTRACE,
    },
    civil,
    cli::{Args, Label},
    geo::{DatabaseInfo, Records},
    kernel::{
        btf::{Btf, VMLINUX},
        map_create, memlock, probe, tracefs,
        version::{self, MIN_KERNEL},
    },
    web::WebConfig,
};

pub(super) fn kernel() -> Finding {
    let release = match version::release() {
        Ok(release) => release,
        Err(err) => return Finding::failed(format!("cannot read the kernel release: {err}")),
    };
    let need = format!("{}.{} or later needed", MIN_KERNEL.0, MIN_KERNEL.1);
    match version::parse(&release) {
        Some(version) if version >= MIN_KERNEL => Finding::ok(format!("Linux {release} ({need})")),
        Some(_) => Finding::failed(format!(
            "Linux {release}: {need} (BPF ring buffers, CAP_BPF); upgrade the kernel"
        )),
        None => Finding::warn(format!(
            "cannot tell the version of Linux {release:?} ({need}); the items below still tell"
        )),
    }
}

pub(super) fn btf(bytes: bool) -> Finding {
    let btf = match Btf::from_kernel() {
        Ok(btf) => btf,
        Err(err) if bytes => {
            return Finding::failed(format!(
                "{VMLINUX}: {err}; --metrics.bytes needs the kernel's BTF (CONFIG_DEBUG_INFO_BTF=y): use such a kernel or run without --metrics.bytes"
            ));
        }
        Err(err) => {
            return Finding::warn(format!(
                "{VMLINUX}: {err}; the exporter runs, but counts connections in other network namespaces (containers) from events alone; a kernel built with CONFIG_DEBUG_INFO_BTF=y has it"
            ));
        }
    };
    if bytes && let Err(err) = btf.tcp_layout() {
        return Finding::failed(format!("{VMLINUX}: {err}; run without --metrics.bytes"));
    }
    match btf.sock_layout() {
        Ok(_) => Finding::ok(format!(
            "{VMLINUX}: sockets' network namespaces{} found",
            if bytes { " and TCP byte counters" } else { "" }
        )),
        Err(err) => Finding::warn(format!(
            "{VMLINUX}: {err}; connections in other network namespaces (containers) are counted from events alone"
        )),
    }
}

pub(super) fn tracepoint() -> Finding {
    let path = match tracefs::format_path() {
        Ok(path) => path,
        Err(err) => return Finding::failed(err),
    };
    match tracefs::read_layout() {
        Ok(_) => Finding::ok(format!(
            "sock/inet_sock_set_state present, its record layout read from {}",
            path.display()
        )),
        Err(err) => Finding::failed(crate::error::chain(&err)),
    }
}

/// The capabilities loading needs (the verdict is the start-up's own,
/// [`probe::check_capabilities`]), and those this process holds.
pub(super) fn capabilities(sets: Option<&capabilities::Sets>) -> Finding {
    let Some(sets) = sets else {
        return Finding::warn(
            "cannot read this process's capabilities; the kernel program item below tells",
        );
    };
    let relevant = capabilities::bit(CAP_BPF)
        | capabilities::bit(CAP_PERFMON)
        | capabilities::bit(CAP_DAC_READ_SEARCH)
        | capabilities::bit(CAP_SYS_ADMIN)
        | capabilities::bit(CAP_SYS_PTRACE);
    // SAFETY: geteuid has no preconditions.
    let who = if unsafe { libc::geteuid() } == 0 {
        "root"
    } else {
        "not root"
    };
    match probe::check_capabilities() {
        Ok(()) => Finding::ok(format!(
            "{who}, effective: {}",
            capabilities::names(sets.effective & relevant).join(" ")
        )),
        Err(err) => Finding::failed(format!(
            "{who}: {err}; as root: sudo geoip-exporter check; the packaged systemd unit grants CAP_BPF, CAP_PERFMON and CAP_DAC_READ_SEARCH"
        )),
    }
}

/// What the missing optional capabilities cost, if any are missing.
pub(super) fn namespace_capabilities(
    args: &Args,
    sets: Option<&capabilities::Sets>,
) -> Option<Finding> {
    let sets = sets?;
    let mut wanted = capabilities::bit(CAP_SYS_ADMIN) | capabilities::bit(CAP_SYS_PTRACE);
    let service = args.labels.contains(&Label::Service);
    if service {
        wanted |= capabilities::bit(CAP_DAC_READ_SEARCH);
    }
    let missing = wanted & !sets.permitted;
    if missing == 0 {
        return None;
    }
    Some(Finding::warn(format!(
        "without {}: connections in other network namespaces (containers) are counted from events alone{}; add them to read every namespace",
        capabilities::names(missing).join(" and "),
        if service {
            ", and outbound ones open before start-up stay service=\"unknown\""
        } else {
            ""
        }
    )))
}

/// Create (and free) a BPF ring buffer of `bytes`, after raising the
/// locked-memory limit as the start-up does (Linux before 5.11).
pub(super) fn ring_buffer(bytes: u32, features: u32) -> Finding {
    let raised = memlock::raise_if_needed(version::running(), probe::map_bytes(bytes, features));
    let limit = match raised {
        Ok(raised @ (memlock::Raised::To { .. } | memlock::Raised::Short { .. })) => {
            format!(
                "; the locked-memory limit, which Linux before 5.11 counts BPF maps against: {raised}"
            )
        }
        _ => String::new(),
    };
    match map_create::ring_buffer(bytes) {
        Ok(()) => Finding::ok(format!(
            "a {bytes}-byte BPF ring buffer was created (and freed){limit}"
        )),
        Err(err) => Finding::failed(format!("{err}{limit}")),
    }
}

/// Each database: path, type, build date; the country ranges; the memory
/// a reload needs.
pub(super) fn databases(opened: &Opened) -> Finding {
    let databases = &opened.databases;
    let (v4, v6, _) = databases.country.table_size();
    let mut text = format!(
        "{} ({v4} IPv4 and {v6} IPv6 country ranges)",
        describe(databases.country.info())
    );
    for (what, info) in [
        ("ASN", databases.asn.as_ref().map(Records::info)),
        ("city", databases.city.as_ref().map(Records::info)),
    ] {
        if let Some(info) = info {
            let _ = write!(text, "; {what}: {}", describe(info));
        }
    }
    if let Some(bytes) = opened.reload_bytes {
        let _ = write!(
            text,
            "; a reload needs {} MiB more memory while it runs",
            bytes.div_ceil(1 << 20)
        );
    }
    Finding::ok(text)
}

/// `PATH: type T, built YYYY-MM-DD`.
fn describe(info: &DatabaseInfo) -> String {
    format!(
        "{}: type {}, built {}",
        info.path.display(),
        info.database_type,
        civil::date(info.build_epoch)
    )
}

pub(super) fn web_config(path: &Path) -> Finding {
    match WebConfig::load(path) {
        Ok(web) => Finding::ok(format!(
            "{}: TLS {}, {} basic-auth user(s)",
            path.display(),
            if web.tls.is_some() { "on" } else { "off" },
            web.users.len()
        )),
        Err(err) => Finding::failed(crate::error::chain(&err)),
    }
}

pub(super) fn listen(args: &Args) -> Finding {
    let addr = args.listen_address;
    match std::net::TcpListener::bind(addr) {
        Ok(_) => Finding::ok(format!("{addr} is free")),
        Err(err) if err.kind() == io::ErrorKind::AddrInUse => Finding::failed(format!(
            "{addr} is in use ({err}): stop what listens there (a running geoip-exporter?) or pass another --web.listen-address"
        )),
        Err(err) => Finding::failed(format!(
            "cannot listen on {addr} ({err}); pass another --web.listen-address"
        )),
    }
}
