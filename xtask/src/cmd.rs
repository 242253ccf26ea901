//! Running external commands: each is printed before it runs, and a failure
//! names the command line and its exit status.

use std::{
    env,
    ffi::OsStr,
    io,
    os::unix::fs::PermissionsExt,
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

/// Runs `cmd` with inherited stdio; fails unless it exits with status 0.
pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    let line = announce(cmd);
    let status = cmd.status().map_err(|error| start_error(&line, &error))?;
    if !status.success() {
        bail!("command failed ({status}): {line}");
    }
    Ok(())
}

/// Runs `cmd`, capturing its output; returns its stdout when it exits with
/// status 0, else fails with its exit status and stderr.
pub(crate) fn stdout(cmd: &mut Command) -> Result<String> {
    let line = announce(cmd);
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|error| start_error(&line, &error))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stderr = stderr.trim();
        if stderr.is_empty() {
            bail!("command failed ({}): {line}", output.status);
        }
        bail!("command failed ({}): {line}\n{stderr}", output.status);
    }
    String::from_utf8(output.stdout).with_context(|| format!("output of `{line}` is not UTF-8"))
}

/// Prints `$ <command line>` to stderr and returns the line.
pub(crate) fn announce(cmd: &Command) -> String {
    let line = display(cmd);
    eprintln!("$ {line}");
    line
}

/// The command as a shell would read it: explicit environment, program, arguments.
pub(crate) fn display(cmd: &Command) -> String {
    let mut words = Vec::new();
    if let Some(dir) = cmd.get_current_dir()
        && env::current_dir().ok().as_deref() != Some(dir)
    {
        words.push(format!("cd {} &&", quote(dir.as_os_str())));
    }
    let (set, removed): (Vec<_>, Vec<_>) = cmd
        .get_envs()
        .filter(|(key, _)| *key != "PATH")
        .partition(|(_, value)| value.is_some());
    if !removed.is_empty() {
        words.push("env".to_owned());
        words.extend(
            removed
                .iter()
                .map(|(key, _)| format!("-u {}", key.to_string_lossy())),
        );
    }
    for (key, value) in set {
        let value = value.unwrap_or_default();
        words.push(format!("{}={}", key.to_string_lossy(), quote(value)));
    }
    words.push(quote(cmd.get_program()));
    words.extend(cmd.get_args().map(quote));
    words.join(" ")
}

/// Finds an executable named `name` on PATH.
pub(crate) fn which(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| {
            candidate
                .metadata()
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        })
}

fn start_error(line: &str, error: &io::Error) -> anyhow::Error {
    if error.kind() == io::ErrorKind::NotFound {
        anyhow::anyhow!("cannot run `{line}`: program not found on PATH ({error}); install it")
    } else {
        anyhow::anyhow!("cannot run `{line}`: {error}")
    }
}

fn quote(word: &OsStr) -> String {
    let word = word.to_string_lossy();
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:@,+%^".contains(c));
    if plain {
        word.into_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_quotes_and_shows_environment() {
        let mut cmd = Command::new("cargo");
        cmd.env("RUSTFLAGS", "-L native=/x y")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .args(["install", "bpf-linker@0.13.0", "it's"]);
        assert_eq!(
            display(&cmd),
            "env -u CARGO_ENCODED_RUSTFLAGS RUSTFLAGS='-L native=/x y' cargo install \
             bpf-linker@0.13.0 'it'\\''s'"
        );
    }

    #[test]
    fn stdout_reports_exit_status_and_stderr() {
        let error = stdout(Command::new("sh").args(["-c", "echo oops >&2; exit 3"]))
            .expect_err("the command exits with 3");
        let message = format!("{error:#}");
        assert!(message.contains("exit status: 3"), "{message}");
        assert!(message.contains("oops"), "{message}");
    }

    #[test]
    fn missing_program_says_not_found() {
        let error = run(&mut Command::new("surely-no-such-program-xtask"))
            .expect_err("the program does not exist");
        assert!(
            format!("{error:#}").contains("program not found"),
            "{error:#}"
        );
    }
}
