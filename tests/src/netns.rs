//! Test hosts with public-looking addresses, in a network namespace the
//! test creates, reachable only through a veth pair the test creates.
//!
//! Safety rule of the project: test traffic goes to loopback or to these
//! hosts, never elsewhere. [`TestNet::check_route`] refuses any address
//! whose route does not go through this test's own veth device.

use std::{
    fs::File,
    io,
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// The host's end of the link.
pub const HOST_V4: &str = "10.77.0.1";
pub const HOST_V6: &str = "fd77::1";
/// The namespace's end of the link (private: never counted).
pub const PEER_V4: &str = "10.77.0.2";
pub const PEER_V6: &str = "fd77::2";

/// `ip` and `port` as a socket address (panics on a bad literal).
pub fn sock(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse::<IpAddr>().expect("test address"), port)
}

/// The host's own listener on its end of the link (IPv4 and IPv6, one
/// port), accepting inbound test connections and holding them.
pub fn host_listener() -> (Server, u16) {
    let v4 = TcpListener::bind(sock(HOST_V4, 0)).expect("bind host v4");
    let port = v4.local_addr().expect("port").port();
    let v6 = TcpListener::bind(sock(HOST_V6, port)).expect("bind host v6");
    for l in [&v4, &v6] {
        l.set_nonblocking(true).expect("nonblocking");
    }
    (Server::start(vec![v4, v6]), port)
}

/// Run `ip` with `args`; panic with its output if it fails.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run ip {args:?}: {e}"));
    assert!(
        out.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ip_quiet(args: &[&str]) {
    let _ = Command::new("ip").args(args).output();
}

/// A network namespace with the given public addresses, linked to the
/// host by a veth pair, with a host route for each address. Torn down on
/// drop.
pub struct TestNet {
    ns: String,
    host_if: String,
    addrs: Vec<IpAddr>,
}

impl TestNet {
    /// Create the namespace `name` (at most 10 characters) holding `addrs`.
    pub fn create(name: &str, addrs: &[&str]) -> Self {
        let ns = format!("geoipt-{name}");
        let host_if = format!("gt{name}h");
        let peer_if = format!("gt{name}p");
        // A run that was killed may have left them behind.
        ip_quiet(&["netns", "del", &ns]);
        ip_quiet(&["link", "del", &host_if]);
        let net = Self {
            ns: ns.clone(),
            host_if: host_if.clone(),
            addrs: addrs
                .iter()
                .map(|a| a.parse().unwrap_or_else(|e| panic!("{a}: {e}")))
                .collect(),
        };
        ip(&["netns", "add", &ns]);
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &peer_if,
        ]);
        ip(&["link", "set", &peer_if, "netns", &ns]);
        ip(&["addr", "add", &format!("{HOST_V4}/30"), "dev", &host_if]);
        ip(&[
            "-6",
            "addr",
            "add",
            &format!("{HOST_V6}/64"),
            "dev",
            &host_if,
            "nodad",
        ]);
        ip(&["link", "set", &host_if, "up"]);
        let inside = |args: &[&str]| {
            let mut full = vec!["netns", "exec", ns.as_str(), "ip"];
            full.extend_from_slice(args);
            ip(&full);
        };
        inside(&["link", "set", "lo", "up"]);
        inside(&["addr", "add", &format!("{PEER_V4}/30"), "dev", &peer_if]);
        inside(&[
            "-6",
            "addr",
            "add",
            &format!("{PEER_V6}/64"),
            "dev",
            &peer_if,
            "nodad",
        ]);
        inside(&["link", "set", &peer_if, "up"]);
        for addr in &net.addrs {
            let (len, via) = if addr.is_ipv4() {
                ("32", PEER_V4)
            } else {
                ("128", PEER_V6)
            };
            let cidr = format!("{addr}/{len}");
            let mut a = vec!["addr", "add", cidr.as_str(), "dev", peer_if.as_str()];
            if addr.is_ipv6() {
                a.insert(0, "-6");
                a.push("nodad");
            }
            inside(&a);
            ip(&["route", "add", &cidr, "via", via, "dev", &host_if]);
        }
        for addr in net.addrs.clone() {
            net.check_route(addr);
        }
        net
    }

    /// Panic unless traffic to `addr` goes out through this test's veth.
    pub fn check_route(&self, addr: IpAddr) {
        let out = Command::new("ip")
            .args(["route", "get", &addr.to_string()])
            .output()
            .unwrap_or_else(|e| panic!("ip route get {addr}: {e}"));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(&format!("dev {} ", self.host_if)),
            "refusing to send to {addr}: its route is not this test's device {}: {text}",
            self.host_if
        );
    }

    /// Run `f` on a thread inside the namespace. Sockets made there stay
    /// in the namespace wherever they are used afterwards.
    pub fn run_in<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        run_in_ns(&self.ns, f)
    }

    /// Listen on `port` at every test address and at the namespace's end
    /// of the link, and keep what is accepted open until the server is
    /// dropped.
    pub fn serve(&self, port: u16) -> Server {
        let mut addrs = self.addrs.clone();
        addrs.extend([PEER_V4, PEER_V6].map(|a| a.parse::<IpAddr>().expect("peer address")));
        let listeners: Vec<TcpListener> = self.run_in(move || {
            addrs
                .iter()
                .map(|a| {
                    let l = TcpListener::bind(SocketAddr::new(*a, port))
                        .unwrap_or_else(|e| panic!("bind {a}:{port} in netns: {e}"));
                    l.set_nonblocking(true).expect("nonblocking");
                    l
                })
                .collect()
        });
        Server::start(listeners)
    }

    /// Connect from `source` (a test address, inside the namespace) to
    /// `target` (an address of the host's end of the link).
    pub fn connect_from(&self, source: &str, target: SocketAddr) -> TcpStream {
        let source: IpAddr = source.parse().expect("source address");
        assert!(
            self.addrs.contains(&source),
            "{source} is not a test address"
        );
        assert!(
            [HOST_V4, HOST_V6].contains(&target.ip().to_string().as_str()),
            "inbound test connections go to the host's end of the link only, not {target}"
        );
        self.run_in(move || {
            let socket = match source {
                IpAddr::V4(_) => socket2_v4(),
                IpAddr::V6(_) => socket2_v6(),
            };
            bind_and_connect(socket, SocketAddr::new(source, 0), target)
        })
    }

    /// Connect from the host to a test address or the namespace's end of
    /// the link (after checking the route goes through this test's device).
    pub fn connect_to(&self, target: SocketAddr) -> TcpStream {
        self.check_route(target.ip());
        TcpStream::connect_timeout(&target, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect {target}: {e}"))
    }
}

/// Run `f` on a thread inside the named network namespace.
fn run_in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // SAFETY: setns on this thread only, with a namespace fd we hold.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", io::Error::last_os_error());
        f()
    })
    .join()
    .unwrap_or_else(|_| panic!("thread in {ns} panicked"))
}

/// A network namespace standing in for a container: its own loopback
/// holding test addresses, no link anywhere. Connections between its
/// addresses are sockets only this namespace holds, which the exporter
/// must find by entering it. Torn down on drop.
pub struct Container {
    ns: String,
}

impl Container {
    /// Create the namespace `name` (at most 10 characters) with `addrs`
    /// on its loopback.
    pub fn create(name: &str, addrs: &[&str]) -> Self {
        let ns = format!("geoipc-{name}");
        ip_quiet(&["netns", "del", &ns]);
        ip(&["netns", "add", &ns]);
        let c = Self { ns };
        c.ip(&["link", "set", "lo", "up"]);
        for addr in addrs {
            let parsed: IpAddr = addr.parse().unwrap_or_else(|e| panic!("{addr}: {e}"));
            let cidr = format!("{addr}/{}", if parsed.is_ipv4() { 32 } else { 128 });
            c.ip(&["addr", "add", &cidr, "dev", "lo"]);
        }
        c
    }

    fn ip(&self, args: &[&str]) {
        let mut full = vec!["netns", "exec", self.ns.as_str(), "ip"];
        full.extend_from_slice(args);
        ip(&full);
    }

    /// A listener inside the namespace (its port makes accepted
    /// connections inbound, as a container's service).
    pub fn listen(&self, at: SocketAddr) -> TcpListener {
        run_in_ns(&self.ns, move || {
            TcpListener::bind(at).unwrap_or_else(|e| panic!("bind {at} in container: {e}"))
        })
    }

    /// A connection inside the namespace from `from` to `listener` (made
    /// by [`Self::listen`]); both ends: client, then server.
    pub fn connect(&self, from: SocketAddr, listener: &TcpListener) -> (TcpStream, TcpStream) {
        let to = listener.local_addr().expect("listener address");
        let client = run_in_ns(&self.ns, move || {
            let fd = match from {
                SocketAddr::V4(_) => socket2_v4(),
                SocketAddr::V6(_) => socket2_v6(),
            };
            bind_and_connect(fd, from, to)
        });
        let (server, _) = listener.accept().expect("accept in container");
        (client, server)
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        ip_quiet(&["netns", "del", &self.ns]);
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        ip_quiet(&["netns", "del", &self.ns]);
        ip_quiet(&["link", "del", &self.host_if]);
    }
}

fn socket2_v4() -> i32 {
    // SAFETY: plain socket(2).
    unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) }
}

fn socket2_v6() -> i32 {
    // SAFETY: plain socket(2).
    unsafe { libc::socket(libc::AF_INET6, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) }
}

/// bind(2) then connect(2) a raw socket; std has no bind-before-connect.
fn bind_and_connect(fd: i32, source: SocketAddr, target: SocketAddr) -> TcpStream {
    use std::os::fd::FromRawFd as _;
    assert!(fd >= 0, "socket: {}", io::Error::last_os_error());
    // SAFETY: fresh descriptor we own; TcpStream closes it.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    let (src, src_len) = sockaddr(source);
    // SAFETY: valid sockaddr storage and length.
    let rc = unsafe { libc::bind(fd, (&raw const src).cast(), src_len) };
    assert_eq!(rc, 0, "bind {source}: {}", io::Error::last_os_error());
    let (dst, dst_len) = sockaddr(target);
    // SAFETY: as above.
    let rc = unsafe { libc::connect(fd, (&raw const dst).cast(), dst_len) };
    assert_eq!(
        rc,
        0,
        "connect {source} -> {target}: {}",
        io::Error::last_os_error()
    );
    stream
}

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero sockaddr_storage is valid.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::sa_family_t::try_from(libc::AF_INET).unwrap_or_default(),
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage.
            unsafe { std::ptr::write((&raw mut storage).cast(), sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::sa_family_t::try_from(libc::AF_INET6).unwrap_or_default(),
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: sockaddr_in6 fits in sockaddr_storage.
            unsafe { std::ptr::write((&raw mut storage).cast(), sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, libc::socklen_t::try_from(len).unwrap_or(0))
}

/// Accepts connections on some listeners and holds them open.
pub struct Server {
    stop: Arc<AtomicBool>,
    accepted: Arc<Mutex<Vec<TcpStream>>>,
    thread: Option<JoinHandle<()>>,
}

/// The longest a test server runs, whatever the test does.
const SERVER_LIFETIME: Duration = Duration::from_mins(5);
/// The most connections a test server accepts.
const SERVER_MAX_ACCEPTS: usize = 10_000;

impl Server {
    /// Accept on `listeners` (non-blocking) until dropped.
    pub fn start(listeners: Vec<TcpListener>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let stop = stop.clone();
            let accepted = accepted.clone();
            std::thread::spawn(move || {
                let started = Instant::now();
                let mut count = 0;
                while !stop.load(Ordering::Relaxed)
                    && started.elapsed() < SERVER_LIFETIME
                    && count < SERVER_MAX_ACCEPTS
                {
                    let mut idle = true;
                    for l in &listeners {
                        if let Ok((s, _)) = l.accept() {
                            idle = false;
                            count += 1;
                            if let Ok(mut v) = accepted.lock() {
                                v.push(s);
                            }
                        }
                    }
                    if idle {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                }
            })
        };
        Self {
            stop,
            accepted,
            thread: Some(thread),
        }
    }

    /// The accepted connection whose peer is `peer`, waiting up to 5 s.
    pub fn take(&self, peer: SocketAddr) -> TcpStream {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(mut v) = self.accepted.lock()
                && let Some(i) = v.iter().position(|s| s.peer_addr().ok() == Some(peer))
            {
                return v.swap_remove(i);
            }
            assert!(
                Instant::now() < deadline,
                "no connection from {peer} accepted"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// How many connections are held.
    pub fn held(&self) -> usize {
        self.accepted.lock().map_or(0, |v| v.len())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
