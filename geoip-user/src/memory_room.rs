//! How much more memory this process may take before the kernel's
//! out-of-memory killer ends it: the least room any memory cgroup it is
//! in leaves (cgroup v2 or v1, each level up to the root), or the
//! machine's when no cgroup limits it. A database read that would not fit
//! is refused with a clear error instead of the exporter being killed in
//! the middle of a reload.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use crate::byte_size::ByteSize;

/// Room left under the tightest limit, and which limit it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Room {
    pub(crate) bytes: u64,
    pub(crate) under: Limit,
}

/// What limits the room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Limit {
    /// A memory cgroup: its directory, limit and the memory in it that
    /// cannot be reclaimed.
    Cgroup { dir: PathBuf, limit: u64, used: u64 },
    /// The machine: `MemAvailable` and `SwapFree` of `/proc/meminfo`.
    Machine,
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cgroup { dir, limit, used } => write!(
                f,
                "the memory cgroup {} (limit {}, {} of it in use)",
                dir.display(),
                ByteSize(*limit),
                ByteSize(*used)
            ),
            Self::Machine => f.write_str("the machine's available memory and swap"),
        }
    }
}

/// The room this process has now; `None` when nothing says.
pub(crate) fn now() -> Option<Room> {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let cgroup = cgroup_room(&own, Path::new("/sys/fs/cgroup"));
    let machine = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| machine_room(&text));
    match (cgroup, machine) {
        (Some(c), Some(m)) if m.bytes < c.bytes => Some(m),
        (Some(c), _) => Some(c),
        (None, m) => m,
    }
}

/// The machine's room from the text of `/proc/meminfo`.
fn machine_room(meminfo: &str) -> Option<Room> {
    let kib = |name: &str| -> Option<u64> {
        let line = meminfo.lines().find(|l| l.starts_with(name))?;
        line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    };
    let kib = kib("MemAvailable:")?.saturating_add(kib("SwapFree:").unwrap_or(0));
    Some(Room {
        bytes: kib.saturating_mul(1024),
        under: Limit::Machine,
    })
}

/// The two layouts of the memory controller's files.
struct Files {
    limit: &'static str,
    usage: &'static str,
    /// `memory.stat` keys of the page cache that can be reclaimed.
    reclaimable: [&'static str; 2],
}

const V2: Files = Files {
    limit: "memory.max",
    usage: "memory.current",
    reclaimable: ["active_file", "inactive_file"],
};

const V1: Files = Files {
    limit: "memory.limit_in_bytes",
    usage: "memory.usage_in_bytes",
    reclaimable: ["total_active_file", "total_inactive_file"],
};

/// The least room of the memory cgroups that `own` (the text of
/// `/proc/self/cgroup`) names, their file systems under `root`.
fn cgroup_room(own: &str, root: &Path) -> Option<Room> {
    let mut v2 = None;
    for (id, controllers, path) in own.lines().filter_map(cgroup_fields) {
        if controllers.split(',').any(|c| c == "memory") {
            return least_room(&root.join("memory"), path, &V1);
        }
        if id == "0" && controllers.is_empty() {
            v2 = Some(path);
        }
    }
    v2.filter(|_| root.join("cgroup.controllers").exists())
        .and_then(|path| least_room(root, path, &V2))
}

/// A line of `/proc/self/cgroup`: hierarchy, controllers, path.
fn cgroup_fields(line: &str) -> Option<(&str, &str, &str)> {
    let mut parts = line.splitn(3, ':');
    Some((parts.next()?, parts.next()?, parts.next()?))
}

/// The least room of the cgroup at `path` under the mount `mount` and of
/// each of its ancestors. A path that is not there (a container that sees
/// the host's path but has its own cgroup mounted) is read at the mount.
fn least_room(mount: &Path, path: &str, files: &Files) -> Option<Room> {
    let own = mount.join(path.trim_start_matches('/'));
    let mut dir = if own.is_dir() { own } else { mount.to_owned() };
    let mut least: Option<Room> = None;
    loop {
        if let Some(room) = level_room(&dir, files)
            && least.as_ref().is_none_or(|l| room.bytes < l.bytes)
        {
            least = Some(room);
        }
        if dir == mount {
            return least;
        }
        match dir.parent() {
            Some(up) if up.starts_with(mount) => dir = up.to_owned(),
            _ => return least,
        }
    }
}

/// The room one cgroup's limit leaves; `None` when it has none.
fn level_room(dir: &Path, files: &Files) -> Option<Room> {
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
    let limit: u64 = read(files.limit)?.trim().parse().ok()?;
    // cgroup v1 says "no limit" with a number near 2^63.
    if limit >= 1 << 62 {
        return None;
    }
    let usage: u64 = read(files.usage)?.trim().parse().ok()?;
    let stat = read("memory.stat").unwrap_or_default();
    let reclaimable: u64 = stat
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(key, _)| files.reclaimable.contains(key))
        .filter_map(|(_, value)| value.trim().parse::<u64>().ok())
        .sum();
    let used = usage.saturating_sub(reclaimable);
    Some(Room {
        bytes: limit.saturating_sub(used),
        under: Limit::Cgroup {
            dir: dir.to_owned(),
            limit,
            used,
        },
    })
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    fn tree(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("geoip-room-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn level(dir: &Path, files: &[(&str, &str)]) {
        fs::create_dir_all(dir).unwrap();
        for (name, text) in files {
            fs::write(dir.join(name), text).unwrap();
        }
    }

    /// v2: a pod's limit above a container's without one; the page cache
    /// that can be reclaimed is not counted as used.
    #[test]
    fn the_tightest_v2_ancestor_limits_the_room() {
        let root = tree("v2");
        level(&root, &[("cgroup.controllers", "cpu memory\n")]);
        let pod = root.join("kubepods/pod1");
        level(
            &pod,
            &[
                ("memory.max", "536870912\n"),
                ("memory.current", "400000000\n"),
                (
                    "memory.stat",
                    "anon 1\nactive_file 50000000\ninactive_file 50000000\nfile 200000000\n",
                ),
            ],
        );
        let ctr = pod.join("ctr");
        level(&ctr, &[("memory.max", "max\n"), ("memory.current", "1\n")]);
        let pod_room = cgroup_room("0::/kubepods/pod1/ctr\n", &root).unwrap();
        assert_eq!(pod_room.bytes, 536_870_912 - 300_000_000);
        assert_eq!(
            pod_room.under.to_string(),
            format!(
                "the memory cgroup {} (limit 512.0 MiB, 286.1 MiB of it in use)",
                pod.display()
            )
        );
        // The container's own cgroup mounted at the root (a cgroup
        // namespace): its path is "/".
        level(
            &root,
            &[
                ("memory.max", "1073741824\n"),
                ("memory.current", "73741824\n"),
            ],
        );
        let own_room = cgroup_room("0::/\n", &root).unwrap();
        assert_eq!(own_room.bytes, 1_000_000_000);
        fs::remove_dir_all(&root).unwrap();
    }

    /// v1: the controller's own hierarchy; "no limit" is a huge number; a
    /// path the container cannot see is read at its mount.
    #[test]
    fn v1_limits_are_read_and_unlimited_ones_skipped() {
        let root = tree("v1");
        let mem = root.join("memory");
        level(&mem, &[("memory.limit_in_bytes", "9223372036854771712\n")]);
        let own = mem.join("docker/abc");
        level(
            &own,
            &[
                ("memory.limit_in_bytes", "268435456\n"),
                ("memory.usage_in_bytes", "200000000\n"),
                (
                    "memory.stat",
                    "cache 1\ntotal_active_file 10000000\ntotal_inactive_file 20000000\n",
                ),
            ],
        );
        let own_text = "9:pids:/x\n4:memory:/docker/abc\n0::/\n";
        assert_eq!(
            cgroup_room(own_text, &root).unwrap().bytes,
            268_435_456 - 170_000_000
        );
        assert!(
            cgroup_room("4:memory:/elsewhere\n", &root).is_none(),
            "the mount has no limit"
        );
        assert!(cgroup_room("", &root).is_none());
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn the_machine_room_is_available_memory_and_free_swap() {
        let text = "MemTotal: 100 kB\nMemAvailable:  2048 kB\nSwapFree: 1024 kB\n";
        assert_eq!(machine_room(text).unwrap().bytes, 3 << 20);
        assert!(machine_room("MemTotal: 1 kB\n").is_none());
        // This machine says something.
        assert!(now().is_some_and(|r| r.bytes > 0));
    }
}
