//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`): each
//! feeds arbitrary bytes to one parser of outside input and must return,
//! never panic, whatever the bytes.

use std::{net::IpAddr, path::Path};

use crate::{
    cli, exclude,
    geo::CountryTable,
    kernel::{btf::Btf, events, tracefs},
    snapshot, web,
};

/// A ring-buffer record from the kernel.
pub fn event_record(data: &[u8]) {
    let _ = events::decode(data);
}

/// An `--exclude` list: comma-separated CIDRs, then every address the
/// input's bytes make checked against the exclusions.
pub fn exclude_list(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let cidrs: Vec<exclude::Cidr> = text.split(',').filter_map(|c| c.parse().ok()).collect();
    let exclusions = exclude::Exclusions::new(&cidrs);
    for chunk in data.chunks(16) {
        let mut bytes = [0u8; 16];
        bytes[..chunk.len()].copy_from_slice(chunk);
        let _ = exclusions.excludes(u128::from_be_bytes(bytes));
    }
}

/// Flag values: durations and listen addresses.
pub fn flag_values(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = cli::parse_duration(text);
    let _ = cli::parse_listen_address(text);
}

/// A `--web.config.file` (its text; no file it names is opened).
pub fn web_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = web::parse_config(Path::new("/fuzz/web.yml"), text);
}

/// The kernel's BTF, and the member lookups made in it.
pub fn btf(data: &[u8]) {
    if let Ok(btf) = Btf::parse(data) {
        let _ = btf.sock_layout();
    }
}

/// A tracefs event format file.
pub fn tracepoint_format(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = tracefs::parse_layout(text, Path::new("/fuzz/format"));
}

/// A netlink `sock_diag` reply datagram.
pub fn sock_diag_reply(data: &[u8]) {
    let mut sockets = Vec::new();
    let _ = snapshot::sock_diag::parse_messages(data, "fuzz", 1, &mut sockets);
}

/// A database file: opened and flattened (every record decoded, the
/// country in each layout it reads), then lookups in it.
pub fn database(data: &[u8]) {
    let Ok(geo) = CountryTable::from_bytes(data.to_vec(), Path::new("/fuzz/db.mmdb")) else {
        return;
    };
    for addr in [
        "1.1.1.1",
        "192.0.2.1",
        "255.255.255.255",
        "::1",
        "2001:db8::1",
        "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
    ] {
        if let Ok(addr) = addr.parse::<IpAddr>() {
            let _ = geo.lookup(addr);
        }
    }
}
