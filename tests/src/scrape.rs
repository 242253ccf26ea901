//! `/metrics` latency under concurrent scrapers, over keep-alive
//! HTTP/1.1 connections (one per scraper, as Prometheus keeps them),
//! either back to back (a saturation test: each scraper sends its next
//! request as soon as the last one is answered) or in rounds (every
//! scraper sends at the same instant, once per round: concurrent scrapes
//! of a server that is otherwise idle).

use std::{
    io::{self, BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    sync::{Arc, Barrier},
    time::{Duration, Instant},
};

/// How long one response may take before the run fails.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Request latencies, sorted.
#[derive(Debug, Clone)]
pub struct Latencies {
    sorted: Vec<Duration>,
    /// Bytes of the last body read (the size of a scrape).
    pub body_bytes: usize,
}

impl Latencies {
    /// The `q` quantile (0..=1) by nearest rank; zero when empty.
    pub fn quantile(&self, q: f64) -> Duration {
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss,
            reason = "a rank within a few thousand samples"
        )]
        let rank = (q.clamp(0.0, 1.0) * self.sorted.len() as f64).ceil() as usize;
        self.sorted
            .get(rank.saturating_sub(1))
            .copied()
            .unwrap_or_default()
    }

    /// The slowest request.
    pub fn max(&self) -> Duration {
        self.sorted.last().copied().unwrap_or_default()
    }

    /// How many requests were timed.
    pub fn count(&self) -> usize {
        self.sorted.len()
    }
}

/// How scrapers send their requests.
#[derive(Debug, Clone, Copy)]
pub enum Pace {
    /// Each sends its next request as soon as the last one is answered.
    BackToBack,
    /// All send at the same instant, once every this long.
    Rounds(Duration),
}

/// `scrapers` threads, each with one keep-alive connection to `addr`,
/// start together and GET `path` `requests_each` times at `pace`; every
/// response must be 200. Each latency runs from writing the request to
/// reading the body's last byte.
pub fn measure(
    addr: SocketAddr,
    path: &str,
    scrapers: usize,
    requests_each: usize,
    pace: Pace,
) -> io::Result<Latencies> {
    let start = Arc::new(Barrier::new(scrapers));
    // The first round, the same instant for every thread (after they
    // have all connected).
    let epoch = Instant::now() + Duration::from_millis(500);
    let threads: Vec<_> = (0..scrapers)
        .map(|_| {
            let start = start.clone();
            let path = path.to_owned();
            std::thread::spawn(move || scraper(addr, &path, requests_each, (pace, epoch), &start))
        })
        .collect();
    let mut sorted = Vec::with_capacity(scrapers * requests_each);
    let mut body_bytes = 0;
    for t in threads {
        let (times, bytes) = t
            .join()
            .map_err(|_| io::Error::other("a scraper thread panicked"))??;
        sorted.extend(times);
        body_bytes = bytes;
    }
    sorted.sort_unstable();
    Ok(Latencies { sorted, body_bytes })
}

fn scraper(
    addr: SocketAddr,
    path: &str,
    requests: usize,
    (pace, epoch): (Pace, Instant),
    start: &Barrier,
) -> io::Result<(Vec<Duration>, usize)> {
    // Connect before the barrier, so every thread waits there even if
    // one fails, and connection set-up is not timed.
    let connected = TcpStream::connect_timeout(&addr, RESPONSE_TIMEOUT).and_then(|s| {
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(RESPONSE_TIMEOUT))?;
        Ok(s)
    });
    start.wait();
    let stream = connected?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    let mut times = Vec::with_capacity(requests);
    let mut bytes = 0;
    for round in 0..requests {
        if let Pace::Rounds(every) = pace {
            let at = epoch + every * u32::try_from(round).map_err(io::Error::other)?;
            std::thread::sleep(at.saturating_duration_since(Instant::now()));
        }
        let began = Instant::now();
        writer.write_all(request.as_bytes())?;
        let (status, body) = read_response(&mut reader)?;
        times.push(began.elapsed());
        if status != 200 {
            return Err(io::Error::other(format!("GET {path}: status {status}")));
        }
        bytes = body;
    }
    Ok((times, bytes))
}

/// Read one HTTP/1.1 response (Content-Length or chunked body): (status,
/// body length).
fn read_response(r: &mut BufReader<TcpStream>) -> io::Result<(u16, usize)> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| io::Error::other(format!("bad status line {line:?}")))?;
    let mut length = None;
    let mut chunked = false;
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(io::Error::other("connection closed inside the headers"));
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = value.parse::<usize>().ok();
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.eq_ignore_ascii_case("chunked");
            }
        }
    }
    if chunked {
        let mut total = 0;
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| io::Error::other(format!("bad chunk size {line:?}")))?;
            // The chunk and its CRLF (the last chunk: just the CRLF, no trailers).
            skip(r, size + 2)?;
            total += size;
            if size == 0 {
                return Ok((status, total));
            }
        }
    }
    let length = length.ok_or_else(|| io::Error::other("response without a length"))?;
    skip(r, length)?;
    Ok((status, length))
}

fn skip(r: &mut BufReader<TcpStream>, n: usize) -> io::Result<()> {
    let n = u64::try_from(n).map_err(io::Error::other)?;
    let copied = io::copy(&mut r.by_ref().take(n), &mut io::sink())?;
    if copied == n {
        Ok(())
    } else {
        Err(io::Error::other("connection closed inside the body"))
    }
}
