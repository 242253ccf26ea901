//! Kernel interfaces the exporter needs at load time: tracefs (the
//! `sock/inet_sock_set_state` tracepoint's id), bpffs (pinning) and BTF.

use std::{fs, path::Path, process::Command};

use anyhow::{Context, Result, bail};

use super::{Report, ok, step};
use crate::cmd;

const TRACEFS: &str = "/sys/kernel/tracing";
/// The tracepoint the eBPF program attaches to (inside `tcp_set_state`, Linux 4.16+).
const TRACEPOINT_FORMAT: &str = "/sys/kernel/tracing/events/sock/inet_sock_set_state/format";
const BPFFS: &str = "/sys/fs/bpf";
const BTF: &str = "/sys/kernel/btf/vmlinux";

/// Mounts tracefs unless the tracepoint's format file is already visible.
pub(super) fn tracefs(root: bool, report: &mut Report) -> Result<()> {
    step(&format!(
        "tracefs at {TRACEFS} with the sock:inet_sock_set_state tracepoint"
    ));
    if Path::new(TRACEPOINT_FORMAT).exists() {
        ok(&format!("already there: {TRACEPOINT_FORMAT}"));
        return Ok(());
    }
    eprintln!("    {TRACEPOINT_FORMAT} is absent: mounting tracefs");
    if !root {
        report.skip(&format!("mount -t tracefs tracefs {TRACEFS}"), "needs root");
        return Ok(());
    }
    cmd::run(Command::new("mount").args(["-t", "tracefs", "tracefs", TRACEFS]))
        .context("cannot mount tracefs; is the kernel built with CONFIG_FTRACE?")?;
    if !Path::new(TRACEPOINT_FORMAT).exists() {
        bail!(
            "tracefs is mounted at {TRACEFS} but {TRACEPOINT_FORMAT} is still absent: the kernel \
             lacks tracepoints (CONFIG_FTRACE, CONFIG_TRACEPOINTS) or is older than 4.16; \
             geoip-exporter needs a kernel with the sock:inet_sock_set_state tracepoint"
        );
    }
    ok(&format!("mounted; {TRACEPOINT_FORMAT} is there"));
    Ok(())
}

/// Mounts bpffs at `/sys/fs/bpf` unless it is mounted there.
pub(super) fn bpffs(root: bool, report: &mut Report) -> Result<()> {
    step(&format!("bpffs at {BPFFS}"));
    let mounts = fs::read_to_string("/proc/mounts")
        .context("cannot read /proc/mounts; is /proc mounted?")?;
    if is_mounted(&mounts, BPFFS, "bpf") {
        ok("already mounted");
        return Ok(());
    }
    eprintln!("    not mounted: mounting it");
    if !root {
        report.skip(&format!("mount -t bpf bpf {BPFFS}"), "needs root");
        return Ok(());
    }
    cmd::run(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS])).context(
        "cannot mount bpffs; is the kernel built with CONFIG_BPF_SYSCALL, and does /sys/fs/bpf exist?",
    )?;
    ok("mounted");
    Ok(())
}

/// Warns when the kernel exposes no BTF (aya then cannot relocate CO-RE accesses).
pub(super) fn btf(report: &mut Report) {
    step(&format!("kernel BTF at {BTF}"));
    if Path::new(BTF).exists() {
        ok("present");
    } else {
        report.warn(format!(
            "{BTF} is absent: the kernel was built without CONFIG_DEBUG_INFO_BTF; the exporter \
             may fail to load"
        ));
    }
}

/// Whether `/proc/mounts` text has a mount of type `fstype` at `target`.
fn is_mounted(mounts: &str, target: &str, fstype: &str) -> bool {
    mounts.lines().any(|line| {
        let mut fields = line.split_whitespace().skip(1);
        fields.next() == Some(target) && fields.next() == Some(fstype)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_bpffs_in_proc_mounts() {
        let mounts = "sysfs /sys sysfs rw,nosuid 0 0\n\
                      bpf /sys/fs/bpf bpf rw,nosuid,nodev,noexec,relatime,mode=700 0 0\n";
        assert!(is_mounted(mounts, "/sys/fs/bpf", "bpf"));
        assert!(!is_mounted(mounts, "/sys/fs/bpf", "tmpfs"));
        let elsewhere = "none /mnt/bpf bpf rw 0 0\ntmpfs /sys/fs/bpf tmpfs rw 0 0\n";
        assert!(!is_mounted(elsewhere, "/sys/fs/bpf", "bpf"));
    }
}
