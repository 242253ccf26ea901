//! The host's network namespaces: each container (and each `ip netns`)
//! has its own sockets, which `sock_diag` only shows from inside.
//!
//! A namespace is known by the inode number of its nsfs file (what `ls -Li
//! /proc/PID/ns/net` prints and what the kernel program reads from
//! `net->ns.inum`). They are found through every process's
//! `/proc/PID/ns/net` and every nsfs bind mount in `/proc/self/mountinfo`
//! (`ip netns add`, container runtimes), so a namespace with no process
//! left in it is still seen.

use std::{
    collections::HashMap,
    fs::File,
    io,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
};

/// A network namespace and a path that opens it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct NetNs {
    pub(crate) id: u32,
    pub(crate) path: PathBuf,
}

/// The namespace id of the file at `path` (an nsfs file).
fn id_of(path: &Path) -> io::Result<u32> {
    let ino = std::fs::metadata(path)?.ino();
    u32::try_from(ino).map_err(|_| io::Error::other(format!("namespace inode {ino} is not 32-bit")))
}

/// The exporter's own network namespace.
pub(crate) fn own() -> io::Result<NetNs> {
    let path = PathBuf::from("/proc/self/ns/net");
    Ok(NetNs {
        id: id_of(&path)?,
        path,
    })
}

/// Every network namespace this process can see, its own included, each
/// once. Processes that exit meanwhile, and those it may not look at, are
/// skipped.
pub(crate) fn all() -> Vec<NetNs> {
    let mut found: HashMap<u32, PathBuf> = HashMap::new();
    let mut add = |path: PathBuf| {
        if let Ok(id) = id_of(&path) {
            found.entry(id).or_insert(path);
        }
    };
    if let Ok(own) = own() {
        add(own.path);
    }
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let name = entry.file_name();
            if name
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
            {
                add(entry.path().join("ns/net"));
            }
        }
    }
    if let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") {
        for path in nsfs_net_mounts(&mountinfo) {
            add(path);
        }
    }
    let mut all: Vec<NetNs> = found
        .into_iter()
        .map(|(id, path)| NetNs { id, path })
        .collect();
    all.sort_by_key(|ns| ns.id);
    all
}

/// Mount points of network namespaces bound with nsfs (`ip netns add`,
/// container runtimes), from `/proc/self/mountinfo` text.
fn nsfs_net_mounts(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| {
            // "36 35 0:4 net:[4026532] /run/netns/x rw shared:1 - nsfs nsfs rw"
            let (left, right) = line.split_once(" - ")?;
            if right.split(' ').next()? != "nsfs" {
                return None;
            }
            let mut fields = left.split(' ');
            let root = fields.nth(3)?;
            let mount_point = fields.next()?;
            root.starts_with("net:[")
                .then(|| PathBuf::from(unescape(mount_point)))
        })
        .collect()
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)))
            .and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok());
        if let Some(byte) = octal {
            out.push(byte);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Move the calling thread into `ns` (it must be a thread of its own:
/// everything it opens afterwards belongs to that namespace). Checks that
/// the path still names the same namespace (a process id may be reused).
pub(crate) fn enter(ns: &NetNs) -> io::Result<()> {
    let file = File::open(&ns.path)?;
    let ino = file.metadata()?.ino();
    if ino != u64::from(ns.id) {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{} is another namespace now", ns.path.display()),
        ));
    }
    enter_file(&file)
}

/// Move the calling thread into the namespace `file` (an nsfs file) is.
pub(crate) fn enter_file(file: &File) -> io::Result<()> {
    // SAFETY: setns(2) on this thread with a descriptor we hold open.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Move the calling thread back into `home` (an nsfs file) unless it is
/// there already: a thread that never left needs no setns(2), which it may
/// not be allowed (no `CAP_SYS_ADMIN`, or a seccomp filter).
pub(crate) fn return_to(home: &File) -> io::Result<()> {
    let here = std::fs::metadata("/proc/thread-self/ns/net")?;
    let home_meta = home.metadata()?;
    if here.ino() == home_meta.ino() && here.dev() == home_meta.dev() {
        return Ok(());
    }
    enter_file(home)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_nsfs_lines() {
        let text = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
600 25 0:4 net:[4026532301] /run/netns/geoipt-a rw shared:300 - nsfs nsfs rw
601 25 0:4 mnt:[4026532302] /run/x rw shared:301 - nsfs nsfs rw
602 25 0:4 net:[4026532303] /run/netns/with\\040space rw - nsfs nsfs rw
";
        assert_eq!(
            nsfs_net_mounts(text),
            vec![
                PathBuf::from("/run/netns/geoipt-a"),
                PathBuf::from("/run/netns/with space")
            ]
        );
    }

    #[test]
    fn returning_home_from_home_needs_no_setns() {
        // A thread that drops CAP_SYS_ADMIN cannot call setns(2); one that
        // never left its namespace must still "return" without it.
        let home = File::open("/proc/thread-self/ns/net").unwrap();
        std::thread::spawn(move || {
            crate::capabilities::restrict_thread(0).unwrap();
            assert_eq!(
                enter_file(&home).map_err(|e| e.raw_os_error()),
                Err(Some(libc::EPERM)),
                "setns needs CAP_SYS_ADMIN (run the unit tests as root)"
            );
            return_to(&home).unwrap();
        })
        .join()
        .unwrap();
    }

    #[test]
    fn lists_each_namespace_once_with_its_own() {
        let own = own().unwrap();
        let all = all();
        assert!(all.iter().any(|n| n.id == own.id));
        let mut ids: Vec<u32> = all.iter().map(|n| n.id).collect();
        ids.dedup();
        assert_eq!(ids.len(), all.len(), "each namespace once");
    }
}
