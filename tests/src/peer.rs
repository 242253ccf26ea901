//! The polling peer: `tests/bench/poller.py` (psutil and the maxminddb
//! reader, in a virtual environment of their own under `target/`), run as
//! a separate process whose CPU time and counts the benchmark reads.

use std::{
    io::{self, Write as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    time::{Duration, Instant},
};

/// The Python packages the peer needs, pinned.
pub const PACKAGES: [(&str, &str); 2] = [("psutil", "7.2.2"), ("maxminddb", "3.2.0")];

/// How long a poller may take to import its modules and open the database.
const READY_WITHIN: Duration = Duration::from_secs(30);
/// The longest a poller runs, whatever its parent does.
const POLLER_LIFETIME: Duration = Duration::from_mins(10);

/// The poller script in this repository.
pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/poller.py")
}

/// The virtual environment's Python under `dir` (e.g. `target/bench-venv`),
/// created with `python3 -m venv` and given [`PACKAGES`] with pip unless
/// it has them already.
pub fn venv(dir: &Path) -> io::Result<PathBuf> {
    let python = dir.join("bin/python");
    if installed(&python) {
        return Ok(python);
    }
    if !python.exists() {
        run(Command::new("python3").arg("-m").arg("venv").arg(dir))?;
    }
    let mut pip = Command::new(&python);
    pip.args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
    ]);
    pip.args(PACKAGES.map(|(name, version)| format!("{name}=={version}")));
    run(&mut pip)?;
    if installed(&python) {
        Ok(python)
    } else {
        Err(io::Error::other(format!(
            "{} still lacks {PACKAGES:?} after pip install",
            python.display()
        )))
    }
}

/// Whether `python` has exactly the pinned [`PACKAGES`].
fn installed(python: &Path) -> bool {
    let want: Vec<String> = PACKAGES.iter().map(|(_, v)| (*v).to_owned()).collect();
    let names: Vec<String> = PACKAGES.iter().map(|(n, _)| format!("{n:?}")).collect();
    let code = format!(
        "import importlib.metadata as m; print(' '.join(m.version(n) for n in [{}]))",
        names.join(",")
    );
    Command::new(python)
        .args(["-c", &code])
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|out| {
            out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == want.join(" ")
        })
}

fn run(cmd: &mut Command) -> io::Result<()> {
    let out = cmd
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot run {cmd:?}: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

/// A running poller: imported, database open, waiting for [`Poller::go`].
/// Killed on drop.
pub struct Poller {
    child: Child,
    stdin: Option<ChildStdin>,
    status: PathBuf,
}

impl Poller {
    /// Start `script` with `python`, polling every `interval` and
    /// writing its state to `status`, and wait until it is ready.
    pub fn start(
        python: &Path,
        database: &Path,
        status: &Path,
        interval: Duration,
    ) -> io::Result<Self> {
        let _ = std::fs::remove_file(status);
        let mut child = Command::new(python)
            .arg(script())
            .arg("--database")
            .arg(database)
            .arg("--status")
            .arg(status)
            .arg(format!("--interval={}", interval.as_secs_f64()))
            .arg(format!("--max-seconds={}", POLLER_LIFETIME.as_secs()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot start the poller: {e}")))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let poller = Self {
            child,
            stdin,
            status: status.to_owned(),
        };
        let rx = crate::hold::first_line(stdout);
        match rx.recv_timeout(READY_WITHIN) {
            Ok(line) if line.trim() == "ready" => Ok(poller),
            Ok(line) => Err(io::Error::other(format!(
                "the poller did not start: {line:?}"
            ))),
            Err(_) => Err(io::Error::other(format!(
                "the poller was not ready within {READY_WITHIN:?}"
            ))),
        }
    }

    /// The poller's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Let it poll: now, then every interval.
    pub fn go(&mut self) -> io::Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| io::Error::other("the poller's input is closed"))?;
        stdin.write_all(b"go\n")?;
        stdin.flush()
    }

    /// Its state after the last poll (`None` before the first).
    pub fn status(&self) -> io::Result<Option<serde_json::Value>> {
        match std::fs::read_to_string(&self.status) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(io::Error::other),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Wait (at most `within`) until it has finished `polls` polls.
    pub fn wait_polls(&self, polls: u64, within: Duration) -> io::Result<serde_json::Value> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.status()?
                && s["polls"].as_u64().unwrap_or(0) >= polls
            {
                return Ok(s);
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "the poller did not finish {polls} polls within {within:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
