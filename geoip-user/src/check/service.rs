//! The packaged service's flags: where they live, the words systemd
//! passes, and what the unit's sandbox would refuse of them.

use std::{ffi::OsString, path::Path, process::ExitCode};

use clap::Parser as _;

use crate::{
    cli::Args,
    untrusted_file::{self, Bound, FileError},
};

/// Where the packaged service's flags live (`EnvironmentFile=` of the unit).
pub(super) const SERVICE_DEFAULTS: &str = "/etc/default/geoip-exporter";

/// The variable of [`SERVICE_DEFAULTS`] that holds the flags.
const ARGS_VARIABLE: &str = "GEOIP_EXPORTER_ARGS";

/// The flags to check: those given, or with none at all, the service's
/// ([`SERVICE_DEFAULTS`]) when that file exists; and whether they are the
/// service's. `Err` is the exit code after a message (2: the file's flags
/// are bad).
pub(super) fn flags(given: Args, argv: &[OsString]) -> Result<(Args, bool), ExitCode> {
    let bare = argv.len() == 2 && (argv[1] == "check" || argv[1] == "--check");
    if !bare {
        println!(
            "flags: as given ({SERVICE_DEFAULTS}, the service's, is read only when check has no other flag)"
        );
        return Ok((given, false));
    }
    let text = match untrusted_file::read_to_string(
        Path::new(SERVICE_DEFAULTS),
        Bound {
            what: "a service's flags file",
            max: 64 << 10,
        },
    ) {
        Ok(text) => text,
        Err(FileError::NotFound) => {
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

/// What the packaged unit's sandbox would refuse these flags: files it
/// hides, a port it may not bind.
pub(super) fn sandbox_problems(args: &Args) -> Vec<String> {
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
