//! Snapshots of real sockets on loopback, through the real kernel
//! interface: directions, owners, the kernel-run filter, byte counters.

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
};

use super::*;
use crate::{
    conn::{canonical, ip},
    exclude::Cidr,
};

/// One dump of this thread's namespace, as `pass` asks for it.
fn sockets(netns: u32, pass: Pass, bytecode: &Bytecode) -> Result<Vec<DiagSocket>, DumpError> {
    sock_diag::sockets(netns, pass.request(), bytecode)
}

fn established(
    netns: u32,
    bytecode: &Bytecode,
) -> Result<Vec<(ConnKey, Direction)>, SnapshotError> {
    Ok(classify(&sockets(netns, Pass::Connections, bytecode)?)
        .into_iter()
        .map(|(key, direction, _)| (key, direction))
        .collect())
}

/// An outbound connection is named after the process holding it,
/// found by its socket inode; an inbound one is not looked for.
#[test]
fn outbound_connections_are_named_after_their_process() {
    let l = TcpListener::bind("[::1]:0").unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (s, _) = l.accept().unwrap();
    let mut snap = Snapshot::default();
    snap.add(
        Pass::Connections,
        &sockets(7, Pass::Connections, &Bytecode::default()).unwrap(),
        true,
    );
    snap.find_owners(Path::new("/proc"));
    let key = |s: &TcpStream| {
        let (local, remote) = (s.local_addr().unwrap(), s.peer_addr().unwrap());
        ConnKey {
            local: canonical(local.ip()),
            remote: canonical(remote.ip()),
            local_port: local.port(),
            remote_port: remote.port(),
            netns: 7,
        }
    };
    let own = std::fs::read_to_string("/proc/self/comm").unwrap();
    assert_eq!(
        snap.owners.get(&key(&c)).and_then(Comm::name).as_deref(),
        Some(own.trim_end())
    );
    assert!(snap.conns.contains(&(key(&s), Direction::Inbound)));
    assert!(
        !snap.owners.contains_key(&key(&s)),
        "inbound: not looked for"
    );
    assert!(snap.inodes.is_empty(), "used up");
}

/// Real sockets on loopback, seen through the real kernel interface.
#[test]
fn sees_established_loopback_connections_both_families() {
    let v4 = TcpListener::bind("127.0.0.1:0").unwrap();
    let v6 = TcpListener::bind("[::1]:0").unwrap();
    let mut c4 = TcpStream::connect(v4.local_addr().unwrap()).unwrap();
    let c6 = TcpStream::connect(v6.local_addr().unwrap()).unwrap();
    let (mut s4, _) = v4.accept().unwrap();
    let (_s6, _) = v6.accept().unwrap();
    c4.write_all(b"x").unwrap();
    let mut b = [0; 1];
    s4.read_exact(&mut b).unwrap();

    let conns = established(7, &Bytecode::default()).unwrap();
    let find = |local: std::net::SocketAddr, remote: std::net::SocketAddr| {
        conns.iter().find(|(k, _)| {
            k.local == canonical(local.ip())
                && k.local_port == local.port()
                && k.remote == canonical(remote.ip())
                && k.remote_port == remote.port()
        })
    };
    let out4 = find(c4.local_addr().unwrap(), c4.peer_addr().unwrap()).unwrap();
    assert_eq!(out4.1, Direction::Outbound);
    let in4 = find(s4.local_addr().unwrap(), s4.peer_addr().unwrap()).unwrap();
    assert_eq!(in4.1, Direction::Inbound);
    let out6 = find(c6.local_addr().unwrap(), c6.peer_addr().unwrap()).unwrap();
    assert_eq!(out6.1, Direction::Outbound);
    assert_eq!(out6.0.remote, ip("::1"));
    assert_eq!(out6.0.netns, 7, "tagged with the namespace asked for");
}

/// The kernel runs the filter: a connection to an excluded range is
/// left out of the dump, one to another range is in it, and listening
/// sockets still come (the direction of the rest depends on them).
#[test]
fn the_kernel_leaves_excluded_ranges_out_of_the_dump() {
    let v4 = TcpListener::bind("127.0.0.1:0").unwrap();
    let v6 = TcpListener::bind("[::1]:0").unwrap();
    let c4 = TcpStream::connect(v4.local_addr().unwrap()).unwrap();
    let c6 = TcpStream::connect(v6.local_addr().unwrap()).unwrap();
    let (s4, _) = v4.accept().unwrap();
    let (s6, _) = v6.accept().unwrap();
    let ranges: Vec<Cidr> = ["127.0.0.0/8", "fe80::/10", "10.0.0.0/8"]
        .iter()
        .map(|c| c.parse().unwrap())
        .collect();
    let filter = Bytecode::excluding(&ranges);
    let conns = established(7, &filter).unwrap();
    let has = |s: &TcpStream| {
        let (local, remote) = (s.local_addr().unwrap(), s.peer_addr().unwrap());
        conns.iter().find(|(k, _)| {
            k.local_port == local.port()
                && k.remote_port == remote.port()
                && k.remote == canonical(remote.ip())
        })
    };
    assert!(
        has(&c4).is_none() && has(&s4).is_none(),
        "127/8 is excluded"
    );
    assert_eq!(has(&c6).map(|c| c.1), Some(Direction::Outbound));
    assert_eq!(
        has(&s6).map(|c| c.1),
        Some(Direction::Inbound),
        "the listener came through the filter"
    );
    // Nothing else of 127/8 either, whoever else runs here.
    assert!(
        conns.iter().all(|(k, _)| !ranges[0].contains(k.remote)),
        "{conns:?}"
    );
    // Too many ranges for one filter: no filter, nothing refused.
    let many: Vec<Cidr> = (0..3000)
        .map(|i| format!("2001:db8:{i:x}::/48").parse().unwrap())
        .collect();
    assert!(Bytecode::excluding(&many).is_empty());
    assert!(
        !established(7, &Bytecode::excluding(&many))
            .unwrap()
            .is_empty()
    );
}

/// The bytes pass reads each ESTABLISHED socket's counters from
/// `tcp_info`: what each end sent and received (the connecting end's
/// SYN counted in what it sent), and lists closing sockets.
#[test]
fn the_bytes_pass_reads_tcp_info() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (mut s, _) = l.accept().unwrap();
    c.write_all(&[1; 1234]).unwrap();
    let mut b = vec![0; 1234];
    s.read_exact(&mut b).unwrap();
    s.write_all(&[2; 77]).unwrap();
    let mut b = vec![0; 77];
    c.read_exact(&mut b).unwrap();
    // Let the last ACKs arrive.
    std::thread::sleep(Duration::from_millis(50));
    let found = sockets(7, Pass::Bytes, &Bytecode::default()).unwrap();
    let counters = |local: std::net::SocketAddr| {
        found
            .iter()
            .find(|d| {
                d.key.local_port == local.port() && i32::from(d.state) == tcp_state::ESTABLISHED
            })
            .and_then(|d| d.counters)
    };
    assert_eq!(
        counters(c.local_addr().unwrap()),
        Some(Counters {
            received: 77,
            acked: 1235
        }),
        "client: its SYN is in acked"
    );
    assert_eq!(
        counters(s.local_addr().unwrap()),
        Some(Counters {
            received: 1234,
            acked: 77
        })
    );
    // After a FIN the socket is closing: listed, without counters.
    c.shutdown(std::net::Shutdown::Write).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let mut snap = Snapshot::default();
    snap.add(
        Pass::Bytes,
        &sockets(7, Pass::Bytes, &Bytecode::default()).unwrap(),
        false,
    );
    let port = |k: &ConnKey| k.local_port;
    assert!(
        snap.closing
            .iter()
            .any(|k| port(k) == c.local_addr().unwrap().port())
    );
    assert!(
        snap.closing
            .iter()
            .any(|k| port(k) == s.local_addr().unwrap().port())
    );
    assert!(
        !snap
            .bytes
            .iter()
            .any(|(k, _)| port(k) == s.local_addr().unwrap().port())
    );
}

#[test]
fn direction_comes_from_listening_ports() {
    let k = |lp, rp| ConnKey {
        local: ip("192.0.2.1"),
        remote: ip("198.51.100.1"),
        local_port: lp,
        remote_port: rp,
        netns: 1,
    };
    let sockets = [
        DiagSocket {
            state: 10,
            key: k(443, 0),
            counters: None,
            inode: 0,
        },
        DiagSocket {
            state: 1,
            key: k(443, 50000),
            counters: None,
            inode: 0,
        },
        DiagSocket {
            state: 1,
            key: k(50001, 443),
            counters: None,
            inode: 0,
        },
    ];
    let got = classify(&sockets);
    assert_eq!(
        got,
        vec![
            (k(443, 50000), Direction::Inbound, 0),
            (k(50001, 443), Direction::Outbound, 0)
        ]
    );
}
