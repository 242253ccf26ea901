//! The matrix's results: one table (kernel, each suite: passed or failed
//! and its time), the failures by kernel and test, and the README's
//! "Supported kernels" table made from them.

use std::{fmt::Write as _, time::Duration};

use anyhow::{Context as _, Result};

use super::{
    kernels::Kernel,
    suites::{Ran, Suite},
};

/// One kernel's run.
pub(crate) struct Row {
    pub(crate) kernel: Kernel,
    pub(crate) ran: Vec<Ran>,
    /// The whole boot, suites included.
    pub(crate) elapsed: Duration,
    /// The guest script's exit status; `None` when it did not end.
    pub(crate) status: Option<i32>,
    /// Why the guest gave nothing, when it did not end.
    pub(crate) trouble: Option<String>,
}

fn secs(d: Duration) -> String {
    format!("{:.0} s", d.as_secs_f64())
}

fn cell(ran: &Ran) -> String {
    let word = if ran.ok() {
        "passed"
    } else if ran.status.is_none() {
        "did not end"
    } else {
        "FAILED"
    };
    format!("{word} ({}, {})", ran.passed, secs(ran.time))
}

/// The table printed at the end of a run.
pub(crate) fn table(rows: &[Row], suites: &[Suite]) -> String {
    let mut header = vec!["kernel".to_owned()];
    header.extend(suites.iter().map(|s| s.name.to_owned()));
    header.push("boot and all".to_owned());
    let mut lines = vec![header];
    for row in rows {
        let mut line = vec![format!("{} ({})", row.kernel.line.name, row.kernel.release)];
        line.extend(row.ran.iter().map(cell));
        line.push(secs(row.elapsed));
        lines.push(line);
    }
    let widths: Vec<usize> = (0..lines[0].len())
        .map(|i| {
            lines
                .iter()
                .map(|l| l.get(i).map_or(0, String::len))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::from("kernel matrix (passed tests, time):\n");
    for line in &lines {
        let cells: Vec<String> = line
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// Every failure, by kernel and test.
pub(crate) fn failures(rows: &[Row]) -> Vec<String> {
    let mut out = Vec::new();
    for row in rows {
        let kernel = format!("{} ({})", row.kernel.line.name, row.kernel.release);
        if let Some(trouble) = &row.trouble {
            out.push(format!("{kernel}: {trouble}"));
        }
        for ran in row.ran.iter().filter(|r| !r.ok()) {
            if ran.failed.is_empty() {
                let why = match ran.status {
                    None => "did not end (the guest stopped in it; see its console)".to_owned(),
                    Some(0) => "ran no test".to_owned(),
                    Some(s) => format!("exited with {s}"),
                };
                out.push(format!("{kernel}: suite {} {why}", ran.suite));
            }
            for test in &ran.failed {
                out.push(format!("{kernel}: suite {}: test {test} FAILED", ran.suite));
            }
        }
    }
    out
}

/// The README's table: each kernel, who ships it, what passed on it.
pub(crate) fn readme_table(rows: &[Row], suites: &[Suite], date: &str, accel: &str) -> String {
    let mut out =
        String::from("| kernel | shipped by | what passed in its guest |\n|---|---|---|\n");
    for row in rows {
        let passed: Vec<&str> = row
            .ran
            .iter()
            .filter(|r| r.ok())
            .map(|r| r.suite.as_str())
            .collect();
        let failed: Vec<&str> = row
            .ran
            .iter()
            .filter(|r| !r.ok())
            .map(|r| r.suite.as_str())
            .collect();
        let mut what = if passed.len() == suites.len() {
            format!("all {} suites ({})", suites.len(), passed.join(", "))
        } else {
            passed.join(", ")
        };
        if !failed.is_empty() {
            let _ = write!(what, "; FAILED: {}", failed.join(", "));
        }
        let _ = writeln!(
            out,
            "| {} (`{}`) | {} | {what} |",
            row.kernel.line.name, row.kernel.release, row.kernel.line.shipped_by
        );
    }
    let _ = writeln!(
        out,
        "\nFrom `cargo xtask vm-test` on {date} ({accel}); the suites:"
    );
    for suite in suites {
        let _ = writeln!(out, "- {}: {}.", suite.name, suite.shows);
    }
    out
}

const BEGIN: &str =
    "<!-- kernel-matrix:begin (cargo xtask vm-test --update-readme writes this) -->";
const END: &str = "<!-- kernel-matrix:end -->";

/// `readme` with the text between its matrix markers replaced by `table`.
pub(crate) fn with_table(readme: &str, table: &str) -> Result<String> {
    let begin = readme
        .find(BEGIN)
        .with_context(|| format!("the README has no line {BEGIN}"))?;
    let end = readme[begin..]
        .find(END)
        .map(|e| begin + e)
        .with_context(|| format!("the README has no line {END} after the begin marker"))?;
    Ok(format!(
        "{}{BEGIN}\n{table}{}",
        &readme[..begin],
        &readme[end..]
    ))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::vm::{kernels::LINES, suites::SUITES};

    fn row(failed: bool) -> Row {
        let ran = SUITES
            .iter()
            .map(|s| Ran {
                suite: s.name.to_owned(),
                status: Some(i32::from(failed && s.name == "faults") * 101),
                passed: 2,
                failed: if failed && s.name == "faults" {
                    vec!["lost_events".to_owned()]
                } else {
                    Vec::new()
                },
                time: Duration::from_secs(10),
                expected: None,
            })
            .collect();
        Row {
            kernel: Kernel {
                line: LINES[0],
                release: "5.10.0-46-cloud-amd64".to_owned(),
                root: PathBuf::new(),
            },
            ran,
            elapsed: Duration::from_mins(1),
            status: Some(0),
            trouble: None,
        }
    }

    #[test]
    fn failures_name_the_kernel_and_the_test() {
        let rows = [row(false), row(true)];
        assert_eq!(
            failures(&rows),
            ["5.10 (5.10.0-46-cloud-amd64): suite faults: test lost_events FAILED"]
        );
        let text = table(&rows, &SUITES);
        assert!(text.contains("FAILED (2, 10 s)"), "{text}");
        let readme = readme_table(&rows, &SUITES, "2026-12-04", "tcg");
        assert!(readme.contains("all 5 suites"), "{readme}");
        assert!(readme.contains("; FAILED: faults |"), "{readme}");
    }

    #[test]
    fn the_readme_table_goes_between_its_markers() {
        let readme = format!("# x\n{BEGIN}\nold\n{END}\nrest\n");
        assert_eq!(
            with_table(&readme, "new\n").unwrap(),
            format!("# x\n{BEGIN}\nnew\n{END}\nrest\n")
        );
        assert!(with_table("# x\n", "new\n").is_err());
    }
}
