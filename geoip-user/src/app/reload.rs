//! Reloading the GeoIP databases without a restart: on SIGHUP, and when a
//! file changes (inotify on its directory, so an atomic rename by
//! geoipupdate, an in-place copy and the symlink swap of a Kubernetes `ConfigMap` are
//! all seen).
//!
//! Every database is opened and checked again on a blocking thread while
//! the old ones keep serving; only a set that opens as at start-up (a
//! country database, and the ASN and city databases `--labels` needs) is
//! handed to the event loop, which swaps it in between two batches. A
//! failed reload changes nothing but `geoip_exporter_database_reloads_total
//! {result="failure"}` and the log.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::{ffi::OsStrExt as _, fs::MetadataExt as _},
    },
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};

use crate::{
    geo::{Databases, Wants},
    metrics::Metrics,
    web::AppState,
};

/// Quiet time after the last change in the directory before the file is
/// read: a copy in progress is not read half-written.
const SETTLE: Duration = Duration::from_millis(300);

/// What identifies one version of the file: a rename or a rewrite changes
/// at least one of these.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileVersion {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
}

/// The versions of every file of `paths`.
fn versions(paths: &[PathBuf]) -> Vec<Option<FileVersion>> {
    paths.iter().map(|p| version(p)).collect()
}

fn version(path: &Path) -> Option<FileVersion> {
    let m = std::fs::metadata(path).ok()?;
    Some(FileVersion {
        dev: m.dev(),
        ino: m.ino(),
        size: m.size(),
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
    })
}

/// Watches for reasons to reload and reloads; runs until aborted.
pub(crate) struct Reloader {
    pub(crate) paths: Vec<PathBuf>,
    pub(crate) wants: Wants,
    pub(crate) to_tracker: mpsc::Sender<Databases>,
    pub(crate) metrics: Metrics,
    pub(crate) state: AppState,
}

impl Reloader {
    /// Watch and reload until aborted.
    pub(crate) async fn watch(self) {
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for SIGHUP; the database reloads only when its file changes");
                None
            }
        };
        let mut watch = match DirWatch::new(&self.paths) {
            Ok(w) => Some(w),
            Err(err) => {
                tracing::warn!(error = %err, "cannot watch the databases' directories; reload them with SIGHUP");
                None
            }
        };
        let mut last = versions(&self.paths);
        loop {
            tokio::select! {
                signalled = recv_hangup(hangup.as_mut()) => {
                    if signalled.is_none() {
                        hangup = None;
                        continue;
                    }
                    tracing::info!("SIGHUP received: reloading the GeoIP databases");
                    last = versions(&self.paths);
                    self.reload().await;
                }
                changed = wait_changed(watch.as_mut()) => {
                    if let Err(err) = changed {
                        tracing::warn!(error = %err, "watching the databases' directories failed; reload them with SIGHUP");
                        watch = None;
                        continue;
                    }
                    let now = versions(&self.paths);
                    if now.iter().all(Option::is_some) && now != last {
                        let changed = self
                            .paths
                            .iter()
                            .zip(now.iter().zip(&last))
                            .filter(|(_, (n, l))| n != l)
                            .map(|(p, _)| p.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ");
                        tracing::info!(changed, "a GeoIP database file changed: reloading");
                        last = now;
                        self.reload().await;
                    }
                }
            }
        }
    }

    async fn reload(&self) {
        let (paths, wants) = (self.paths.clone(), self.wants);
        let opened = tokio::task::spawn_blocking(move || Databases::open(&paths, wants)).await;
        match opened {
            Ok(Ok(dbs)) => {
                let info = dbs.country.info().clone();
                if self.to_tracker.send(dbs).await.is_err() {
                    return;
                }
                self.state.set_database(&info);
                self.metrics.database_reloaded(Some(info.build_epoch));
                tracing::info!(
                    path = %info.path.display(),
                    database_type = %info.database_type,
                    build_epoch = info.build_epoch,
                    "GeoIP databases reloaded; connections that open from now on use them"
                );
            }
            Ok(Err(err)) => {
                self.metrics.database_reloaded(None);
                tracing::error!(error = %crate::error::chain(&err), "reloading the GeoIP databases failed; still using the previous ones");
            }
            Err(err) => {
                self.metrics.database_reloaded(None);
                tracing::error!(error = %err, "reloading the GeoIP databases failed; still using the previous ones");
            }
        }
    }
}

async fn recv_hangup(hangup: Option<&mut tokio::signal::unix::Signal>) -> Option<()> {
    match hangup {
        Some(h) => h.recv().await,
        None => std::future::pending().await,
    }
}

async fn wait_changed(watch: Option<&mut DirWatch>) -> io::Result<()> {
    match watch {
        Some(w) => w.changed().await,
        None => std::future::pending().await,
    }
}

/// inotify on the directories of some files: any file created, written,
/// moved or deleted there.
struct DirWatch {
    fd: AsyncFd<OwnedFd>,
}

impl DirWatch {
    fn new(files: &[PathBuf]) -> io::Result<Self> {
        // SAFETY: plain inotify_init1(2); the result is checked.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mask = libc::IN_CLOSE_WRITE
            | libc::IN_MOVED_TO
            | libc::IN_MOVED_FROM
            | libc::IN_CREATE
            | libc::IN_DELETE
            | libc::IN_ATTRIB;
        for file in files {
            let dir = match file.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            let dir = CString::new(dir.as_os_str().as_bytes()).map_err(io::Error::other)?;
            // SAFETY: valid descriptor and NUL-terminated path (a directory
            // watched twice is one watch).
            if unsafe { libc::inotify_add_watch(fd.as_raw_fd(), dir.as_ptr(), mask) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        // SAFETY: the descriptor is owned by the AsyncFd and neither
        // replaced nor closed while registered.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(Self { fd })
    }

    /// Wait for a change, then for [`SETTLE`] without one.
    async fn changed(&mut self) -> io::Result<()> {
        self.next_event().await?;
        loop {
            match tokio::time::timeout(SETTLE, self.next_event()).await {
                Ok(result) => result?,
                Err(_) => return Ok(()),
            }
        }
    }

    /// Wait until the kernel has queued events, and consume them.
    async fn next_event(&mut self) -> io::Result<()> {
        let mut buf = [0u8; 4096];
        loop {
            let mut guard = self.fd.readable_mut().await?;
            // SAFETY: reading into a buffer valid for its length.
            let n = unsafe {
                libc::read(
                    guard.get_inner().as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            };
            if n > 0 {
                return Ok(());
            }
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::WouldBlock {
                guard.clear_ready();
            } else if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_rename_into_the_directory_is_seen_and_settles() {
        let dir = std::env::temp_dir().join(format!("geoip-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("db.mmdb");
        std::fs::write(&file, b"one").unwrap();
        let before = version(&file);
        let mut watch = DirWatch::new(std::slice::from_ref(&file)).unwrap();
        let staged = dir.join("db.mmdb.new");
        std::fs::write(&staged, b"two!").unwrap();
        std::fs::rename(&staged, &file).unwrap();
        tokio::time::timeout(Duration::from_secs(5), watch.changed())
            .await
            .expect("a change within 5 s")
            .unwrap();
        assert_ne!(version(&file), before);
        // Nothing more happens: no further change is reported.
        assert!(
            tokio::time::timeout(Duration::from_millis(500), watch.changed())
                .await
                .is_err()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// How Kubernetes updates a mounted `ConfigMap`: `db -> ..data/db`, and
    /// `..data` (a symlink to a timestamped directory) replaced by rename.
    #[tokio::test]
    async fn a_configmap_style_symlink_swap_is_seen() {
        use std::os::unix::fs::symlink;
        let dir = std::env::temp_dir().join(format!("geoip-reload-cm-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (sub, text) in [("v1", "one"), ("v2", "two, longer")] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
            std::fs::write(dir.join(sub).join("db.mmdb"), text).unwrap();
        }
        symlink("v1", dir.join("..data")).unwrap();
        symlink("..data/db.mmdb", dir.join("db.mmdb")).unwrap();
        let file = dir.join("db.mmdb");
        let before = version(&file);
        let mut watch = DirWatch::new(std::slice::from_ref(&file)).unwrap();
        symlink("v2", dir.join("..data_tmp")).unwrap();
        std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
        tokio::time::timeout(Duration::from_secs(5), watch.changed())
            .await
            .expect("the swap is seen within 5 s")
            .unwrap();
        assert_ne!(version(&file), before, "the file behind the link changed");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
