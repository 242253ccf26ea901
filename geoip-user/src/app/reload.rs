//! Reloading the GeoIP databases without a restart: on SIGHUP (also one
//! that came during start-up, before this task listened), and when a file
//! changes (see [`super::dir_watch`]: an atomic rename by geoipupdate, an
//! in-place copy and the symlink swap of a Kubernetes `ConfigMap` are all
//! seen).
//!
//! Every database is opened and checked again on a blocking thread while
//! the old ones keep serving; only a set that opens as at start-up (a
//! country database, and the ASN and city databases `--labels` needs) is
//! handed to the event loop, which swaps it in between two batches. A
//! failed reload changes nothing but `geoip_exporter_database_reloads_total
//! {result="failure"}` and the log.
//!
//! One reload runs at a time; a reason to reload that comes meanwhile is
//! kept, and one reload follows the running one. A reload that takes
//! longer than [`RELOAD_TIMEOUT`] is given up: it counts as failed, is
//! told to stop (the flattening looks), and no longer holds back the next.

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
    task::JoinHandle,
    time::Instant,
};

use super::{dir_watch::DirWatch, signals};
use crate::{
    geo::{Databases, OpenError, Wants},
    metrics::Metrics,
    web::AppState,
};

/// The longest a reload may take: reading and flattening the largest
/// databases takes seconds.
pub(super) const RELOAD_TIMEOUT: Duration = Duration::from_mins(2);

/// Given-up reloads still running (in a read that does not return) past
/// which no new one starts: each holds a blocking thread.
const MAX_STUCK: usize = 2;

/// How often a reload held back by stuck ones is tried again.
const STUCK_RETRY: Duration = Duration::from_secs(5);

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
    /// [`RELOAD_TIMEOUT`], shorter in tests.
    pub(crate) timeout: Duration,
    /// How the databases are opened: [`Databases::open_until`] (in tests,
    /// slower ones).
    pub(crate) open: Opener,
}

/// Opens the databases of `paths` as `wants` says, giving up when the flag
/// is set.
pub(crate) type Opener = fn(&[PathBuf], Wants, &AtomicBool) -> Result<Databases, OpenError>;

/// How a reload under way ended.
enum Ended {
    Opened(Box<Databases>),
    /// It failed: the error as the log says it.
    Failed(String),
    /// It was given up at its deadline, and told to stop.
    GivenUp(JoinHandle<Result<Databases, OpenError>>),
}

/// A reload under way.
struct Job {
    opened: JoinHandle<Result<Databases, OpenError>>,
    /// Set when it is given up.
    stop: Arc<AtomicBool>,
    deadline: Instant,
}

impl Reloader {
    /// Watch and reload until aborted.
    pub(crate) async fn watch(self) {
        let (mut hangup, mut watch) = self.listen();
        // A SIGHUP during start-up was held for now.
        let mut wanted = signals::take_early_hangup();
        if wanted {
            tracing::info!("SIGHUP received during start-up: reloading the GeoIP databases");
        }
        let mut last = versions(&self.paths);
        let mut job: Option<Job> = None;
        let mut stuck: Vec<JoinHandle<Result<Databases, OpenError>>> = Vec::new();
        // When a reload held back by stuck ones is tried again.
        let mut held: Option<Instant> = None;
        loop {
            if wanted && job.is_none() && held.is_none() {
                match self.start(&mut stuck) {
                    Some(started) => {
                        wanted = false;
                        job = Some(started);
                    }
                    None => held = Some(Instant::now() + STUCK_RETRY),
                }
            }
            tokio::select! {
                signalled = recv_hangup(hangup.as_mut()) => {
                    if signalled.is_none() {
                        hangup = None;
                        continue;
                    }
                    tracing::info!("SIGHUP received: reloading the GeoIP databases");
                    last = versions(&self.paths);
                    wanted = true;
                }
                changed = wait_changed(watch.as_mut()) => {
                    if let Err(err) = changed {
                        tracing::warn!(error = %err, "watching the databases' directories failed; reload them with SIGHUP");
                        watch = None;
                        continue;
                    }
                    let now = versions(&self.paths);
                    if now.iter().all(Option::is_some) && now != last {
                        tracing::info!(changed = self.changed(&now, &last), "a GeoIP database file changed: reloading");
                        last = now;
                        wanted = true;
                    }
                }
                ended = wait(&mut job), if job.is_some() => {
                    // Handled here, not in the awaited future: an event
                    // of another branch cannot cut it short.
                    self.conclude(ended, &mut stuck).await;
                }
                () = sleep_until(held), if held.is_some() => held = None,
            }
            if wanted && job.is_some() {
                tracing::debug!("a reload is under way; another follows it");
            }
        }
    }

    /// SIGHUP and the databases' directories, each if it can be listened
    /// to (else the other way to reload is said).
    fn listen(&self) -> (Option<tokio::signal::unix::Signal>, Option<DirWatch>) {
        let hangup = signal(SignalKind::hangup())
            .inspect_err(|err| tracing::warn!(error = %err, "cannot listen for SIGHUP; the database reloads only when its file changes"))
            .ok();
        let watch = DirWatch::new(&self.paths)
            .inspect_err(|err| tracing::warn!(error = %err, "cannot watch the databases' directories; reload them with SIGHUP"))
            .ok();
        (hangup, watch)
    }

    /// The files of `paths` whose version differs between `now` and `last`.
    fn changed(&self, now: &[Option<FileVersion>], last: &[Option<FileVersion>]) -> String {
        self.paths
            .iter()
            .zip(now.iter().zip(last))
            .filter(|(_, (n, l))| n != l)
            .map(|(p, _)| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Start a reload on a blocking thread, unless too many given-up ones
    /// are still stuck (then it is counted as failed and the caller tries
    /// again later).
    fn start(&self, stuck: &mut Vec<JoinHandle<Result<Databases, OpenError>>>) -> Option<Job> {
        stuck.retain(|j| !j.is_finished());
        if stuck.len() >= MAX_STUCK {
            self.metrics.database_reloaded(None);
            tracing::error!(
                stuck = stuck.len(),
                retry_in = ?STUCK_RETRY,
                "not reloading the GeoIP databases yet: earlier reloads given up are still stuck reading them (a file system that does not answer?); still using the previous ones, trying again once they end"
            );
            return None;
        }
        let (paths, wants, open) = (self.paths.clone(), self.wants, self.open);
        let stop = Arc::new(AtomicBool::new(false));
        let stop_it = stop.clone();
        let opened = tokio::task::spawn_blocking(move || open(&paths, wants, &stop_it));
        Some(Job {
            opened,
            stop,
            deadline: Instant::now() + self.timeout,
        })
    }

    /// Count and log how a reload ended; hand new databases on.
    async fn conclude(
        &self,
        ended: Ended,
        stuck: &mut Vec<JoinHandle<Result<Databases, OpenError>>>,
    ) {
        match ended {
            Ended::Opened(dbs) => self.apply(*dbs).await,
            Ended::Failed(error) => {
                self.metrics.database_reloaded(None);
                tracing::error!(%error, "reloading the GeoIP databases failed; still using the previous ones");
            }
            Ended::GivenUp(opened) => {
                self.metrics.database_reloaded(None);
                tracing::error!(
                    timeout = ?self.timeout,
                    "reloading the GeoIP databases did not finish in time and is given up; still using the previous ones"
                );
                stuck.push(opened);
            }
        }
    }

    /// Hand the reloaded `dbs` to the event loop.
    async fn apply(&self, dbs: Databases) {
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
}

/// Wait for the reload under way (`job`, taken when it ends) to end, or
/// give it up at its deadline. Cancel-safe: dropped before either, the job
/// stays as it was.
async fn wait(job: &mut Option<Job>) -> Ended {
    let Some(running) = job.as_mut() else {
        return std::future::pending().await;
    };
    let ended = tokio::time::timeout_at(running.deadline, &mut running.opened).await;
    let Some(running) = job.take() else {
        return std::future::pending().await;
    };
    match ended {
        Ok(Ok(Ok(dbs))) => Ended::Opened(Box::new(dbs)),
        Ok(Ok(Err(err))) => Ended::Failed(crate::error::chain(&err)),
        Ok(Err(err)) => Ended::Failed(err.to_string()),
        Err(_) => {
            running.stop.store(true, Ordering::Relaxed);
            Ended::GivenUp(running.opened)
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn recv_hangup(hangup: Option<&mut tokio::signal::unix::Signal>) -> Option<()> {
    match hangup {
        Some(h) => h.recv().await,
        None => std::future::pending().await,
    }
}

async fn wait_changed(watch: Option<&mut DirWatch>) -> std::io::Result<()> {
    match watch {
        Some(w) => w.changed().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::geo::DatabaseInfo;

    /// Opens nothing: waits until told to stop (or 5 s), then says so.
    fn until_stopped(
        paths: &[PathBuf],
        _: Wants,
        stop: &AtomicBool,
    ) -> Result<Databases, OpenError> {
        let started = std::time::Instant::now();
        while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(5));
        }
        Err(OpenError::GivenUp {
            path: paths[0].clone(),
        })
    }

    /// Stuck: does not look at the flag (a read that does not return).
    fn never_returns(paths: &[PathBuf], _: Wants, _: &AtomicBool) -> Result<Databases, OpenError> {
        static RUNS: AtomicUsize = AtomicUsize::new(0);
        RUNS.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(Duration::from_secs(2));
        Err(OpenError::NotFound {
            path: paths[0].clone(),
        })
    }

    fn reloader(open: Opener) -> (Reloader, Metrics) {
        let metrics = Metrics::new(false).unwrap();
        let info = DatabaseInfo {
            path: "/db.mmdb".into(),
            database_type: "test".into(),
            build_epoch: 0,
            ip_version: 6,
        };
        let (to_tracker, _) = mpsc::channel(1);
        let reloader = Reloader {
            paths: vec![PathBuf::from("/db.mmdb")],
            wants: Wants::default(),
            to_tracker,
            metrics: metrics.clone(),
            state: AppState::new(metrics.clone(), "/metrics", &info),
            timeout: Duration::from_millis(100),
            open,
        };
        (reloader, metrics)
    }

    fn failures(metrics: &Metrics) -> String {
        let text = metrics.render().unwrap();
        text.lines()
            .find(|l| l.starts_with("geoip_exporter_database_reloads_total{result=\"failure\"}"))
            .unwrap_or_default()
            .to_owned()
    }

    /// A reload past its time is given up (a failure), told to stop, and
    /// the next one starts; given-up ones still stuck hold off new ones
    /// only past [`MAX_STUCK`].
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reload_past_its_time_is_given_up_and_the_next_runs() {
        let (r, metrics) = reloader(until_stopped);
        let mut stuck = Vec::new();
        let mut job = r.start(&mut stuck);
        let stop = job.as_ref().map(|j| j.stop.clone()).unwrap();
        let started = Instant::now();
        r.conclude(wait(&mut job).await, &mut stuck).await;
        assert!(job.is_none() && started.elapsed() < Duration::from_secs(1));
        assert!(stop.load(Ordering::Relaxed), "told to stop");
        assert!(failures(&metrics).ends_with(" 1"), "{}", failures(&metrics));
        // It stops when told: not stuck any more.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(r.start(&mut stuck).is_some());
        assert!(stuck.is_empty());

        let (r, metrics) = reloader(never_returns);
        let mut stuck = Vec::new();
        for _ in 0..MAX_STUCK {
            let mut job = r.start(&mut stuck);
            assert!(job.is_some());
            r.conclude(wait(&mut job).await, &mut stuck).await;
        }
        assert_eq!(stuck.len(), MAX_STUCK);
        assert!(r.start(&mut stuck).is_none(), "too many stuck");
        assert!(failures(&metrics).ends_with(&format!(" {}", MAX_STUCK + 1)));
    }
}
