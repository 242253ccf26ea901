//! Booting one kernel under qemu with this machine's root filesystem
//! (virtiofs, read-only, a tmpfs overlay on top: the guest writes nothing
//! back), running one script as root, and powering off. Three serial
//! ports carry the console, the script's output and its exit status to
//! files; the output is shown as it comes, each line prefixed.

use std::{
    fs,
    io::{Read as _, Seek as _, SeekFrom, Write as _},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::kernels::Kernel;

const VIRTIOFSD: &str = "/usr/lib/qemu/virtiofsd";

/// Run by the initramfs after it switched root: the file systems the
/// tests need, the kernel's modules where modprobe looks, loopback up;
/// then the script of `vmcmd=` with its output and status on the second
/// and third serial ports, and power off.
const GUEST_INIT: &str = r#"#!/bin/sh
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run
mount -t tracefs tracefs /sys/kernel/tracing
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
arg() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" /proc/cmdline; }
release=$(uname -r)
mkdir -p "/lib/modules/$release"
mount --bind "$(arg vmmodules)" "/lib/modules/$release"
ip link set lo up
sh "$(arg vmcmd)" > /dev/ttyS1 2>&1
echo $? > /dev/ttyS2
sync
echo o > /proc/sysrq-trigger
sleep 30
"#;

/// One boot.
pub(crate) struct Boot<'a> {
    pub(crate) kernel: &'a Kernel,
    pub(crate) initramfs: &'a Path,
    /// The script run inside (a host path: the guest sees the host's files).
    pub(crate) script: &'a Path,
    /// Where the sockets and serial files go.
    pub(crate) dir: &'a Path,
    /// Given up after this long.
    pub(crate) timeout: Duration,
}

/// What a boot gave.
#[derive(Debug)]
pub(crate) struct Outcome {
    /// The script's output.
    pub(crate) output: String,
    /// Its exit status; `None` when it did not end (timeout, crash).
    pub(crate) status: Option<i32>,
    /// The kernel's console, for when it did not.
    pub(crate) console: PathBuf,
    pub(crate) elapsed: Duration,
}

/// How qemu runs guests here: KVM where it is real, else software
/// emulation (`/dev/kvm` of `kvm_pvm` runs only PVM guests).
fn accel() -> [&'static str; 4] {
    let real_kvm = Path::new("/dev/kvm").exists() && !Path::new("/sys/module/kvm_pvm").exists();
    if real_kvm && std::env::var_os("GEOIP_VM_TCG").is_none() {
        ["-accel", "kvm", "-cpu", "host"]
    } else {
        ["-accel", "tcg", "-cpu", "max"]
    }
}

/// Whether guests run under KVM on this machine.
pub(crate) fn uses_kvm() -> bool {
    accel()[1] == "kvm"
}

impl Boot<'_> {
    pub(crate) fn run(&self, prefix: &str) -> Result<Outcome> {
        fs::create_dir_all(self.dir)?;
        let guest_init = self.dir.join("guest-init.sh");
        fs::write(&guest_init, GUEST_INIT)?;
        let files = ["console", "out", "status", "virtiofsd.log"].map(|n| self.dir.join(n));
        for f in &files {
            fs::write(f, "")?;
        }
        // Short, whatever the target directory: a socket's path has at
        // most 107 bytes.
        let socket = std::env::temp_dir().join(format!("geoip-vm-{}.sock", std::process::id()));
        let _ = fs::remove_file(&socket);
        let mut virtiofsd = Self::virtiofsd(&socket, &files[3])?;
        let started = Instant::now();
        let result = self.qemu(&socket, &guest_init, &files, prefix);
        let _ = virtiofsd.kill();
        let _ = virtiofsd.wait();
        let _ = fs::remove_file(&socket);
        let ended = result?;
        let status = fs::read_to_string(&files[2])?.trim().parse().ok();
        Ok(Outcome {
            output: String::from_utf8_lossy(&fs::read(&files[1]).unwrap_or_default()).into_owned(),
            status: if ended { status } else { None },
            console: files[0].clone(),
            elapsed: started.elapsed(),
        })
    }

    /// virtiofsd sharing `/`, its socket at `socket` once it listens.
    fn virtiofsd(socket: &Path, log: &Path) -> Result<Child> {
        let mut child = Command::new(VIRTIOFSD)
            .arg(format!("--socket-path={}", socket.display()))
            // The default sandbox's pivot_root fails where `/` is a chroot.
            .args(["-o", "source=/", "-o", "sandbox=chroot", "-o", "cache=auto"])
            .stdin(Stdio::null())
            .stdout(fs::File::create(log)?)
            .stderr(fs::File::options().append(true).open(log)?)
            .die_with_parent()
            .spawn()
            .with_context(|| {
                format!("starting {VIRTIOFSD} (install qemu-system-x86: cargo xtask setup)")
            })?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "virtiofsd exited ({status}) before listening: {}",
                    fs::read_to_string(log).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "virtiofsd did not listen on {} within 10 s",
                    socket.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(child)
    }

    /// Boot and wait for the guest to power off; whether it did in time.
    fn qemu(
        &self,
        socket: &Path,
        guest_init: &Path,
        files: &[PathBuf; 4],
        prefix: &str,
    ) -> Result<bool> {
        let append = format!(
            "console=ttyS0 panic=-1 quiet vminit={} vmmodules={} vmcmd={}",
            guest_init.display(),
            self.kernel.modules().display(),
            self.script.display()
        );
        let serial = |f: &PathBuf| format!("file:{}", f.display());
        let mut qemu = Command::new("qemu-system-x86_64");
        qemu.args(accel())
            .args(["-smp", "2", "-m", "1536M", "-nographic", "-no-reboot"])
            .arg("-kernel")
            .arg(self.kernel.vmlinuz())
            .arg("-initrd")
            .arg(self.initramfs)
            .args(["-append", &append])
            .args(["-object", "memory-backend-memfd,id=mem,size=1536M,share=on"])
            .args(["-numa", "node,memdev=mem"])
            .args([
                "-chardev",
                &format!("socket,id=vfs,path={}", socket.display()),
            ])
            .args(["-device", "vhost-user-fs-pci,chardev=vfs,tag=host"])
            .args(["-serial", &serial(&files[0])])
            .args(["-serial", &serial(&files[1])])
            .args(["-serial", &serial(&files[2])])
            .args(["-monitor", "none"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::options().append(true).open(&files[0])?)
            .die_with_parent();
        crate::cmd::announce(&qemu);
        let mut child = qemu
            .spawn()
            .context("starting qemu-system-x86_64 (install qemu-system-x86: cargo xtask setup)")?;
        let deadline = Instant::now() + self.timeout;
        let mut shown = Tail::default();
        loop {
            shown.show(&files[1], prefix);
            if child.try_wait()?.is_some() {
                shown.show(&files[1], prefix);
                shown.flush(prefix);
                return Ok(true);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                shown.flush(prefix);
                eprintln!(
                    "{prefix} the guest did not power off within {:?}; stopped",
                    self.timeout
                );
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Ending a child when this process ends, however it ends (a CI job
/// killed at its timeout must not leave a guest running).
trait DieWithParent {
    fn die_with_parent(&mut self) -> &mut Self;
}

impl DieWithParent for Command {
    fn die_with_parent(&mut self) -> &mut Self {
        // SAFETY: the closure runs in the child between fork and exec and
        // only calls prctl(2), which is async-signal-safe.
        unsafe {
            self.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
        }
    }
}

/// What of a growing file has been shown.
#[derive(Default)]
struct Tail {
    offset: u64,
    partial: String,
}

impl Tail {
    /// Show the whole lines added to `path` since the last call.
    fn show(&mut self, path: &Path, prefix: &str) {
        let Ok(mut file) = fs::File::open(path) else {
            return;
        };
        let mut bytes = Vec::new();
        if file.seek(SeekFrom::Start(self.offset)).is_err() || file.read_to_end(&mut bytes).is_err()
        {
            return;
        }
        self.offset += bytes.len() as u64;
        self.partial
            .push_str(&String::from_utf8_lossy(&bytes).replace('\r', ""));
        let mut err = std::io::stderr().lock();
        while let Some(end) = self.partial.find('\n') {
            let _ = writeln!(err, "{prefix} {}", &self.partial[..end]);
            self.partial.drain(..=end);
        }
    }

    fn flush(&mut self, prefix: &str) {
        if !self.partial.is_empty() {
            eprintln!("{prefix} {}", std::mem::take(&mut self.partial));
        }
    }
}
