//! Command-line flags (dotted, as other Prometheus exporters spell them).

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use clap::{Parser, ValueEnum};
use geoip_common::DEFAULT_RING_BYTES;

use crate::exclude::{BUILTIN, Cidr};

/// `VERSION (commit C, built YYYY-MM-DD)`, from the build script.
macro_rules! version_line {
    () => {
        concat!(
            env!("CARGO_PKG_VERSION"),
            " (commit ",
            env!("GEOIP_GIT_COMMIT"),
            ", built ",
            env!("GEOIP_BUILD_DATE"),
            ")"
        )
    };
}

/// `-V`: the version, commit and build date.
const VERSION: &str = version_line!();

/// `--version`: [`VERSION`] and what the host must have to run it.
const LONG_VERSION: &str = concat!(
    version_line!(),
    "\n",
    "needs: Linux 5.8 or later with BTF (/sys/kernel/btf/vmlinux), BPF ring buffers, \
     tracefs with the tracepoint sock/inet_sock_set_state; \
     root, or CAP_BPF and CAP_PERFMON (and CAP_DAC_READ_SEARCH for tracefs as non-root)\n",
    "check a host with: geoip-exporter check"
);

/// The completion script for `shell`, or the manual page, as asked for
/// (`--completions`, `--man-page`); `None` when neither was.
pub(crate) fn self_description(args: &Args) -> Option<std::io::Result<Vec<u8>>> {
    use clap::CommandFactory as _;
    let mut command = Args::command();
    let mut out = Vec::new();
    if let Some(shell) = args.completions {
        clap_complete::generate(shell, &mut command, "geoip-exporter", &mut out);
        return Some(Ok(out));
    }
    if args.man_page {
        let man = clap_mangen::Man::new(command).section("8");
        return Some(man.render(&mut out).map(|()| out));
    }
    None
}

/// Where GeoIP database updaters (`geoipupdate`) usually put a country database.
pub(crate) const DEFAULT_DATABASE: &str = "/var/lib/GeoIP/GeoLite2-Country.mmdb";

#[derive(Debug, Parser)]
#[expect(
    clippy::doc_markdown,
    reason = "doc comments are the --help text, read as plain text"
)]
#[expect(clippy::struct_excessive_bools, reason = "command-line switches")]
#[command(
    name = "geoip-exporter",
    version = VERSION,
    long_version = LONG_VERSION,
    about = "Prometheus exporter of where in the world this machine's TCP connections come from and go to.",
    long_about = "Prometheus exporter of where in the world this machine's TCP connections come from and go to.\n\n\
        An eBPF program on the tracepoint sock/inet_sock_set_state reports every TCP connection that \
        becomes or stops being ESTABLISHED; the exporter looks the remote address up in a local \
        MaxMind-format (mmdb) database and keeps geoip_connections{country,direction} exact. \
        Needs root, or CAP_BPF and CAP_PERFMON.\n\n\
        Exit codes: 0 after SIGINT/SIGTERM, 2 for bad flags or input files (database, CIDR, listen \
        address), 1 for everything else (privileges, kernel, tracefs). `geoip-exporter check` exits \
        0 when this host can run the exporter with the flags given, 1 when it cannot, 2 for bad flags.",
    after_help = builtin_help()
)]
pub(crate) struct Args {
    /// MaxMind-format (mmdb) database: one with country data (GeoLite2/GeoIP2 Country or City, DB-IP lite, ip-location-db, IPinfo lite), and, repeating the flag, an ASN database for --labels asn and a city database for --labels city. What each provides is read from its metadata.
    #[arg(long = "geoip.database", value_name = "PATH", default_value = DEFAULT_DATABASE)]
    pub(crate) database: Vec<PathBuf>,

    /// Opt-in labels beyond the country: service (a service label on geoip_connections and its totals: the local port of an inbound connection, the process name of an outbound one), asn (geoip_connections_by_asn, needs an ASN database), city (geoip_connections_by_city and geoip_city_location_info, needs a city database). Repeat the flag or separate with commas.
    #[arg(long = "labels", value_name = "LABEL", value_delimiter = ',')]
    pub(crate) labels: Vec<Label>,

    /// How many services get series of their own with --labels service (the busiest; the rest count as other).
    #[arg(long = "labels.service-limit", value_name = "N", default_value_t = 20, value_parser = |v: &str| parse_count(v, 1, 1000))]
    pub(crate) service_limit: usize,

    /// How many autonomous systems get series of their own in geoip_connections_by_asn (the busiest; the rest count as other).
    #[arg(long = "labels.asn-limit", value_name = "N", default_value_t = 50, value_parser = |v: &str| parse_count(v, 1, 1000))]
    pub(crate) asn_limit: usize,

    /// How many cities get series of their own in geoip_connections_by_city (the busiest; the rest count as other in their country).
    #[arg(long = "labels.city-limit", value_name = "N", default_value_t = 50, value_parser = |v: &str| parse_count(v, 1, 1000))]
    pub(crate) city_limit: usize,

    /// Address to serve metrics on: IP:PORT, [IPv6]:PORT, or :PORT for every address.
    #[arg(long = "web.listen-address", value_name = "ADDRESS", default_value = ":9300", value_parser = parse_listen_address)]
    pub(crate) listen_address: SocketAddr,

    /// Path under which metrics are served.
    #[arg(long = "web.telemetry-path", value_name = "PATH", default_value = "/metrics", value_parser = parse_telemetry_path)]
    pub(crate) telemetry_path: String,

    /// Remote addresses to leave out (your own public ranges, say), besides the built-in ranges below. Repeat the flag or separate with commas.
    #[arg(long = "exclude", value_name = "CIDR", value_delimiter = ',')]
    pub(crate) exclude: Vec<Cidr>,

    /// Web configuration file (the format Prometheus exporters share): TLS certificate and key, optional client CA, basic_auth_users with bcrypt hashes. Certificate files are read again when they change.
    #[arg(long = "web.config.file", value_name = "PATH")]
    pub(crate) web_config: Option<PathBuf>,

    /// HTTP connections served at once; more are answered 503 and closed.
    #[arg(long = "web.max-connections", value_name = "N", default_value_t = 64, value_parser = |v: &str| parse_count(v, 1, 4096))]
    pub(crate) max_connections: usize,

    /// Largest HTTP request line plus headers in bytes; larger requests get 431.
    #[arg(long = "web.max-header-bytes", value_name = "BYTES", default_value_t = 16_384, value_parser = |v: &str| parse_count(v, 1024, 1_048_576))]
    pub(crate) max_header_bytes: usize,

    /// Time a client has to send a request's headers; also how long an idle kept-alive connection stays open.
    #[arg(long = "web.read-header-timeout", value_name = "DURATION", default_value = "10s", value_parser = parse_positive_duration)]
    pub(crate) header_timeout: Duration,

    /// Serve /api/v1/connections: every tracked connection with its remote address and port. Off by default: remote addresses are personal data in many jurisdictions; protect the endpoint (--web.config.file) before turning it on.
    #[arg(long = "web.enable-connections-api")]
    pub(crate) connections_api: bool,

    /// Export geoip_connection_duration_seconds{country,direction}: how long connections lived, observed when they close (the kernel program reads the clock at each open and close).
    #[arg(long = "metrics.duration")]
    pub(crate) duration: bool,

    /// Export geoip_received_bytes_total and geoip_sent_bytes_total{country,direction}: the payload bytes of every connection, read from its socket's counters by the kernel program when it closes and every --metrics.bytes-interval while it is open.
    #[arg(long = "metrics.bytes")]
    pub(crate) bytes: bool,

    /// How often the bytes of connections still open are counted (a sock_diag pass over every namespace), with --metrics.bytes: a duration such as 60s or 5m; 0 counts them only when they close.
    #[arg(long = "metrics.bytes-interval", value_name = "DURATION", default_value = "60s", value_parser = parse_interval)]
    pub(crate) bytes_interval: Duration,

    /// Also export the original tool's job_location{location} gauge (connections by country code, both directions), for dashboards built on sum(job_location) by (location).
    #[arg(long = "metrics.legacy-job-location")]
    pub(crate) legacy_job_location: bool,

    /// Size of the kernel ring buffer in bytes (a power of two, at least 4096; 72 bytes an event). Raise it when geoip_exporter_events_lost_total grows.
    #[arg(long = "ringbuf.size-bytes", alias = "kernel.ring-buffer-bytes", value_name = "BYTES", default_value_t = DEFAULT_RING_BYTES, value_parser = parse_ring_bytes)]
    pub(crate) ring_buffer_bytes: u32,

    /// How often to look whether the kernel lost or skipped events since the last reconcile, and if it did, compare the connection table with the kernel's socket table (sock_diag, every network namespace) and repair it: a duration such as 60s, 5m or 1m30s; 0 disables reconciling.
    #[arg(long = "reconcile.interval", value_name = "DURATION", default_value = "60s", value_parser = parse_interval)]
    pub(crate) reconcile_interval: Duration,

    /// Reconcile at least this often even when no event was lost (a safety net; with no loss the table is exact). Checked every --reconcile.interval; set it to the same value to reconcile every interval; 0 reconciles only after losses.
    #[arg(long = "reconcile.max-interval", value_name = "DURATION", default_value = "15m", value_parser = parse_interval)]
    pub(crate) reconcile_max_interval: Duration,

    /// Check whether this host can run the exporter with these flags, and exit without serving: kernel version, BTF, tracepoint, capabilities, ring buffer, database, listen address, then the real start-up (load and attach the program, take the snapshot). One line per item, ok/warn/FAILED/skipped, with what to do. Given no other flag, checks the flags of the packaged service (/etc/default/geoip-exporter). The same as the command `check`.
    #[arg(long = "check")]
    pub(crate) check: bool,

    /// check: the same as --check.
    #[arg(value_name = "COMMAND", value_enum)]
    pub(crate) command: Option<Command>,

    /// Print the completion script for SHELL (bash, zsh, fish, elvish, powershell) on stdout and exit; e.g. geoip-exporter --completions bash > /etc/bash_completion.d/geoip-exporter
    #[arg(long, value_name = "SHELL")]
    pub(crate) completions: Option<clap_complete::Shell>,

    /// Print the manual page (roff, section 8) on stdout and exit; e.g. geoip-exporter --man-page | man -l -
    #[arg(long = "man-page")]
    pub(crate) man_page: bool,

    /// Log level: error, warn, info or debug. Logs go to stderr.
    #[arg(long = "log.level", value_name = "LEVEL", default_value = "info")]
    pub(crate) log_level: LogLevel,
}

/// A command instead of serving.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Command {
    /// Check whether this host can run the exporter with these flags (--check).
    Check,
}

/// An opt-in label (`--labels`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Label {
    /// A `service` label on `geoip_connections` and its totals.
    Service,
    /// `geoip_connections_by_asn{asn,as_org,direction}`.
    Asn,
    /// `geoip_connections_by_city{country,city,direction}`.
    City,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
}

fn builtin_help() -> String {
    let mut help = String::from("Always excluded (not \"the world\"):\n");
    for (cidr, why) in BUILTIN {
        let _ = writeln!(help, "  {cidr:<20} {why}");
    }
    help.push_str("IPv4-mapped IPv6 addresses (::ffff:a.b.c.d) are treated as IPv4.");
    help
}

pub(crate) fn parse_listen_address(value: &str) -> Result<SocketAddr, String> {
    let bad = || {
        format!(
            "{value:?} is not IP:PORT, [IPv6]:PORT or :PORT (e.g. :9300, 127.0.0.1:9300, [::1]:9300)"
        )
    };
    if let Some(port) = value.strip_prefix(':') {
        let port: u16 = port.parse().map_err(|_| bad())?;
        return Ok(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port));
    }
    value.parse().map_err(|_| bad())
}

/// The paths the exporter serves besides its metrics.
const OWN_PATHS: [&str; 3] = ["/", "/healthz", "/assets/world.json"];

fn parse_telemetry_path(value: &str) -> Result<String, String> {
    let segment_ok = |s: &str| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
    };
    let ok = value
        .strip_prefix('/')
        .is_some_and(|rest| rest.split('/').all(segment_ok))
        && !OWN_PATHS.contains(&value)
        && value.split('/').nth(1) != Some("api");
    if ok {
        Ok(value.to_owned())
    } else {
        Err(format!(
            "{value:?} is not a usable path: it must start with '/' and hold only letters, digits and - . _ ~ between single slashes, and not be '/', '/healthz', '/assets/world.json' or under '/api'"
        ))
    }
}

fn parse_ring_bytes(value: &str) -> Result<u32, String> {
    match value.parse::<u32>() {
        Ok(n) if n >= 4096 && n.is_power_of_two() => Ok(n),
        _ => Err(format!(
            "{value:?} is not a power of two between 4096 and 2147483648 (e.g. {DEFAULT_RING_BYTES})"
        )),
    }
}

/// A Prometheus-style duration: one or more `<number><unit>` with units
/// ms, s, m, h, d (`90s`, `1m30s`, `500ms`), or `0`.
pub(crate) fn parse_duration(value: &str) -> Result<Duration, String> {
    let bad = || format!("{value:?} is not a duration such as 500ms, 30s, 5m, 1h30m or 0");
    if value == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = Duration::ZERO;
    let mut rest = value;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let number: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(1),
            "s" => Duration::from_secs(1),
            "m" => Duration::from_mins(1),
            "h" => Duration::from_hours(1),
            "d" => Duration::from_hours(24),
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        let part = u32::try_from(number)
            .ok()
            .and_then(|n| unit.checked_mul(n))
            .ok_or_else(bad)?;
        total = total.checked_add(part).ok_or_else(bad)?;
    }
    Ok(total)
}

fn parse_count(value: &str, min: usize, max: usize) -> Result<usize, String> {
    value
        .parse()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| format!("{value:?} is not a whole number from {min} to {max}"))
}

fn parse_positive_duration(value: &str) -> Result<Duration, String> {
    match parse_duration(value)? {
        d if d < Duration::from_millis(100) => Err(format!(
            "{value:?} is shorter than the least, 100ms (e.g. 10s)"
        )),
        d => Ok(d),
    }
}

/// An interval of background work: 0 (off), or at least a second (a
/// shorter one would keep an idle exporter busy).
fn parse_interval(value: &str) -> Result<Duration, String> {
    match parse_duration(value)? {
        d if !d.is_zero() && d < Duration::from_secs(1) => Err(format!(
            "{value:?} is shorter than the least, 1s (0 turns it off; e.g. 60s)"
        )),
        d => Ok(d),
    }
}

#[cfg(test)]
mod tests {
    /// `--completions SHELL` and `--man-page` print what packages install:
    /// every flag is in both.
    #[test]
    fn completions_and_man_page_describe_every_flag() {
        use clap::CommandFactory as _;
        let flags: Vec<String> = Args::command()
            .get_arguments()
            .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
            .collect();
        assert!(flags.len() > 20, "{flags:?}");
        let text = |argv: &[&str]| {
            let args = Args::try_parse_from(argv).unwrap();
            String::from_utf8(self_description(&args).unwrap().unwrap()).unwrap()
        };
        for shell in ["bash", "zsh", "fish"] {
            let script = text(&["geoip-exporter", "--completions", shell]);
            for flag in &flags {
                let bare = flag.trim_start_matches('-');
                assert!(script.contains(bare), "{shell}: {flag}");
            }
        }
        let man = text(&["geoip-exporter", "--man-page"]);
        assert!(man.contains(".TH geoip-exporter 8"), "{man}");
        for flag in &flags {
            // roff escapes each '-' as '\-'.
            assert!(man.contains(&flag.replace('-', "\\-")), "man page: {flag}");
        }
        // The command `check` too (completions offer it; the page lists it).
        assert!(text(&["geoip-exporter", "--completions", "bash"]).contains("check"));
        assert!(man.contains("check"), "man page: check");
        // And the README's table of flags.
        let readme = include_str!("../../README.md");
        for flag in &flags {
            assert!(
                readme.contains(&format!("| `{flag}")),
                "README.md Flags: {flag}"
            );
        }
        let none = Args::try_parse_from(["geoip-exporter"]).unwrap();
        assert!(self_description(&none).is_none());
        let err = Args::try_parse_from(["geoip-exporter", "--completions", "tcsh"]).unwrap_err();
        assert!(err.to_string().contains("tcsh"), "{err}");
    }

    /// `--version` tells the version, commit, build date and what the host
    /// needs; `-V` the first line only.
    #[test]
    fn version_tells_the_build_and_what_the_host_needs() {
        let long = Args::try_parse_from(["geoip-exporter", "--version"])
            .unwrap_err()
            .to_string();
        let first = format!(
            "geoip-exporter {} (commit {}, built {})",
            env!("CARGO_PKG_VERSION"),
            env!("GEOIP_GIT_COMMIT"),
            env!("GEOIP_BUILD_DATE")
        );
        assert_eq!(long.lines().next(), Some(first.as_str()), "{long}");
        assert!(
            long.contains("needs: Linux 5.8") && long.contains("CAP_BPF"),
            "{long}"
        );
        let short = Args::try_parse_from(["geoip-exporter", "-V"])
            .unwrap_err()
            .to_string();
        assert_eq!(short.trim_end(), first);
    }

    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("geoip-exporter").chain(args.iter().copied()))
    }

    #[test]
    fn defaults() {
        let a = parse(&[]).unwrap();
        assert_eq!(a.database, vec![PathBuf::from(DEFAULT_DATABASE)]);
        assert!(a.labels.is_empty());
        assert_eq!((a.service_limit, a.asn_limit, a.city_limit), (20, 50, 50));
        assert!(!a.duration && !a.bytes);
        assert_eq!(a.bytes_interval, Duration::from_mins(1));
        assert_eq!(a.listen_address, "[::]:9300".parse().unwrap());
        assert_eq!(a.telemetry_path, "/metrics");
        assert!(a.exclude.is_empty());
        assert!(!a.legacy_job_location);
        assert!(
            !a.connections_api,
            "remote addresses are not exposed by default"
        );
        assert_eq!(a.ring_buffer_bytes, DEFAULT_RING_BYTES);
        assert_eq!(a.reconcile_interval, Duration::from_mins(1));
        assert_eq!(a.reconcile_max_interval, Duration::from_mins(15));
    }

    #[test]
    fn every_flag() {
        let a = parse(&[
            "--geoip.database=/x.mmdb",
            "--geoip.database=/asn.mmdb",
            "--labels=asn,city",
            "--labels=service",
            "--labels.service-limit=3",
            "--labels.asn-limit=5",
            "--labels.city-limit=7",
            "--metrics.duration",
            "--metrics.bytes",
            "--metrics.bytes-interval=5m",
            "--web.listen-address",
            "127.0.0.1:9999",
            "--web.telemetry-path=/m",
            "--exclude",
            "203.0.113.0/24,2001:db8::/32",
            "--exclude=198.51.100.7",
            "--metrics.legacy-job-location",
            "--web.enable-connections-api",
            "--ringbuf.size-bytes=8192",
            "--reconcile.interval=1m30s",
            "--reconcile.max-interval=1h",
            "--log.level=debug",
            "--check",
        ])
        .unwrap();
        assert_eq!(
            a.database,
            vec![PathBuf::from("/x.mmdb"), PathBuf::from("/asn.mmdb")],
            "a given database replaces the default"
        );
        assert_eq!(a.labels, vec![Label::Asn, Label::City, Label::Service]);
        assert_eq!((a.service_limit, a.asn_limit, a.city_limit), (3, 5, 7));
        assert!(a.duration && a.bytes);
        assert_eq!(a.bytes_interval, Duration::from_mins(5));
        assert_eq!(a.listen_address, "127.0.0.1:9999".parse().unwrap());
        assert_eq!(a.telemetry_path, "/m");
        assert_eq!(a.exclude.len(), 3);
        assert!(a.legacy_job_location && a.check && a.connections_api);
        assert_eq!(a.ring_buffer_bytes, 8192);
        assert_eq!(a.reconcile_interval, Duration::from_secs(90));
        assert_eq!(a.reconcile_max_interval, Duration::from_hours(1));
        let old = parse(&["--kernel.ring-buffer-bytes=16384"]).unwrap();
        assert_eq!(old.ring_buffer_bytes, 16384, "the old spelling still works");
    }

    /// A path under `/api` is refused by segment: `/apix` is a path of
    /// its own; the other routes' paths are refused, every other sane one
    /// taken.
    #[test]
    fn telemetry_paths_by_segment() {
        for ok in [
            "/metrics",
            "/apix",
            "/m/x-1.v2",
            "/healthzz",
            "/assets/other.json",
        ] {
            assert_eq!(parse_telemetry_path(ok).as_deref(), Ok(ok));
        }
        for bad in [
            "/api", "/api/x", "/healthz", "/", "/a/./b", "/a/../b", "/a/", "/a b",
        ] {
            assert!(parse_telemetry_path(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_interval("0"), Ok(Duration::ZERO), "0 turns it off");
        assert_eq!(parse_interval("1s"), Ok(Duration::from_secs(1)));
    }

    #[test]
    fn durations() {
        for (text, want) in [
            ("0", Duration::ZERO),
            ("500ms", Duration::from_millis(500)),
            ("60s", Duration::from_mins(1)),
            ("1h30m", Duration::from_mins(90)),
            ("2d", Duration::from_hours(48)),
        ] {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
        }
        for bad in ["", "5", "s", "1x", "-1s", "1.5s", "99999999999h", "1s 2s"] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn bad_values_are_usage_errors_naming_the_value() {
        for (args, needle) in [
            (vec!["--exclude", "10.0.0.0/33"], "10.0.0.0/33"),
            (vec!["--exclude", "banana"], "banana"),
            (vec!["--web.listen-address", "localhost"], "\"localhost\""),
            (vec!["--web.listen-address", ":99999"], ":99999"),
            (vec!["--web.telemetry-path", "metrics"], "\"metrics\""),
            (vec!["--web.telemetry-path", "/"], "\"/\""),
            (
                vec!["--web.telemetry-path", "/assets/world.json"],
                "\"/assets/world.json\" is not a usable path",
            ),
            (vec!["--web.telemetry-path", "/:p"], "\"/:p\""),
            (vec!["--web.telemetry-path", "/x/:y"], "\"/x/:y\""),
            (vec!["--web.telemetry-path", "/x//y"], "\"/x//y\""),
            (vec!["--web.telemetry-path", "/api/m"], "\"/api/m\""),
            (vec!["--web.telemetry-path", "/{m}"], "\"/{m}\""),
            (
                vec!["--reconcile.interval", "1ms"],
                "\"1ms\" is shorter than the least, 1s",
            ),
            (
                vec!["--metrics.bytes-interval", "999ms"],
                "\"999ms\" is shorter",
            ),
            (
                vec!["--reconcile.max-interval", "10ms"],
                "\"10ms\" is shorter",
            ),
            (
                vec!["--web.read-header-timeout", "1ms"],
                "\"1ms\" is shorter than the least, 100ms",
            ),
            (vec!["--ringbuf.size-bytes", "5000"], "\"5000\""),
            (vec!["--reconcile.interval", "soon"], "\"soon\""),
            (vec!["--reconcile.max-interval", "1 h"], "\"1 h\""),
            (
                vec!["--web.max-connections", "0"],
                "\"0\" is not a whole number from 1",
            ),
            (vec!["--web.max-header-bytes", "10"], "\"10\""),
            (vec!["--web.read-header-timeout", "0"], "\"0\""),
            (vec!["--log.level", "loud"], "loud"),
            (vec!["--labels", "colour"], "colour"),
            (vec!["--labels.asn-limit", "0"], "\"0\""),
            (vec!["--labels.city-limit", "5000"], "\"5000\""),
            (vec!["--metrics.bytes-interval", "often"], "\"often\""),
        ] {
            let err = parse(&args).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{args:?}");
            assert!(err.to_string().contains(needle), "{args:?}: {err}");
        }
    }

    #[test]
    fn help_documents_every_flag_and_builtin_range() {
        let help = {
            use clap::CommandFactory as _;
            Args::command().render_long_help().to_string()
        };
        for flag in [
            "--geoip.database",
            "--labels",
            "--labels.service-limit",
            "--labels.asn-limit",
            "--labels.city-limit",
            "--metrics.duration",
            "--metrics.bytes",
            "--metrics.bytes-interval",
            "--web.listen-address",
            "--web.telemetry-path",
            "--exclude",
            "--metrics.legacy-job-location",
            "--web.enable-connections-api",
            "--web.config.file",
            "--web.max-connections",
            "--web.max-header-bytes",
            "--web.read-header-timeout",
            "--ringbuf.size-bytes",
            "--reconcile.interval",
            "--reconcile.max-interval",
            "--check",
            "--log.level",
            "100.64.0.0/10",
            "fc00::/7",
        ] {
            assert!(help.contains(flag), "--help lacks {flag}");
        }
    }
}
