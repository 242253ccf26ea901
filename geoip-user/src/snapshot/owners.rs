//! The process that holds a socket, from `/proc/PID/fd`.
//!
//! With `--labels service`, an outbound connection is named after the
//! process that made it, which the kernel program records at `connect()`.
//! A connection made before the exporter started has no such record: the
//! snapshot finds it by its socket inode (which `sock_diag` reports) among
//! the open files of every process, and names it after the process that
//! holds it (`/proc/PID/comm`, its main thread's name: which thread made
//! the connection is not kept). A socket shared by several processes (a
//! fork's children) is named after the lowest process id, usually the
//! parent that made it.
//!
//! Reading another user's `/proc/PID/fd` needs `CAP_DAC_READ_SEARCH` (to
//! open the directory) and `CAP_SYS_PTRACE` (to read its links), which the
//! snapshot thread keeps for this; processes of other PID namespaces than
//! the exporter's are not visible, and their connections stay `unknown`.
//! The kernel's cost is 5-12 µs per open file of every process (each file
//! gets a procfs inode and dentry): 2.5 s for 200,000 on the benchmark VM,
//! paid once, at start-up.

use std::{
    collections::{HashMap, HashSet},
    ffi::{CStr, CString, OsStr},
    fs::{self, File},
    os::{fd::AsRawFd as _, unix::ffi::OsStrExt as _},
    path::Path,
};

use crate::conn::Comm;

/// What [`process_names`] found.
#[derive(Debug, Default)]
pub(crate) struct ProcessNames {
    /// The name of the process holding each socket found, by inode.
    pub(crate) names: HashMap<u32, Comm>,
    /// Processes whose open files it was not allowed to read.
    pub(crate) refused: usize,
}

/// The name of the process holding each socket of `inodes` that some
/// process of `proc` (a procfs mount) holds.
pub(crate) fn process_names(proc: &Path, inodes: &HashSet<u32>) -> ProcessNames {
    let mut found = ProcessNames {
        names: HashMap::with_capacity(inodes.len()),
        refused: 0,
    };
    if inodes.is_empty() {
        return found;
    }
    let Ok(entries) = fs::read_dir(proc) else {
        return found;
    };
    // Lowest process id first, so the answer does not depend on the
    // order procfs lists them in.
    let mut pids: Vec<u32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    let mut target = [0u8; 64];
    for pid in pids {
        let dir = proc.join(pid.to_string());
        // Gone meanwhile, or not ours to read: skipped.
        let (fds, handle) = match (fs::read_dir(dir.join("fd")), File::open(dir.join("fd"))) {
            (Ok(fds), Ok(handle)) => (fds, handle),
            (Err(err), _) | (_, Err(err)) => {
                if err.kind() == std::io::ErrorKind::PermissionDenied {
                    found.refused += 1;
                }
                continue;
            }
        };
        let mut comm = None;
        for fd in fds.flatten() {
            // Relative to the open directory: no path walk per file.
            let Some(inode) = read_link_at(&handle, fd.file_name().as_bytes(), &mut target)
                .and_then(socket_inode)
            else {
                continue;
            };
            if !inodes.contains(&inode) || found.names.contains_key(&inode) {
                continue;
            }
            let comm = *comm.get_or_insert_with(|| read_comm(&dir));
            if let Some(comm) = comm {
                found.names.insert(inode, comm);
            }
        }
        if found.names.len() == inodes.len() {
            break;
        }
    }
    found
}

/// The target of the link `name` in the directory `dir`, read into
/// `buf`; `None` if it is gone or longer than `buf` (no socket's is).
fn read_link_at<'a>(dir: &File, name: &[u8], buf: &'a mut [u8; 64]) -> Option<&'a [u8]> {
    let name = CString::new(name).ok()?;
    // SAFETY: readlinkat(2) with an open directory, a NUL-terminated name
    // and a buffer of the length given, which it writes at most.
    let n = unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    let n = usize::try_from(n).ok()?;
    buf.get(..n).filter(|_| n < buf.len())
}

/// The inode of a `socket:[INODE]` link target; `None` for anything else.
fn socket_inode(target: &[u8]) -> Option<u32> {
    let digits = target.strip_prefix(b"socket:[")?.strip_suffix(b"]")?;
    OsStr::from_bytes(digits).to_str()?.parse().ok()
}

/// `/proc/PID/comm` as the kernel keeps it (NUL-padded, 15 bytes at most);
/// `None` if it cannot be read or is empty.
fn read_comm(dir: &Path) -> Option<Comm> {
    let text = fs::read(dir.join("comm")).ok()?;
    let name = text.strip_suffix(b"\n").unwrap_or(&text);
    let name = CStr::from_bytes_until_nul(name).map_or(name, CStr::to_bytes);
    if name.is_empty() {
        return None;
    }
    let mut comm = [0u8; 16];
    let len = name.len().min(15);
    comm[..len].copy_from_slice(&name[..len]);
    Some(Comm(comm))
}

#[cfg(test)]
mod tests {
    use std::{
        net::{Ipv4Addr, TcpListener, TcpStream},
        os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    };

    use super::*;

    /// The inode of the socket behind one of this process's descriptors.
    fn inode_of(fd: i32) -> u32 {
        let meta = fs::metadata(format!("/proc/self/fd/{fd}")).expect("stat the descriptor");
        u32::try_from(meta.ino()).expect("socket inodes fit in 32 bits")
    }

    #[test]
    fn finds_this_process_by_its_sockets() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let mine = inode_of(client.as_raw_fd());
        let nobody = u32::MAX - 7;
        let wanted: HashSet<u32> = [mine, nobody].into();
        let found = process_names(Path::new("/proc"), &wanted);
        let own = fs::read_to_string("/proc/self/comm").expect("own comm");
        assert_eq!(
            found.names.get(&mine).and_then(Comm::name).as_deref(),
            Some(own.trim_end())
        );
        assert!(!found.names.contains_key(&nobody), "no process holds it");
        assert_eq!(found.refused, 0, "tests run as root");
        let none = process_names(Path::new("/proc"), &HashSet::new());
        assert!(none.names.is_empty());
        assert!(
            process_names(Path::new("/nonexistent"), &wanted)
                .names
                .is_empty()
        );
    }

    #[test]
    fn link_targets_and_names() {
        assert_eq!(socket_inode(b"socket:[12345]"), Some(12345));
        for other in [
            &b"pipe:[12345]"[..],
            b"socket:[]",
            b"socket:[12x]",
            b"socket:[99999999999]",
            b"/dev/null",
            b"socket:[1",
        ] {
            assert_eq!(socket_inode(other), None, "{:?}", OsStr::from_bytes(other));
        }
        let dir = std::env::temp_dir().join(format!("geoip-owners-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("temp dir");
        for (text, want) in [
            (&b"nginx\n"[..], Some("nginx")),
            (b"a-very-long-process-name\n", Some("a-very-long-pro")),
            (b"\n", None),
        ] {
            fs::write(dir.join("comm"), text).expect("write comm");
            assert_eq!(read_comm(&dir).and_then(|c| c.name()).as_deref(), want);
        }
        fs::remove_dir_all(&dir).expect("clean up");
        assert_eq!(read_comm(&dir), None, "gone");
    }
}
