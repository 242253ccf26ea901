//! Where the fields of `sock/inet_sock_set_state` sit in this kernel's
//! tracepoint record, read from tracefs (`events/sock/inet_sock_set_state/format`).

use std::{
    io,
    path::{Path, PathBuf},
};

use geoip_common::{TRACEPOINT_CATEGORY, TRACEPOINT_NAME, TracepointLayout};

/// Where tracefs is usually mounted, in the order tried.
pub(crate) const MOUNTS: &[&str] = &["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

#[derive(Debug, thiserror::Error)]
pub(crate) enum TracefsError {
    #[error(
        "tracefs is not mounted (looked for {}); mount it with `mount -t tracefs tracefs /sys/kernel/tracing` (or run `cargo xtask setup`)",
        tried.join(", ")
    )]
    NotMounted { tried: Vec<String> },
    #[error(
        "cannot read {}: tracefs is root's (mode 0700); run as root, or give a non-root user CAP_DAC_READ_SEARCH besides CAP_BPF and CAP_PERFMON",
        path.display()
    )]
    Denied { path: PathBuf },
    #[error(
        "this kernel has no tracepoint {TRACEPOINT_CATEGORY}/{TRACEPOINT_NAME} ({} does not exist): it came with Linux 4.16, and the exporter needs 5.8 or later; upgrade the kernel",
        path.display()
    )]
    NoTracepoint { path: PathBuf },
    #[error("cannot read the tracepoint format {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "tracepoint format {} has no field {field} of {size} bytes; this kernel's sock/inet_sock_set_state is not supported (kernel 4.16 or later needed)",
        path.display()
    )]
    Field {
        path: PathBuf,
        field: &'static str,
        size: u16,
    },
}

/// The format file of the tracepoint under the first mounted tracefs.
pub(crate) fn format_path() -> Result<PathBuf, TracefsError> {
    for mount in MOUNTS {
        let events = Path::new(mount).join("events");
        match std::fs::metadata(&events) {
            Ok(meta) if meta.is_dir() => {
                return Ok(events
                    .join(TRACEPOINT_CATEGORY)
                    .join(TRACEPOINT_NAME)
                    .join("format"));
            }
            Err(err) if err.kind() == io::ErrorKind::PermissionDenied => {
                return Err(TracefsError::Denied { path: events });
            }
            _ => {}
        }
    }
    Err(TracefsError::NotMounted {
        tried: MOUNTS.iter().map(|m| (*m).to_owned()).collect(),
    })
}

/// Read and check the layout of this kernel's tracepoint record.
pub(crate) fn read_layout() -> Result<TracepointLayout, TracefsError> {
    let path = format_path()?;
    let text = std::fs::read_to_string(&path).map_err(|source| read_error(&path, source))?;
    parse_layout(&text, &path)
}

/// What a failed read of the format file at `path` means.
fn read_error(path: &Path, source: io::Error) -> TracefsError {
    let path = path.to_owned();
    match source.kind() {
        io::ErrorKind::PermissionDenied => TracefsError::Denied { path },
        io::ErrorKind::NotFound => TracefsError::NoTracepoint { path },
        _ => TracefsError::Read { path, source },
    }
}

/// Parse a tracepoint format description (`field:TYPE NAME; offset:N; size:N; ...`).
pub(crate) fn parse_layout(text: &str, path: &Path) -> Result<TracepointLayout, TracefsError> {
    let fields: Vec<(&str, u16, u16)> = text.lines().filter_map(parse_field).collect();
    let find = |field: &'static str, size: u16| {
        fields
            .iter()
            .find(|(name, _, s)| *name == field && *s == size)
            .map(|(_, offset, _)| *offset)
            .ok_or_else(|| TracefsError::Field {
                path: path.to_owned(),
                field,
                size,
            })
    };
    Ok(TracepointLayout {
        skaddr: find("skaddr", 8)?,
        oldstate: find("oldstate", 4)?,
        newstate: find("newstate", 4)?,
        sport: find("sport", 2)?,
        dport: find("dport", 2)?,
        family: find("family", 2)?,
        protocol: find("protocol", 2)?,
        saddr: find("saddr", 4)?,
        daddr: find("daddr", 4)?,
        saddr_v6: find("saddr_v6", 16)?,
        daddr_v6: find("daddr_v6", 16)?,
        _pad: 0,
    })
}

/// Parses `field:__u8 saddr[4]; offset:32; size:4; signed:0;` (tab-separated) into `("saddr", 32, 4)`.
fn parse_field(line: &str) -> Option<(&str, u16, u16)> {
    let mut parts = line.trim().split(';').map(str::trim);
    let decl = parts.next()?.strip_prefix("field:")?;
    let name = decl.rsplit([' ', '*']).next()?;
    let name = name.split('[').next()?;
    let mut offset = None;
    let mut size = None;
    for part in parts {
        if let Some(v) = part.strip_prefix("offset:") {
            offset = v.parse().ok();
        } else if let Some(v) = part.strip_prefix("size:") {
            size = v.parse().ok();
        }
    }
    Some((name, offset?, size?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The format file of kernel 6.18.
    const FORMAT: &str = "name: inet_sock_set_state
ID: 1580
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;
\tfield:int newstate;\toffset:20;\tsize:4;\tsigned:1;
\tfield:__u16 sport;\toffset:24;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:26;\tsize:2;\tsigned:0;
\tfield:__u16 family;\toffset:28;\tsize:2;\tsigned:0;
\tfield:__u16 protocol;\toffset:30;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:36;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:56;\tsize:16;\tsigned:0;

print fmt: \"family=%s protocol=%s ...\"
";

    #[test]
    fn parses_this_kernels_layout() {
        let layout = parse_layout(FORMAT, Path::new("format")).unwrap();
        assert_eq!(layout, TracepointLayout::DEFAULT);
    }

    #[test]
    fn other_offsets_are_followed() {
        let shifted = FORMAT.replace("offset:16;", "offset:48;");
        let layout = parse_layout(&shifted, Path::new("format")).unwrap();
        assert_eq!(layout.oldstate, 48);
    }

    #[test]
    fn missing_or_resized_field_is_refused_by_name() {
        let old_kernel = FORMAT.replace("protocol", "proto");
        let err = parse_layout(&old_kernel, Path::new("/t/format")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "tracepoint format /t/format has no field protocol of 2 bytes; this kernel's sock/inet_sock_set_state is not supported (kernel 4.16 or later needed)"
        );
        let resized = FORMAT.replace("skaddr;\toffset:8;\tsize:8;", "skaddr;\toffset:8;\tsize:4;");
        assert!(parse_layout(&resized, Path::new("f")).is_err());
    }

    /// The layout of the kernel under the tests (tracefs is mounted by
    /// `cargo xtask setup`, which `cargo xtask test` runs first).
    /// A kernel older than 4.16 has tracefs but not the tracepoint.
    #[test]
    fn a_kernel_without_the_tracepoint_is_told_so() {
        let path = Path::new("/sys/kernel/tracing/events/sock/inet_sock_set_state/format");
        let err = read_error(path, io::Error::from(io::ErrorKind::NotFound));
        assert_eq!(
            err.to_string(),
            "this kernel has no tracepoint sock/inet_sock_set_state (/sys/kernel/tracing/events/sock/inet_sock_set_state/format does not exist): it came with Linux 4.16, and the exporter needs 5.8 or later; upgrade the kernel"
        );
    }

    #[test]
    fn reads_the_running_kernel() {
        let layout = read_layout().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(layout, TracepointLayout::DEFAULT);
    }
}
