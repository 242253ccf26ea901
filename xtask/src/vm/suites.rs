//! What runs inside each guest: the real-kernel tests whose answers
//! depend on the kernel (its events, BTF offsets, maps, helpers, netlink
//! replies), chosen so that the three kernels under software emulation add
//! about a quarter of an hour; the script that runs them; and reading
//! what each suite gave back from the script's output.

use std::{collections::BTreeMap, fmt::Write as _, path::Path, process::Command, time::Duration};

use anyhow::{Context as _, Result, bail};

use crate::cmd;

/// A group of tests of one test target.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Suite {
    pub(crate) name: &'static str,
    /// The test target of `geoip-tests` (`tests/tests/<target>.rs`).
    target: &'static str,
    /// Exact test names; empty: every test of the target.
    tests: &'static [&'static str],
    /// What it shows, for the README.
    pub(crate) shows: &'static str,
}

pub(crate) const SUITES: [Suite; 5] = [
    Suite {
        name: "check",
        target: "bad_input",
        tests: &["check_passes_item_by_item_on_this_host"],
        shows: "`check` passes item by item with the defaults (the locked-memory limit raised where the kernel counts maps against it)",
    },
    Suite {
        name: "e2e",
        target: "e2e",
        tests: &[],
        shows: "exact counts by country and direction, IPv4 and IPv6, connections open before start, exclusions, every build of the program loads, the idle wake-up, the metric contract",
    },
    Suite {
        name: "faults",
        target: "faults",
        tests: &[
            "lost_events_are_counted_and_repaired_by_the_reconcile",
            "connections_in_other_namespaces_are_counted_apart",
        ],
        shows: "lost events counted and repaired by the reconcile; connections in other network namespaces (containers)",
    },
    Suite {
        name: "service",
        target: "labels",
        tests: &[
            "the_service_label_is_the_process_or_the_port_and_is_capped",
            "a_connection_made_before_start_is_named_after_its_process",
        ],
        shows: "`--labels service`: the process name (`bpf_get_current_comm`, BTF) or the port",
    },
    Suite {
        name: "measures",
        target: "measures",
        tests: &[],
        shows: "`--metrics.bytes` and `--metrics.duration` exact (`struct tcp_sock` read through BTF)",
    },
];

/// The test executables of `geoip-tests`, by target name, built
/// (release) without running.
pub(crate) fn build_executables(workspace: &Path) -> Result<BTreeMap<String, String>> {
    let text = cmd::stdout(Command::new("cargo").current_dir(workspace).args([
        "test",
        "--release",
        "-p",
        "geoip-tests",
        "--no-run",
        "--message-format=json",
    ]))?;
    let mut found = BTreeMap::new();
    for line in text.lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let is_test = message["target"]["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == "test"));
        if let (true, Some(name), Some(exe)) = (
            is_test,
            message["target"]["name"].as_str(),
            message["executable"].as_str(),
        ) {
            found.insert(name.to_owned(), exe.to_owned());
        }
    }
    Ok(found)
}

/// The guest's script: each of `suites`, its begin and end marked on the
/// output with its status and time.
pub(crate) fn script(
    suites: &[Suite],
    executables: &BTreeMap<String, String>,
    workspace: &Path,
    exporter: &Path,
) -> Result<String> {
    let mut s = format!(
        "cd '{}'\nexport GEOIP_EXPORTER_BIN='{}' RUST_BACKTRACE=0\nulimit -l 64\n\
         echo \"@@vm kernel $(uname -r), RLIMIT_MEMLOCK $(ulimit -l) KiB\"\n\
         run() {{\n  name=$1; shift\n  echo \"@@vm begin $name\"\n  begin=$(date +%s%N)\n  \"$@\"\n  status=$?\n  \
         end=$(date +%s%N)\n  echo \"@@vm end $name status=$status ms=$(( (end - begin) / 1000000 ))\"\n}}\n",
        workspace.display(),
        exporter.display()
    );
    for suite in suites {
        let exe = executables
            .get(suite.target)
            .with_context(|| format!("no test executable for target {}", suite.target))?;
        write!(
            s,
            "run {} '{exe}' --test-threads=1 --color=never",
            suite.name
        )?;
        if !suite.tests.is_empty() {
            s.push_str(" --exact");
            for test in suite.tests {
                write!(s, " {test}")?;
            }
        }
        s.push('\n');
    }
    Ok(s)
}

/// How one suite ended in one guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Ran {
    pub(crate) suite: String,
    /// `None`: it did not end (the guest died or was stopped).
    pub(crate) status: Option<i32>,
    pub(crate) passed: usize,
    pub(crate) failed: Vec<String>,
    pub(crate) time: Duration,
    /// The tests the suite names, when it names them: each must pass.
    pub(crate) expected: Option<usize>,
}

impl Ran {
    pub(crate) fn ok(&self) -> bool {
        self.status == Some(0)
            && self.failed.is_empty()
            && self.expected.map_or(self.passed > 0, |n| self.passed == n)
    }
}

/// Each of `suites` as the script's `output` says it ended (one that
/// never began or ended is listed as not ended).
pub(crate) fn read(output: &str, suites: &[Suite]) -> Vec<Ran> {
    suites
        .iter()
        .map(|suite| {
            let begin = format!("@@vm begin {}", suite.name);
            let mut ran = Ran {
                suite: suite.name.to_owned(),
                status: None,
                passed: 0,
                failed: Vec::new(),
                time: Duration::ZERO,
                expected: (!suite.tests.is_empty()).then_some(suite.tests.len()),
            };
            let Some(start) = output.lines().position(|l| l == begin) else {
                return ran;
            };
            for line in output.lines().skip(start + 1) {
                if let Some(end) = line.strip_prefix(&format!("@@vm end {} ", suite.name)) {
                    let field = |key: &str| {
                        end.split_whitespace()
                            .find_map(|w| w.strip_prefix(key))
                            .and_then(|v| v.parse::<u64>().ok())
                    };
                    ran.status = field("status=").and_then(|s| i32::try_from(s).ok());
                    ran.time = Duration::from_millis(field("ms=").unwrap_or(0));
                    break;
                }
                if let Some(test) = line
                    .strip_prefix("test ")
                    .and_then(|t| t.strip_suffix(" ... FAILED"))
                {
                    ran.failed.push(test.to_owned());
                }
                if line.starts_with("test ") && line.ends_with(" ... ok") {
                    ran.passed += 1;
                }
            }
            ran
        })
        .collect()
}

/// Fails unless every name in `only` is a suite.
pub(crate) fn chosen(only: &[String]) -> Result<Vec<Suite>> {
    if only.is_empty() {
        return Ok(SUITES.to_vec());
    }
    only.iter()
        .map(|name| {
            SUITES.iter().find(|s| s.name == name).copied().map_or_else(
                || {
                    let names: Vec<_> = SUITES.iter().map(|s| s.name).collect();
                    bail!("no suite {name:?}: the suites are {}", names.join(", "))
                },
                Ok,
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUTPUT: &str = "@@vm kernel 5.10.0-46-cloud-amd64, RLIMIT_MEMLOCK 64 KiB\n\
        @@vm begin e2e\nrunning 2 tests\ntest a ... ok\ntest b ... FAILED\n\
        test result: FAILED. 1 passed; 1 failed\n@@vm end e2e status=101 ms=61234\n\
        @@vm begin faults\ntest c ... ok\n";

    #[test]
    fn each_suite_is_read_from_its_markers() {
        let suites = chosen(&["e2e".into(), "faults".into(), "measures".into()]).unwrap();
        let ran = read(OUTPUT, &suites);
        assert_eq!(ran[0].status, Some(101));
        assert_eq!(ran[0].passed, 1);
        assert_eq!(ran[0].failed, ["b"]);
        assert_eq!(ran[0].time, Duration::from_millis(61_234));
        assert!(!ran[0].ok());
        // Begun, never ended: the guest died in it.
        assert_eq!((ran[1].status, ran[1].passed), (None, 1));
        assert!(!ran[1].ok());
        // Never begun.
        assert_eq!((ran[2].status, ran[2].passed), (None, 0));
        // A suite that names its tests passes only if each of them did.
        let faults = chosen(&["faults".into()]).unwrap();
        let one = "@@vm begin faults\ntest c ... ok\n@@vm end faults status=0 ms=1\n";
        assert!(!read(one, &faults)[0].ok(), "one of its two tests ran");
        let two =
            "@@vm begin faults\ntest c ... ok\ntest d ... ok\n@@vm end faults status=0 ms=1\n";
        assert!(read(two, &faults)[0].ok());
        assert!(chosen(&["nope".into()]).is_err());
    }

    #[test]
    fn the_script_runs_each_suite_with_its_tests() {
        let exes: BTreeMap<String, String> = SUITES
            .iter()
            .map(|s| (s.target.to_owned(), format!("/t/{}-1", s.target)))
            .collect();
        let text = script(&SUITES, &exes, Path::new("/w"), Path::new("/w/exe")).unwrap();
        assert!(text.contains(
            "run faults '/t/faults-1' --test-threads=1 --color=never --exact lost_events_are_counted_and_repaired_by_the_reconcile connections_in_other_namespaces_are_counted_apart\n"
        ));
        assert!(text.contains("run e2e '/t/e2e-1' --test-threads=1 --color=never\n"));
        assert!(script(&SUITES, &BTreeMap::new(), Path::new("/w"), Path::new("/e")).is_err());
    }
}
