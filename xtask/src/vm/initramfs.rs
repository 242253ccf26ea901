//! The guests' initramfs: busybox and the modules a kernel needs to reach
//! the host's files (virtio PCI, virtiofs, overlay: modules on 5.10 and
//! 6.1, built in on 6.12), and an init that mounts the host's root
//! read-only through virtiofs with a tmpfs overlay on top and switches
//! root to it, running the guest script the kernel command line names.
//! Written as a `newc` cpio archive (uncompressed: the kernel takes it as
//! it is).

use std::{fs, path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use super::kernels::Kernel;
use crate::cmd;

/// The modules the init loads, with what they need first.
const MODULES: [&str; 3] = ["virtio_pci", "virtiofs", "overlay"];

/// busybox, statically linked (`busybox-static`).
const BUSYBOX: &str = "/bin/busybox";

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mkdir -p /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in /mods/*; do [ -e "$m" ] && { insmod "$m" || echo "vm: insmod $m failed"; }; done
for a in $(cat /proc/cmdline); do case "$a" in vminit=*) vminit="${a#vminit=}";; esac; done
mount -t virtiofs -o ro host /host || { echo "vm: cannot mount the host's files (virtiofs)"; poweroff -f; }
mount -t tmpfs -o size=768m tmpfs /upper
mkdir -p /upper/u /upper/w
mount -t overlay overlay -o lowerdir=/host,upperdir=/upper/u,workdir=/upper/w /newroot
exec switch_root /newroot /bin/sh "$vminit"
"#;

/// Write the initramfs for `kernel` to `path` (anew each time: it is a few
/// megabytes, and what it holds may have changed).
pub(crate) fn write(kernel: &Kernel, path: &Path) -> Result<()> {
    let mut archive = Cpio::default();
    for dir in [
        "bin", "mods", "proc", "sys", "dev", "host", "upper", "newroot",
    ] {
        archive.dir(dir);
    }
    archive.file("init", 0o755, INIT.as_bytes());
    let busybox = fs::read(BUSYBOX).with_context(|| {
        format!("reading {BUSYBOX} (install busybox-static: cargo xtask setup)")
    })?;
    archive.file("bin/busybox", 0o755, &busybox);
    for (i, module) in modules(kernel)?.iter().enumerate() {
        let name = Path::new(module)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("module.ko");
        let (name, bytes) = match name.strip_suffix(".xz") {
            Some(plain) => (plain, unxz(Path::new(module))?),
            None => (name, fs::read(module)?),
        };
        archive.file(&format!("mods/{i:02}-{name}"), 0o644, &bytes);
    }
    let partial = path.with_extension("partial");
    fs::write(&partial, archive.finish())?;
    fs::rename(&partial, path)?;
    Ok(())
}

/// The module files [`MODULES`] need on `kernel`, in load order, each
/// once (none for what is built in).
fn modules(kernel: &Kernel) -> Result<Vec<String>> {
    let mut files: Vec<String> = Vec::new();
    for module in MODULES {
        let text = cmd::stdout(Command::new("modprobe").arg("-d").arg(&kernel.root).args([
            "-S",
            &kernel.release,
            "--show-depends",
            module,
        ]))?;
        for file in insmods(&text) {
            if !files.contains(&file) {
                files.push(file);
            }
        }
    }
    Ok(files)
}

/// The files of the `insmod` lines of `modprobe --show-depends`.
fn insmods(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("insmod "))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

fn unxz(path: &Path) -> Result<Vec<u8>> {
    let out = Command::new("xz")
        .arg("-dc")
        .arg(path)
        .output()
        .context("running xz (install xz-utils)")?;
    if !out.status.success() {
        bail!("xz -dc {} failed: {}", path.display(), out.status);
    }
    Ok(out.stdout)
}

/// A `newc` cpio archive being written.
#[derive(Default)]
struct Cpio {
    bytes: Vec<u8>,
    inode: u32,
}

impl Cpio {
    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040_755, 2, &[]);
    }

    fn file(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.entry(name, 0o100_000 | mode, 1, data);
    }

    fn entry(&mut self, name: &str, mode: u32, links: u32, data: &[u8]) {
        self.inode += 1;
        let size = u32::try_from(data.len()).unwrap_or(u32::MAX);
        let name_size = u32::try_from(name.len() + 1).unwrap_or(u32::MAX);
        // magic, then ino mode uid gid nlink mtime filesize devmajor
        // devminor rdevmajor rdevminor namesize check, 8 hex digits each.
        let fields = [
            self.inode, mode, 0, 0, links, 0, size, 0, 0, 0, 0, name_size, 0,
        ];
        self.bytes.extend_from_slice(b"070701");
        for field in fields {
            self.bytes
                .extend_from_slice(format!("{field:08X}").as_bytes());
        }
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(0);
        self.pad();
        self.bytes.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, 1, &[]);
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modprobe_lines_give_the_files_in_order() {
        let text = "builtin virtio\ninsmod /k/lib/modules/5.10/kernel/drivers/virtio/virtio_ring.ko \n\
                    insmod /k/lib/modules/5.10/kernel/fs/fuse/virtiofs.ko opt=1\n";
        assert_eq!(
            insmods(text),
            [
                "/k/lib/modules/5.10/kernel/drivers/virtio/virtio_ring.ko",
                "/k/lib/modules/5.10/kernel/fs/fuse/virtiofs.ko"
            ]
        );
    }

    /// The archive is what `cpio -t` (busybox's, as the kernel reads it)
    /// lists, with the contents intact.
    #[test]
    fn the_archive_is_a_newc_cpio() {
        let mut archive = Cpio::default();
        archive.dir("bin");
        archive.file("bin/hello", 0o755, b"hello, odd length");
        let bytes = archive.finish();
        assert_eq!(bytes.len() % 4, 0);
        let dir = std::env::temp_dir().join(format!("xtask-cpio-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("a.cpio"), &bytes).unwrap();
        let Ok(out) = Command::new(BUSYBOX)
            .args(["cpio", "-id", "-F", "a.cpio"])
            .current_dir(&dir)
            .output()
        else {
            eprintln!("no busybox here: the archive's layout is checked by its length only");
            return;
        };
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            fs::read(dir.join("bin/hello")).unwrap(),
            b"hello, odd length"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
