//! `geoip-exporter check` (or `--check`): can this host run the exporter
//! with these flags? One line per item, `ok`, `warn`, `FAILED` or
//! `skipped`, each saying what was found and, when it is not ok, what to
//! do. The items that change nothing in the kernel run first and all of
//! them run even after a failure, so one run lists every problem; then,
//! when none failed, the real start-up runs (load and attach the program,
//! snapshot the connections that exist) and stops before serving.
//!
//! Run with no flags at all, the check takes the flags the packaged
//! service runs with, from [`SERVICE_DEFAULTS`], and says so.

use std::{
    ffi::OsString,
    fmt::{Display, Write as _},
    io,
    process::ExitCode,
};

use clap::Parser as _;

use crate::{
    app::{self, AppError},
    capabilities::{
        self, CAP_BPF, CAP_DAC_READ_SEARCH, CAP_PERFMON, CAP_SYS_ADMIN, CAP_SYS_PTRACE,
    },
    cli::{Args, Label},
    geo::{DatabaseInfo, Databases, Records},
    kernel::{
        btf::{Btf, VMLINUX},
        map_create, probe, tracefs,
        version::{self, MIN_KERNEL},
    },
    web::WebConfig,
};

/// Where the packaged service's flags live (`EnvironmentFile=` of the unit).
pub(crate) const SERVICE_DEFAULTS: &str = "/etc/default/geoip-exporter";

/// The variable of [`SERVICE_DEFAULTS`] that holds the flags.
const ARGS_VARIABLE: &str = "GEOIP_EXPORTER_ARGS";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Ok,
    Warn,
    Failed,
    Skipped,
}

impl Status {
    const fn word(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Warn => "warn",
            Self::Failed => "FAILED",
            Self::Skipped => "skipped",
        }
    }
}

/// The lines printed so far, counted.
#[derive(Default)]
struct Report {
    failed: usize,
    warned: usize,
}

impl Report {
    fn line(&mut self, status: Status, item: &str, text: impl Display) {
        match status {
            Status::Failed => self.failed += 1,
            Status::Warn => self.warned += 1,
            Status::Ok | Status::Skipped => {}
        }
        println!("{:<8}{item:<16}{text}", status.word());
    }

    fn result(&mut self, item: &str, result: Result<(Status, String), String>) {
        match result {
            Ok((status, text)) => self.line(status, item, text),
            Err(text) => self.line(Status::Failed, item, text),
        }
    }
}

/// The flags to check: those given, or with none at all, the service's
/// ([`SERVICE_DEFAULTS`]) when that file exists; and whether they are the
/// service's. `Err` is the exit code after a message (2: the file's flags
/// are bad).
pub(crate) fn flags(given: Args, argv: &[OsString]) -> Result<(Args, bool), ExitCode> {
    let bare = argv.len() == 2 && (argv[1] == "check" || argv[1] == "--check");
    if !bare {
        println!(
            "flags: as given ({SERVICE_DEFAULTS}, the service's, is read only when check has no other flag)"
        );
        return Ok((given, false));
    }
    let text = match std::fs::read_to_string(SERVICE_DEFAULTS) {
        Ok(text) => text,
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            println!("flags: the defaults ({SERVICE_DEFAULTS} does not exist)");
            return Ok((given, false));
        }
        Err(err) => {
            eprintln!(
                "geoip-exporter: error: cannot read {SERVICE_DEFAULTS} ({err}); pass the flags to check instead"
            );
            return Err(ExitCode::from(2));
        }
    };
    let words = service_words(&text);
    println!(
        "flags: from {SERVICE_DEFAULTS} ({ARGS_VARIABLE}): {}",
        if words.is_empty() {
            "none, the defaults".to_owned()
        } else {
            words.join(" ")
        }
    );
    let argv = ["geoip-exporter", "--check"]
        .into_iter()
        .map(str::to_owned)
        .chain(words);
    Args::try_parse_from(argv)
        .map(|args| (args, true))
        .map_err(|err| {
            eprintln!("geoip-exporter: error: the flags in {SERVICE_DEFAULTS} are not valid:");
            let _ = err.print();
            ExitCode::from(2)
        })
}

/// The words of the last `GEOIP_EXPORTER_ARGS=` assignment in an
/// environment file, split on white space as systemd splits an unquoted
/// `$VARIABLE` in `ExecStart=`.
fn service_words(text: &str) -> Vec<String> {
    let mut value = None;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        if let Some(rest) = line.strip_prefix(ARGS_VARIABLE)
            && let Some(raw) = rest.trim_start().strip_prefix('=')
        {
            let raw = raw.trim();
            let unquoted = ['"', '\'']
                .iter()
                .find_map(|q| raw.strip_prefix(*q).and_then(|r| r.strip_suffix(*q)))
                .unwrap_or(raw);
            value = Some(unquoted.to_owned());
        }
    }
    value
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// Check everything, print a line per item, and exit 0 when nothing
/// failed, 1 otherwise. With `service`, the flags are the service's, and
/// what its unit's sandbox would refuse them is said too.
pub(crate) fn run(args: Args, service: bool) -> ExitCode {
    let mut report = Report::default();
    report.result("kernel", kernel());
    report.result("BTF", btf(args.bytes));
    report.result("tracepoint", tracepoint());
    let sets = capabilities::current().ok();
    let capabilities = capabilities(sets.as_ref());
    let can_load = capabilities.is_ok();
    report.result("capabilities", capabilities);
    if let Some(namespaces) = namespace_capabilities(&args, sets.as_ref()) {
        report.line(Status::Warn, "namespaces", namespaces);
    }
    if can_load {
        report.result("ring buffer", ring_buffer(args.ring_buffer_bytes));
    } else {
        report.line(
            Status::Skipped,
            "ring buffer",
            "needs the capabilities above",
        );
    }
    let databases = match app::open_databases(&args) {
        Ok(databases) => {
            report.line(Status::Ok, "database", describe_all(&databases));
            Some(databases)
        }
        Err(err) => {
            report.line(Status::Failed, "database", crate::error::chain(&err));
            None
        }
    };
    if let Some(path) = &args.web_config {
        report.result(
            "web config",
            WebConfig::load(path)
                .map(|web| {
                    (
                        Status::Ok,
                        format!(
                            "{}: TLS {}, {} basic-auth user(s)",
                            path.display(),
                            if web.tls.is_some() { "on" } else { "off" },
                            web.users.len()
                        ),
                    )
                })
                .map_err(|err| crate::error::chain(&err)),
        );
    }
    report.result("listen address", listen(&args));
    if service {
        for problem in sandbox_problems(&args) {
            report.line(Status::Warn, "service", problem);
        }
    }
    if let Some(databases) = databases.filter(|_| report.failed == 0) {
        start(args, databases, &mut report);
    } else {
        for item in ["kernel program", "connections"] {
            report.line(Status::Skipped, item, "fix the failed items above first");
        }
    }
    if report.failed == 0 {
        println!(
            "check passed: this host can run geoip-exporter with these flags ({} warning(s))",
            report.warned
        );
        ExitCode::SUCCESS
    } else {
        println!(
            "check failed: {} item(s) failed; do what their lines say and run the check again",
            report.failed
        );
        ExitCode::FAILURE
    }
}

/// The real start-up on the databases the check opened, stopped before
/// serving: load and attach the program, then merge the connections that
/// exist.
fn start(args: Args, databases: Databases, report: &mut Report) {
    let started = match app::start(&args, databases) {
        Ok(started) => started,
        Err(err) => {
            report.line(Status::Failed, "kernel program", crate::error::chain(&err));
            report.line(Status::Skipped, "connections", "needs the kernel program");
            return;
        }
    };
    report.line(
        Status::Ok,
        "kernel program",
        "loaded (the kernel's verifier accepted it) and attached to sock/inet_sock_set_state",
    );
    let merged = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(AppError::EventThread)
        .and_then(|runtime| runtime.block_on(app::run(args, started, std::future::pending())));
    match merged {
        Ok(Some(found)) => report.line(
            Status::Ok,
            "connections",
            format!(
                "{} established connection(s) found and tracked, in {} network namespace(s)",
                found.tracked, found.namespaces
            ),
        ),
        Ok(None) => report.line(Status::Failed, "connections", "the start-up did not finish"),
        Err(err) => report.line(Status::Failed, "connections", crate::error::chain(&err)),
    }
}

/// What [`app::run`] found at start-up in check mode.
pub(crate) struct Found {
    pub(crate) tracked: usize,
    pub(crate) namespaces: usize,
}

fn kernel() -> Result<(Status, String), String> {
    let release =
        version::release().map_err(|err| format!("cannot read the kernel release: {err}"))?;
    let need = format!("{}.{} or later needed", MIN_KERNEL.0, MIN_KERNEL.1);
    match version::parse(&release) {
        Some(version) if version >= MIN_KERNEL => {
            Ok((Status::Ok, format!("Linux {release} ({need})")))
        }
        Some(_) => Err(format!(
            "Linux {release}: {need} (BPF ring buffers, CAP_BPF); upgrade the kernel"
        )),
        None => Ok((
            Status::Warn,
            format!(
                "cannot tell the version of Linux {release:?} ({need}); the items below still tell"
            ),
        )),
    }
}

fn btf(bytes: bool) -> Result<(Status, String), String> {
    let btf = match Btf::from_kernel() {
        Ok(btf) => btf,
        Err(err) if bytes => {
            return Err(format!(
                "{VMLINUX}: {err}; --metrics.bytes needs the kernel's BTF (CONFIG_DEBUG_INFO_BTF=y): use such a kernel or run without --metrics.bytes"
            ));
        }
        Err(err) => {
            return Ok((
                Status::Warn,
                format!(
                    "{VMLINUX}: {err}; the exporter runs, but counts connections in other network namespaces (containers) from events alone; a kernel built with CONFIG_DEBUG_INFO_BTF=y has it"
                ),
            ));
        }
    };
    if bytes && let Err(err) = btf.tcp_layout() {
        return Err(format!("{VMLINUX}: {err}; run without --metrics.bytes"));
    }
    Ok(match btf.sock_layout() {
        Ok(_) => (
            Status::Ok,
            format!(
                "{VMLINUX}: sockets' network namespaces{} found",
                if bytes { " and TCP byte counters" } else { "" }
            ),
        ),
        Err(err) => (
            Status::Warn,
            format!(
                "{VMLINUX}: {err}; connections in other network namespaces (containers) are counted from events alone"
            ),
        ),
    })
}

fn tracepoint() -> Result<(Status, String), String> {
    let path = tracefs::format_path().map_err(|err| err.to_string())?;
    tracefs::read_layout().map_err(|err| crate::error::chain(&err))?;
    Ok((
        Status::Ok,
        format!(
            "sock/inet_sock_set_state present, its record layout read from {}",
            path.display()
        ),
    ))
}

/// The capabilities loading needs (the verdict is the start-up's own,
/// [`probe::check_capabilities`]), and those this process holds.
fn capabilities(sets: Option<&capabilities::Sets>) -> Result<(Status, String), String> {
    let Some(sets) = sets else {
        return Ok((
            Status::Warn,
            "cannot read this process's capabilities; the kernel program item below tells"
                .to_owned(),
        ));
    };
    let relevant = capabilities::bit(CAP_BPF)
        | capabilities::bit(CAP_PERFMON)
        | capabilities::bit(CAP_DAC_READ_SEARCH)
        | capabilities::bit(CAP_SYS_ADMIN)
        | capabilities::bit(CAP_SYS_PTRACE);
    // SAFETY: geteuid has no preconditions.
    let who = if unsafe { libc::geteuid() } == 0 {
        "root"
    } else {
        "not root"
    };
    match probe::check_capabilities() {
        Ok(()) => Ok((
            Status::Ok,
            format!(
                "{who}, effective: {}",
                capabilities::names(sets.effective & relevant).join(" ")
            ),
        )),
        Err(err) => Err(format!(
            "{who}: {err}; as root: sudo geoip-exporter check; the packaged systemd unit grants CAP_BPF, CAP_PERFMON and CAP_DAC_READ_SEARCH"
        )),
    }
}

/// What the missing optional capabilities cost, if any are missing.
fn namespace_capabilities(args: &Args, sets: Option<&capabilities::Sets>) -> Option<String> {
    let sets = sets?;
    let mut wanted = capabilities::bit(CAP_SYS_ADMIN) | capabilities::bit(CAP_SYS_PTRACE);
    let service = args.labels.contains(&Label::Service);
    if service {
        wanted |= capabilities::bit(CAP_DAC_READ_SEARCH);
    }
    let missing = wanted & !sets.permitted;
    if missing == 0 {
        return None;
    }
    Some(format!(
        "without {}: connections in other network namespaces (containers) are counted from events alone{}; add them to read every namespace",
        capabilities::names(missing).join(" and "),
        if service {
            ", and outbound ones open before start-up stay service=\"unknown\""
        } else {
            ""
        }
    ))
}

/// Create (and free) a BPF ring buffer of `bytes`.
fn ring_buffer(bytes: u32) -> Result<(Status, String), String> {
    map_create::ring_buffer(bytes)
        .map(|()| {
            (
                Status::Ok,
                format!("a {bytes}-byte BPF ring buffer was created (and freed)"),
            )
        })
        .map_err(|err| err.to_string())
}

/// Each database: path, type, build date; the country ranges.
fn describe_all(databases: &Databases) -> String {
    let (v4, v6, _) = databases.country.table_size();
    let mut text = format!(
        "{} ({v4} IPv4 and {v6} IPv6 country ranges)",
        describe(databases.country.info())
    );
    for (what, info) in [
        ("ASN", databases.asn.as_ref().map(Records::info)),
        ("city", databases.city.as_ref().map(Records::info)),
    ] {
        if let Some(info) = info {
            let _ = write!(text, "; {what}: {}", describe(info));
        }
    }
    text
}

/// `PATH: type T, built YYYY-MM-DD`.
fn describe(info: &DatabaseInfo) -> String {
    format!(
        "{}: type {}, built {}",
        info.path.display(),
        info.database_type,
        date(info.build_epoch)
    )
}

/// `YYYY-MM-DD` (UTC) of a Unix time.
fn date(epoch: u64) -> String {
    // Days to a civil date (Howard Hinnant's algorithm), for years >= 1970.
    let days = epoch / 86_400;
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// What the packaged unit's sandbox would refuse these flags: files it
/// hides, a port it may not bind.
fn sandbox_problems(args: &Args) -> Vec<String> {
    let mut problems = Vec::new();
    let visible = ["/var/lib/geoip-exporter", "/var/lib/GeoIP"];
    let hidden = [
        "/var/lib",
        "/home",
        "/root",
        "/run/user",
        "/tmp",
        "/var/tmp",
    ];
    let files = args.database.iter().chain(&args.web_config);
    for path in files {
        if hidden.iter().any(|h| path.starts_with(h))
            && !visible.iter().any(|v| path.starts_with(v))
        {
            problems.push(format!(
                "{} is hidden from the service by its unit (it sees {} of /var/lib, no home or temporary directories): move it there, or add a BindReadOnlyPaths= for it in a drop-in (systemctl edit geoip-exporter)",
                path.display(),
                visible.join(" and ")
            ));
        }
    }
    let port = args.listen_address.port();
    if port != 0 && port < 1024 {
        problems.push(format!(
            "port {port} is privileged and the unit does not grant CAP_NET_BIND_SERVICE: add it (to CapabilityBoundingSet= and AmbientCapabilities=) in a drop-in, or listen on a port of 1024 or more"
        ));
    }
    problems
}

fn listen(args: &Args) -> Result<(Status, String), String> {
    let addr = args.listen_address;
    std::net::TcpListener::bind(addr)
        .map(|_| (Status::Ok, format!("{addr} is free")))
        .map_err(|err| {
            if err.kind() == io::ErrorKind::AddrInUse {
                format!(
                    "{addr} is in use ({err}): stop what listens there (a running geoip-exporter?) or pass another --web.listen-address"
                )
            } else {
                format!("cannot listen on {addr} ({err}); pass another --web.listen-address")
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_unit_would_refuse() {
        let args = |extra: &[&str]| {
            Args::try_parse_from(["geoip-exporter", "--check"].iter().chain(extra)).expect("flags")
        };
        let fine = args(&[
            "--geoip.database",
            "/var/lib/geoip-exporter/country.mmdb",
            "--geoip.database",
            "/var/lib/GeoIP/GeoLite2-ASN.mmdb",
            "--labels",
            "asn",
            "--web.listen-address",
            ":9300",
        ]);
        assert!(sandbox_problems(&fine).is_empty());
        let problems = sandbox_problems(&args(&[
            "--geoip.database",
            "/var/lib/other/country.mmdb",
            "--web.config.file",
            "/root/web.yml",
            "--web.listen-address",
            ":443",
        ]));
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].starts_with("/var/lib/other/country.mmdb is hidden"));
        assert!(problems[1].starts_with("/root/web.yml is hidden"));
        assert!(problems[2].contains("CAP_NET_BIND_SERVICE"));
        // Elsewhere (e.g. /srv, /opt) the unit's read-only system shows it.
        assert!(sandbox_problems(&args(&["--geoip.database", "/srv/geo/country.mmdb"])).is_empty());
    }

    #[test]
    fn dates() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(951_782_400), "2000-02-29");
        assert_eq!(date(1_796_083_200), "2026-12-01");
    }

    #[test]
    fn the_service_words_are_those_systemd_would_pass() {
        let file = "# comment GEOIP_EXPORTER_ARGS=\"--no\"\n\
                    GEOIP_EXPORTER_ARGS=\"--geoip.database /var/lib/geoip-exporter/country.mmdb  --web.listen-address :9300\"\n\
                    #GEOIP_EXPORTER_ARGS=\"--commented\"\n";
        assert_eq!(
            service_words(file),
            [
                "--geoip.database",
                "/var/lib/geoip-exporter/country.mmdb",
                "--web.listen-address",
                ":9300"
            ]
        );
        assert_eq!(
            service_words("GEOIP_EXPORTER_ARGS='--a b'\nGEOIP_EXPORTER_ARGS=--c\n"),
            ["--c"]
        );
        assert!(service_words("OTHER=1\n").is_empty());
        assert!(service_words("GEOIP_EXPORTER_ARGS=\"\"\n").is_empty());
    }

    #[test]
    fn the_installed_defaults_file_parses() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/systemd/geoip-exporter.default"
        ))
        .expect("deploy/systemd/geoip-exporter.default");
        let words = service_words(&text);
        let args = Args::try_parse_from(
            ["geoip-exporter", "--check"]
                .into_iter()
                .map(str::to_owned)
                .chain(words.iter().cloned()),
        );
        assert!(args.is_ok(), "{words:?}: {args:?}");
        assert!(
            words.contains(&"/var/lib/geoip-exporter/country.mmdb".to_owned()),
            "{words:?}"
        );
    }
}
