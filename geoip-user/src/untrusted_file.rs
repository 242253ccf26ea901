//! The one way the exporter opens a file it does not control: its
//! databases, the web config and its TLS files, the service's flags file.
//! Only a regular file is read: it is opened without blocking (an open(2)
//! of a named pipe blocks until a writer comes, for good), its type is
//! checked before a byte is read (a device such as `/dev/zero` would be
//! read without end), and never more than a stated size is read from it
//! (a sparse file can claim any size).

use std::{
    fs::{File, Metadata, OpenOptions},
    io::{self, Read as _},
    os::{
        fd::AsRawFd as _,
        unix::fs::{FileExt as _, FileTypeExt as _, MetadataExt as _, OpenOptionsExt as _},
    },
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
};

use crate::byte_size::ByteSize;

/// What a file is read as, and the most bytes it may have.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bound {
    /// As the error says it: "a GeoIP database".
    pub(crate) what: &'static str,
    pub(crate) max: u64,
}

/// Why a file was not read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FileError {
    #[error("no such file")]
    NotFound,
    #[error("it is {kind}, not a regular file")]
    NotRegular { kind: &'static str },
    #[error("it is {}, more than the {} {what} may have", ByteSize(*size), ByteSize(*max))]
    TooLarge {
        size: u64,
        max: u64,
        what: &'static str,
    },
    #[error("reading it was given up")]
    Stopped,
    #[error(transparent)]
    Io(io::Error),
}

impl FileError {
    /// Whether the file was refused for what it is (its type, its size),
    /// not for what reading it met: no permission or path to check.
    pub(crate) const fn is_refusal(&self) -> bool {
        matches!(self, Self::NotRegular { .. } | Self::TooLarge { .. })
    }
}

impl From<io::Error> for FileError {
    fn from(err: io::Error) -> Self {
        if err.kind() == io::ErrorKind::NotFound {
            Self::NotFound
        } else {
            Self::Io(err)
        }
    }
}

/// A regular file, opened, of at most the size it was opened with.
pub(crate) struct Opened {
    file: File,
    size: u64,
    bound: Bound,
}

/// How many bytes [`Opened::read_all_until`] reads between two looks at
/// its flag.
const CHUNK: usize = 8 << 20;

/// Open `path` (following symbolic links) if it is a regular file within
/// `bound`. The path is first only looked up (`O_PATH`: no open(2) of a
/// device's driver, no wait for a pipe's writer) and its type checked;
/// only a regular file is then opened for reading, through the handle
/// (the very file checked, even if the path changed meanwhile).
pub(crate) fn open(path: &Path, bound: Bound) -> Result<Opened, FileError> {
    let handle = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
        .open(path)?;
    let meta = handle.metadata()?;
    regular(&meta)?;
    if meta.len() > bound.max {
        return Err(FileError::TooLarge {
            size: meta.len(),
            max: bound.max,
            what: bound.what,
        });
    }
    let mut reading = OpenOptions::new();
    reading
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY);
    let file = match reading.open(format!("/proc/self/fd/{}", handle.as_raw_fd())) {
        Ok(file) => file,
        // No /proc: by the path, if it still names the file checked.
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            let file = reading.open(path)?;
            let now = file.metadata()?;
            if (now.dev(), now.ino()) != (meta.dev(), meta.ino()) {
                return Err(FileError::Io(io::Error::other(
                    "it was replaced while it was opened; try again",
                )));
            }
            file
        }
        Err(err) => return Err(err.into()),
    };
    Ok(Opened {
        file,
        size: meta.len(),
        bound,
    })
}

/// `Ok` if `meta` is a regular file's, else what it is.
fn regular(meta: &Metadata) -> Result<(), FileError> {
    let kind = meta.file_type();
    let kind = if kind.is_file() {
        return Ok(());
    } else if kind.is_fifo() {
        "a named pipe (FIFO)"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_dir() {
        "a directory"
    } else {
        "of an unknown type"
    };
    Err(FileError::NotRegular { kind })
}

/// The whole file at `path`, if it is a regular file within `bound`.
pub(crate) fn read(path: &Path, bound: Bound) -> Result<Vec<u8>, FileError> {
    open(path, bound)?.read_all_until(&AtomicBool::new(false))
}

/// [`read`], as UTF-8 text.
pub(crate) fn read_to_string(path: &Path, bound: Bound) -> Result<String, FileError> {
    String::from_utf8(read(path, bound)?).map_err(|err| {
        FileError::Io(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "not UTF-8 text (at byte {})",
                err.utf8_error().valid_up_to()
            ),
        ))
    })
}

impl Opened {
    /// Its size when it was opened.
    pub(crate) const fn size(&self) -> u64 {
        self.size
    }

    /// Up to its last `len` bytes.
    pub(crate) fn tail(&self, len: u64) -> Result<Vec<u8>, FileError> {
        let len = len.min(self.size);
        let mut buf = vec![0; usize::try_from(len).map_err(io::Error::other)?];
        self.file.read_exact_at(&mut buf, self.size - len)?;
        Ok(buf)
    }

    /// Every byte, at most its bound (a file that grew past it meanwhile
    /// is refused), read in chunks; given up when `stop` is set.
    pub(crate) fn read_all_until(self, stop: &AtomicBool) -> Result<Vec<u8>, FileError> {
        let max = self.bound.max;
        let capacity = usize::try_from(self.size).map_err(io::Error::other)?;
        let mut bytes = Vec::with_capacity(capacity);
        let mut rest = self.file.take(max + 1);
        loop {
            if stop.load(Ordering::Relaxed) {
                return Err(FileError::Stopped);
            }
            let before = bytes.len();
            (&mut rest).take(CHUNK as u64).read_to_end(&mut bytes)?;
            if bytes.len() == before {
                break;
            }
        }
        let size = bytes.len() as u64;
        if size > max {
            return Err(FileError::TooLarge {
                size,
                max,
                what: self.bound.what,
            });
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use std::{ffi::CString, os::unix::ffi::OsStrExt as _, path::PathBuf, time::Instant};

    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("geoip-untrusted-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn fifo(path: &Path) {
        let c = CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    }

    /// None of these blocks or reads without end: each is refused at once
    /// and says what it is.
    #[test]
    fn only_regular_files_of_a_bounded_size_are_read() {
        let d = dir("kinds");
        let started = Instant::now();
        let pipe = d.join("pipe");
        fifo(&pipe);
        let zero = d.join("zero");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        let sparse = d.join("sparse");
        File::create(&sparse).unwrap().set_len(10 << 30).unwrap();
        let bound = Bound {
            what: "such a file",
            max: 1 << 20,
        };
        let text = |p: &Path| read(p, bound).unwrap_err().to_string();
        assert_eq!(text(&pipe), "it is a named pipe (FIFO), not a regular file");
        assert_eq!(text(&zero), "it is a character device, not a regular file");
        assert_eq!(text(&d), "it is a directory, not a regular file");
        assert_eq!(
            text(&sparse),
            "it is 10.0 GiB, more than the 1.0 MiB such a file may have"
        );
        assert!(matches!(
            read(&d.join("absent"), bound),
            Err(FileError::NotFound)
        ));
        assert!(started.elapsed().as_secs() < 2, "{:?}", started.elapsed());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_regular_file_is_read_whole_or_by_its_tail() {
        let d = dir("regular");
        let f = d.join("f");
        let bound = |max| Bound {
            what: "a test file",
            max,
        };
        std::fs::write(&f, b"hello world").unwrap();
        assert_eq!(read(&f, bound(11)).unwrap(), b"hello world");
        assert!(matches!(
            read(&f, bound(10)),
            Err(FileError::TooLarge {
                size: 11,
                max: 10,
                ..
            })
        ));
        let opened = open(&f, bound(100)).unwrap();
        assert_eq!(opened.size(), 11);
        assert_eq!(opened.tail(5).unwrap(), b"world");
        assert_eq!(opened.tail(500).unwrap(), b"hello world");
        // The file opened is read, whatever the path names meanwhile.
        std::fs::rename(&f, d.join("old")).unwrap();
        std::fs::write(&f, b"another").unwrap();
        assert_eq!(
            opened.read_all_until(&AtomicBool::new(false)).unwrap(),
            b"hello world"
        );
        std::fs::write(&f, [0xff, 0xfe]).unwrap();
        assert!(
            read_to_string(&f, bound(10))
                .unwrap_err()
                .to_string()
                .contains("not UTF-8")
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// A file of several chunks is read whole; one whose reader is told to
    /// stop is given up.
    #[test]
    fn a_long_read_is_chunked_and_stops_when_told() {
        let d = dir("chunks");
        let f = d.join("f");
        let bytes: Vec<u8> = (0..CHUNK * 2 + 5)
            .map(|i| u8::try_from(i % 251).unwrap())
            .collect();
        std::fs::write(&f, &bytes).unwrap();
        let bound = Bound {
            what: "a test file",
            max: 1 << 30,
        };
        assert_eq!(read(&f, bound).unwrap(), bytes);
        let stopped = open(&f, bound)
            .unwrap()
            .read_all_until(&AtomicBool::new(true));
        assert!(matches!(stopped, Err(FileError::Stopped)));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
