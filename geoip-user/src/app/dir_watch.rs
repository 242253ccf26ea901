//! Watching the directories of the database files (inotify): any file
//! created, written, moved or deleted there is a reason to look at the
//! files again. A directory that goes away (an updater that replaces the
//! whole directory, a volume remounted) loses its watch; that is logged,
//! and the directory is looked for again every [`LOST_RETRY`] until it is
//! back, when the watch is made again and the files looked at (a new one
//! may already be there).

use std::{
    collections::HashMap,
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::io::{Interest, unix::AsyncFd};

/// Quiet time after the last change in a directory before the files are
/// read: a copy in progress is not read half-written.
const SETTLE: Duration = Duration::from_millis(300);

/// How often a directory whose watch was lost is looked for.
const LOST_RETRY: Duration = Duration::from_secs(1);

/// What a directory's watch listens for.
const MASK: u32 = libc::IN_CLOSE_WRITE
    | libc::IN_MOVED_TO
    | libc::IN_MOVED_FROM
    | libc::IN_CREATE
    | libc::IN_DELETE
    | libc::IN_ATTRIB
    | libc::IN_DELETE_SELF
    | libc::IN_MOVE_SELF;

/// inotify on the directories of some files.
pub(super) struct DirWatch {
    fd: AsyncFd<OwnedFd>,
    /// Watched directories by watch descriptor.
    watched: HashMap<i32, PathBuf>,
    /// Directories whose watch was lost, looked for again.
    lost: Vec<PathBuf>,
    /// A change was seen but not yet reported (its settling was cut short
    /// by the caller): the next [`DirWatch::changed`] reports it without
    /// waiting for another.
    pending: bool,
}

/// The directory a file is in.
fn dir_of(file: &Path) -> PathBuf {
    match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    }
}

impl DirWatch {
    /// Watch the directories of `files` (each once).
    pub(super) fn new(files: &[PathBuf]) -> io::Result<Self> {
        // SAFETY: plain inotify_init1(2); the result is checked.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: the descriptor is owned by the AsyncFd and neither
        // replaced nor closed while registered.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        let mut watch = Self {
            fd,
            watched: HashMap::new(),
            lost: Vec::new(),
            pending: false,
        };
        for file in files {
            let dir = dir_of(file);
            if !watch.watched.values().any(|d| *d == dir) {
                let wd = watch.add(&dir)?;
                watch.watched.insert(wd, dir);
            }
        }
        Ok(watch)
    }

    fn add(&self, dir: &Path) -> io::Result<i32> {
        let path = CString::new(dir.as_os_str().as_bytes()).map_err(io::Error::other)?;
        // SAFETY: a valid descriptor and a NUL-terminated path.
        let wd = unsafe { libc::inotify_add_watch(self.fd.as_raw_fd(), path.as_ptr(), MASK) };
        if wd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(wd)
    }

    /// Wait for a change (or for a lost directory to be back), then for
    /// [`SETTLE`] without one. Cancel-safe: a change seen by a call that
    /// is dropped while settling is reported by the next call.
    pub(super) async fn changed(&mut self) -> io::Result<()> {
        if !self.pending {
            self.next_change().await?;
            self.pending = true;
        }
        while let Ok(result) = tokio::time::timeout(SETTLE, self.next_change()).await {
            result?;
        }
        self.pending = false;
        Ok(())
    }

    /// Wait until the kernel queued events (handling those that say a
    /// watch is lost), or a lost directory is watched again.
    async fn next_change(&mut self) -> io::Result<()> {
        loop {
            let retry = !self.lost.is_empty();
            tokio::select! {
                read = self.read_events() => {
                    if read? {
                        return Ok(());
                    }
                }
                () = tokio::time::sleep(LOST_RETRY), if retry => {
                    if self.rewatch() {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Read the queued events; whether any was a change (not only the end
    /// of a watch).
    async fn read_events(&mut self) -> io::Result<bool> {
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
            if let Ok(n) = usize::try_from(n)
                && n > 0
            {
                return Ok(self.handle(&buf[..n]));
            }
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::WouldBlock {
                guard.clear_ready();
            } else if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }

    /// Handle a buffer of `struct inotify_event`s; whether any was a
    /// change.
    fn handle(&mut self, mut events: &[u8]) -> bool {
        const HEADER: usize = 16;
        let mut changed = false;
        while events.len() >= HEADER {
            let word = |at: usize| {
                u32::from_ne_bytes([events[at], events[at + 1], events[at + 2], events[at + 3]])
            };
            let wd = i32::from_ne_bytes(word(0).to_ne_bytes());
            let mask = word(4);
            let len = usize::try_from(word(12)).unwrap_or(usize::MAX);
            events = events.get(HEADER.saturating_add(len)..).unwrap_or_default();
            if mask & libc::IN_MOVE_SELF != 0 {
                // The directory moved away: its watch would follow it to
                // where the files are not looked for. End it (the kernel
                // then queues IN_IGNORED, which finds it gone) and look
                // for the path again.
                // SAFETY: a valid descriptor and a watch it holds.
                unsafe { libc::inotify_rm_watch(self.fd.as_raw_fd(), wd) };
                self.lose(wd);
                changed = true;
            } else if mask & libc::IN_IGNORED != 0 {
                // The watch is gone: its directory was removed or
                // unmounted.
                self.lose(wd);
                changed = true;
            } else if mask & libc::IN_DELETE_SELF == 0 {
                changed = true;
            }
        }
        changed
    }

    /// The watch `wd` ended: its directory is looked for again.
    fn lose(&mut self, wd: i32) {
        if let Some(dir) = self.watched.remove(&wd) {
            tracing::warn!(
                dir = %dir.display(),
                "the directory of a GeoIP database is gone (removed, moved or unmounted): its files are no longer watched; watching it again once it is back (SIGHUP reloads meanwhile)"
            );
            self.lost.push(dir);
        }
    }

    /// Watch again the lost directories that are back; whether any is.
    fn rewatch(&mut self) -> bool {
        let mut back = false;
        let lost = std::mem::take(&mut self.lost);
        for dir in lost {
            match self.add(&dir) {
                Ok(wd) => {
                    tracing::info!(dir = %dir.display(), "the directory of a GeoIP database is back: watching it again");
                    self.watched.insert(wd, dir);
                    back = true;
                }
                Err(_) => self.lost.push(dir),
            }
        }
        back
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("geoip-watch-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    async fn changed_within(watch: &mut DirWatch, secs: u64) -> bool {
        tokio::time::timeout(Duration::from_secs(secs), watch.changed())
            .await
            .is_ok_and(|r| r.is_ok())
    }

    #[tokio::test]
    async fn a_rename_into_the_directory_is_seen_and_settles() {
        let dir = dir("rename");
        let file = dir.join("db.mmdb");
        std::fs::write(&file, b"one").unwrap();
        let mut watch = DirWatch::new(std::slice::from_ref(&file)).unwrap();
        let staged = dir.join("db.mmdb.new");
        std::fs::write(&staged, b"two!").unwrap();
        std::fs::rename(&staged, &file).unwrap();
        assert!(changed_within(&mut watch, 5).await, "a change within 5 s");
        // Nothing more happens: no further change is reported.
        assert!(!changed_within(&mut watch, 1).await);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// How Kubernetes updates a mounted `ConfigMap`: `db -> ..data/db`, and
    /// `..data` (a symlink to a timestamped directory) replaced by rename.
    #[tokio::test]
    async fn a_configmap_style_symlink_swap_is_seen() {
        use std::os::unix::fs::symlink;
        let dir = dir("configmap");
        for (sub, text) in [("v1", "one"), ("v2", "two, longer")] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
            std::fs::write(dir.join(sub).join("db.mmdb"), text).unwrap();
        }
        symlink("v1", dir.join("..data")).unwrap();
        symlink("..data/db.mmdb", dir.join("db.mmdb")).unwrap();
        let file = dir.join("db.mmdb");
        let mut watch = DirWatch::new(std::slice::from_ref(&file)).unwrap();
        symlink("v2", dir.join("..data_tmp")).unwrap();
        std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
        assert!(
            changed_within(&mut watch, 5).await,
            "the swap is seen within 5 s"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The directory deleted and made again: its loss is seen, then its
    /// return, then changes in it as before.
    #[tokio::test]
    async fn a_directory_removed_and_made_again_is_watched_again() {
        let parent = dir("swap");
        let sub = parent.join("db");
        std::fs::create_dir_all(&sub).unwrap();
        let file = sub.join("db.mmdb");
        std::fs::write(&file, b"one").unwrap();
        let mut watch = DirWatch::new(std::slice::from_ref(&file)).unwrap();
        std::fs::remove_dir_all(&sub).unwrap();
        assert!(
            changed_within(&mut watch, 5).await,
            "the removal is a change"
        );
        assert_eq!(watch.lost, std::slice::from_ref(&sub));
        std::fs::create_dir_all(&sub).unwrap();
        assert!(
            changed_within(&mut watch, 5).await,
            "its return is a change"
        );
        assert!(watch.lost.is_empty());
        std::fs::write(&file, b"two").unwrap();
        assert!(
            changed_within(&mut watch, 5).await,
            "a file in it is seen again"
        );
        std::fs::remove_dir_all(&parent).unwrap();
    }

    /// The directory renamed away and another made at its path (how some
    /// updaters swap a whole directory): the new one is watched.
    #[tokio::test]
    async fn a_directory_moved_away_is_looked_for_at_its_path() {
        let parent = dir("moved");
        let sub = parent.join("db");
        std::fs::create_dir_all(&sub).unwrap();
        let file = sub.join("db.mmdb");
        std::fs::write(&file, b"one").unwrap();
        let mut watch = DirWatch::new(std::slice::from_ref(&file)).unwrap();
        std::fs::rename(&sub, parent.join("old")).unwrap();
        assert!(changed_within(&mut watch, 5).await, "the move is a change");
        assert_eq!(watch.lost, std::slice::from_ref(&sub));
        std::fs::create_dir_all(&sub).unwrap();
        assert!(changed_within(&mut watch, 5).await, "the new one is seen");
        // A write in the moved-away directory is not a change any more; one
        // in the new directory is.
        std::fs::write(parent.join("old").join("db.mmdb"), b"old").unwrap();
        assert!(!changed_within(&mut watch, 1).await);
        std::fs::write(&file, b"two").unwrap();
        assert!(changed_within(&mut watch, 5).await, "a file in the new one");
        std::fs::remove_dir_all(&parent).unwrap();
    }

    /// A call dropped while the change settles (the event loop's select
    /// took another branch) does not lose the change.
    #[tokio::test]
    async fn a_change_seen_by_a_dropped_call_is_reported_by_the_next() {
        let dir = dir("cancel");
        let file = dir.join("db.mmdb");
        std::fs::write(&file, b"one").unwrap();
        let mut watch = DirWatch::new(std::slice::from_ref(&file)).unwrap();
        std::fs::write(&file, b"two").unwrap();
        // Long enough to see the event, shorter than SETTLE.
        let cut = tokio::time::timeout(Duration::from_millis(100), watch.changed()).await;
        assert!(cut.is_err(), "the call was cut while settling");
        assert!(
            changed_within(&mut watch, 1).await,
            "and the next reports it"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
