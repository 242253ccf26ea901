//! Many concurrent established connections, held by child processes.
//!
//! One process may have only 20,000 open files on these machines, and
//! each held connection costs two (this side's client end and the test
//! namespace's server end), so [`Holders`] spreads the connections over
//! child processes of at most [`MAX_PER_HOLDER`] connections each. A
//! child is the calling binary itself, started again with [`HOLDER_ENV`]
//! set: a binary that uses [`Holders`] calls [`run_if_holder`] first
//! thing in `main`. Each child
//! - raises its soft open-files limit to the hard one;
//! - listens on a port of its own (one per child) at every given test
//!   host, inside the test namespace (one thread enters it, as
//!   [`TestNet::run_in`] does);
//! - connects its share from the root namespace, round-robin over the
//!   hosts, while a thread accepts (so the listen backlog never fills),
//!   and keeps both ends: the client end has the test host as its remote
//!   (the exporter tracks it), the server end has the host's private link
//!   address as its remote (the exporter excludes it);
//! - prints `ready N` on its standard output and holds them until its
//!   standard input closes, or for [`HOLDER_LIFETIME`] at most. A child
//!   that fails prints `error: ...` and exits 1.
//!
//! The parent checks every host's route goes through the test's own veth
//! device before a child is started, and the children connect to those
//! hosts only. A child's port is never reused within one [`Holders`], so
//! connections of a stopped child lingering in `TIME_WAIT` never clash
//! with new ones.

use std::{
    fs::File,
    io::{self, BufRead as _, BufReader, Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use crate::netns::TestNet;

/// Set (to a holder's specification) in a holder child's environment.
pub const HOLDER_ENV: &str = "GEOIP_TESTS_HOLDER";
/// The most connections one child holds: 17,000 descriptors of its
/// 20,000, both ends counted, leaving room for listeners and stdio.
pub const MAX_PER_HOLDER: usize = 8_500;
/// The longest a child lives, whatever its parent does.
pub const HOLDER_LIFETIME: Duration = Duration::from_mins(10);
/// How long a child may take to make its connections.
const CONNECT_WITHIN: Duration = Duration::from_mins(2);
/// How long a child may take to exit once its standard input closed.
const EXIT_WITHIN: Duration = Duration::from_secs(10);
/// The listen backlog of a child's listeners (the namespace's
/// `net.core.somaxconn` caps it).
const BACKLOG: i32 = 4096;

/// If this process was started as a holder child, hold connections as the
/// environment says and exit; otherwise return at once. Call it first in
/// `main` of any binary that uses [`Holders`].
pub fn run_if_holder() {
    let Some(spec) = std::env::var_os(HOLDER_ENV) else {
        return;
    };
    std::thread::spawn(|| {
        std::thread::sleep(HOLDER_LIFETIME);
        std::process::exit(3);
    });
    let result = Spec::parse(&spec.to_string_lossy()).and_then(|spec| hold(&spec));
    let mut out = io::stdout();
    match result {
        Ok(held) => {
            let _ = writeln!(out, "ready {}", held.clients.len());
            let _ = out.flush();
            // Hold until the parent closes our standard input (or exits).
            let mut sink = [0u8; 64];
            while io::stdin().read(&mut sink).is_ok_and(|n| n > 0) {}
            held.reset();
            std::process::exit(0);
        }
        Err(err) => {
            let _ = writeln!(out, "error: {err}");
            let _ = out.flush();
            std::process::exit(1);
        }
    }
}

/// What one child holds: its namespace, port, count and hosts.
struct Spec {
    /// A path that opens the test namespace (the parent's descriptor for it).
    netns: String,
    port: u16,
    count: usize,
    hosts: Vec<IpAddr>,
}

impl Spec {
    /// `NETNS PORT COUNT HOST,HOST,...`
    fn render(&self) -> String {
        let hosts: Vec<String> = self.hosts.iter().map(ToString::to_string).collect();
        format!(
            "{} {} {} {}",
            self.netns,
            self.port,
            self.count,
            hosts.join(",")
        )
    }

    fn parse(text: &str) -> io::Result<Self> {
        let bad = || io::Error::other(format!("bad {HOLDER_ENV} {text:?}"));
        let mut fields = text.split(' ');
        let (Some(netns), Some(port), Some(count), Some(hosts), None) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            return Err(bad());
        };
        let hosts = hosts
            .split(',')
            .map(str::parse)
            .collect::<Result<Vec<IpAddr>, _>>()
            .map_err(|_| bad())?;
        if hosts.is_empty() {
            return Err(bad());
        }
        Ok(Self {
            netns: netns.to_owned(),
            port: port.parse().map_err(|_| bad())?,
            count: count.parse().map_err(|_| bad())?,
            hosts,
        })
    }
}

/// Both ends of every connection a child made.
struct Held {
    clients: Vec<TcpStream>,
    _servers: Vec<TcpStream>,
}

impl Held {
    /// Close every connection with a reset: no socket is left in
    /// `TIME_WAIT`, where it would stay in the kernel's socket hash (which
    /// every snapshot walks) for a minute and slow down the next benchmark.
    fn reset(self) {
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        for c in &self.clients {
            // SAFETY: setsockopt with a valid linger of the size given.
            unsafe {
                libc::setsockopt(
                    c.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&raw const linger).cast(),
                    u32::try_from(size_of::<libc::linger>()).unwrap_or(0),
                );
            }
        }
    }
}

/// The child's work: listen in the namespace, connect from here, accept.
fn hold(spec: &Spec) -> io::Result<Held> {
    raise_open_files()?;
    let listeners = {
        let hosts = spec.hosts.clone();
        let port = spec.port;
        in_netns(&spec.netns, move || {
            hosts
                .iter()
                .map(|h| listen(SocketAddr::new(*h, port)))
                .collect::<io::Result<Vec<_>>>()
        })??
    };
    let deadline = Instant::now() + CONNECT_WITHIN;
    let count = spec.count;
    let acceptor = std::thread::spawn(move || accept_all(&listeners, count, deadline));
    let mut clients = Vec::with_capacity(count);
    for i in 0..count {
        let to = SocketAddr::new(spec.hosts[i % spec.hosts.len()], spec.port);
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::other(format!(
                "made only {i} of {count} connections in {CONNECT_WITHIN:?}"
            )));
        }
        let stream = TcpStream::connect_timeout(&to, left.min(Duration::from_secs(10)))
            .map_err(|e| io::Error::new(e.kind(), format!("connect {to} (connection {i}): {e}")))?;
        clients.push(stream);
    }
    let servers = acceptor
        .join()
        .map_err(|_| io::Error::other("the accepting thread panicked"))??;
    Ok(Held {
        clients,
        _servers: servers,
    })
}

/// Soft `RLIMIT_NOFILE` up to the hard limit.
fn raise_open_files() -> io::Result<()> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: as above.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Run `f` on a thread that entered the network namespace at `path`.
fn in_netns<T: Send + 'static>(
    path: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<T> {
    let file = File::open(path).map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))?;
    std::thread::spawn(move || {
        // SAFETY: setns on this thread only, with a namespace fd we hold.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(f())
    })
    .join()
    .map_err(|_| io::Error::other("the namespace thread panicked"))?
}

/// A non-blocking listener at `at` with a backlog of [`BACKLOG`].
fn listen(at: SocketAddr) -> io::Result<TcpListener> {
    let l =
        TcpListener::bind(at).map_err(|e| io::Error::new(e.kind(), format!("bind {at}: {e}")))?;
    // listen(2) again on a listening socket only changes its backlog.
    // SAFETY: a valid listening socket.
    if unsafe { libc::listen(l.as_raw_fd(), BACKLOG) } != 0 {
        return Err(io::Error::last_os_error());
    }
    l.set_nonblocking(true)?;
    Ok(l)
}

/// Accept `count` connections on `listeners` before `deadline`.
fn accept_all(
    listeners: &[TcpListener],
    count: usize,
    deadline: Instant,
) -> io::Result<Vec<TcpStream>> {
    let mut accepted = Vec::with_capacity(count);
    let mut fds: Vec<libc::pollfd> = listeners
        .iter()
        .map(|l| libc::pollfd {
            fd: l.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let nfds = libc::nfds_t::try_from(fds.len()).map_err(io::Error::other)?;
    while accepted.len() < count {
        if Instant::now() > deadline {
            return Err(io::Error::other(format!(
                "accepted only {} of {count} connections in {CONNECT_WITHIN:?}",
                accepted.len()
            )));
        }
        // SAFETY: poll(2) on descriptors we hold, 100 ms at most.
        unsafe { libc::poll(fds.as_mut_ptr(), nfds, 100) };
        for l in listeners {
            loop {
                match l.accept() {
                    Ok((s, _)) => accepted.push(s),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(io::Error::new(e.kind(), format!("accept: {e}"))),
                }
            }
        }
        for f in &mut fds {
            f.revents = 0;
        }
    }
    Ok(accepted)
}

/// One child process and what it holds.
struct Holder {
    child: Child,
    stdin: Option<ChildStdin>,
    count: usize,
}

/// Connections to test hosts held by child processes; grown and shrunk
/// with [`Holders::resize`]. Every child exits when this is dropped.
pub struct Holders {
    /// The test namespace, open for the children to enter through
    /// `/proc/<our pid>/fd/<fd>`.
    netns: File,
    hosts: Vec<IpAddr>,
    next_port: u16,
    children: Vec<Holder>,
}

impl Holders {
    /// Holders of connections from this (root) namespace to `hosts` in
    /// `net`, listening on ports from `first_port` up (one per child,
    /// inside the namespace only). Checks each host's route first.
    pub fn new(net: &TestNet, hosts: &[&str], first_port: u16) -> io::Result<Self> {
        let hosts = hosts
            .iter()
            .map(|h| {
                h.parse::<IpAddr>()
                    .map_err(|e| io::Error::other(format!("{h}: {e}")))
            })
            .collect::<io::Result<Vec<_>>>()?;
        if hosts.is_empty() {
            return Err(io::Error::other("no hosts to connect to"));
        }
        for h in &hosts {
            net.check_route(*h);
        }
        let netns = net.run_in(|| File::open("/proc/thread-self/ns/net"))?;
        Ok(Self {
            netns,
            hosts,
            next_port: first_port,
            children: Vec::new(),
        })
    }

    /// Connections held now (every child reported them made and accepted).
    pub fn held(&self) -> usize {
        self.children.iter().map(|c| c.count).sum()
    }

    /// How many child processes hold them.
    pub fn processes(&self) -> usize {
        self.children.len()
    }

    /// Hold exactly `total` connections: stop the newest children while
    /// more are held, then start new ones for what is missing, and wait
    /// until every new child reports its connections made. On an error,
    /// the children that failed are stopped and [`Self::held`] counts the
    /// others.
    pub fn resize(&mut self, total: usize) -> io::Result<()> {
        let mut stopping = Vec::new();
        while self.held() > total
            && let Some(last) = self.children.pop()
        {
            stopping.push(last);
        }
        stop_all(stopping);
        // New children join `self.children` only once they report their
        // connections made; the others are stopped.
        let mut missing = total - self.held();
        let mut fresh = Vec::new();
        while missing > 0 {
            let count = missing.min(MAX_PER_HOLDER);
            match self.spawn(count) {
                Ok(started) => fresh.push(started),
                Err(err) => {
                    stop_all(fresh.into_iter().map(|(h, _)| h).collect());
                    return Err(err);
                }
            }
            missing -= count;
        }
        let deadline = Instant::now() + CONNECT_WITHIN + Duration::from_secs(10);
        let mut failed = Vec::new();
        let mut failures = Vec::new();
        for (holder, ready) in fresh {
            let line = ready
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| "no answer in time".to_owned());
            if line.trim() == format!("ready {}", holder.count) {
                self.children.push(holder);
            } else {
                failures.push(format!(
                    "holder of {} connections: {}",
                    holder.count,
                    line.trim()
                ));
                failed.push(holder);
            }
        }
        stop_all(failed);
        if failures.is_empty() {
            Ok(())
        } else {
            Err(io::Error::other(failures.join("; ")))
        }
    }

    /// Start one child holding `count`; the receiver gets its first line.
    fn spawn(&mut self, count: usize) -> io::Result<(Holder, mpsc::Receiver<String>)> {
        let port = self.next_port;
        self.next_port = port
            .checked_add(1)
            .ok_or_else(|| io::Error::other("out of ports for holders"))?;
        let spec = Spec {
            netns: format!("/proc/{}/fd/{}", std::process::id(), self.netns.as_raw_fd()),
            port,
            count,
            hosts: self.hosts.clone(),
        };
        let exe = std::env::current_exe()?;
        let mut child = Command::new(&exe)
            .env(HOLDER_ENV, spec.render())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| {
                io::Error::new(e.kind(), format!("cannot start {}: {e}", exe.display()))
            })?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let rx = first_line(stdout);
        Ok((
            Holder {
                child,
                stdin,
                count,
            },
            rx,
        ))
    }

    /// The children's process ids.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(|c| c.child.id()).collect()
    }
}

/// Close every child's standard input, then wait for each (bounded),
/// killing the ones that do not exit.
fn stop_all(mut children: Vec<Holder>) {
    for c in &mut children {
        drop(c.stdin.take());
    }
    let deadline = Instant::now() + EXIT_WITHIN;
    for c in &mut children {
        while c.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.child.kill();
        let _ = c.child.wait();
    }
}

impl Drop for Holders {
    fn drop(&mut self) {
        stop_all(std::mem::take(&mut self.children));
    }
}

/// The first line a child prints, read on a thread of its own so the
/// caller can wait for it with a timeout (`recv_timeout`); an empty line
/// if it ends without one.
pub fn first_line(stdout: Option<std::process::ChildStdout>) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        if let Some(out) = stdout {
            let _ = BufReader::new(out).read_line(&mut line);
        }
        let _ = tx.send(line);
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::Spec;

    #[test]
    fn spec_round_trips() {
        let spec = Spec {
            netns: "/proc/1/fd/3".to_owned(),
            port: 20_001,
            count: 8_500,
            hosts: vec![
                "192.0.2.10".parse().unwrap(),
                "2001:db8:b::30".parse().unwrap(),
            ],
        };
        let back = Spec::parse(&spec.render()).unwrap();
        assert_eq!(back.render(), spec.render());
    }

    #[test]
    fn spec_refuses_garbage() {
        assert!(Spec::parse("/proc/1/fd/3 20001 10").is_err());
        assert!(Spec::parse("/proc/1/fd/3 20001 10 not-an-ip").is_err());
        assert!(Spec::parse("/proc/1/fd/3 99999 10 192.0.2.10").is_err());
    }
}
