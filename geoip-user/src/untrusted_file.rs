//! The one way the exporter opens a file it does not control: its
//! databases, the web config and its TLS files, the service's flags file.
//! Only a regular file is read: it is opened without blocking (an open(2)
//! of a named pipe blocks until a writer comes, for good), its type is
//! checked before a byte is read (a device such as `/dev/zero` would be
//! read without end), and never more than a stated size is read from it
//! (a sparse file can claim any size).

use std::{
    fs::{File, OpenOptions},
    io::{self, Read as _},
    os::unix::fs::{FileExt as _, FileTypeExt as _, OpenOptionsExt as _},
    path::Path,
};

/// Why a file was not read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FileError {
    #[error("no such file")]
    NotFound,
    #[error("it is {kind}, not a regular file")]
    NotRegular { kind: &'static str },
    #[error("it is {size} bytes, more than the {max} such a file may have")]
    TooLarge { size: u64, max: u64 },
    #[error(transparent)]
    Io(io::Error),
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
    max: u64,
}

/// Open `path` (following symbolic links) if it is a regular file of at
/// most `max` bytes.
pub(crate) fn open(path: &Path, max: u64) -> Result<Opened, FileError> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY)
        .open(path)?;
    let meta = file.metadata()?;
    let kind = meta.file_type();
    let not = |kind| Err(FileError::NotRegular { kind });
    if kind.is_fifo() {
        return not("a named pipe (FIFO)");
    }
    if kind.is_char_device() {
        return not("a character device");
    }
    if kind.is_block_device() {
        return not("a block device");
    }
    if kind.is_socket() {
        return not("a socket");
    }
    if kind.is_dir() {
        return not("a directory");
    }
    if !kind.is_file() {
        return not("not a file");
    }
    if meta.len() > max {
        return Err(FileError::TooLarge {
            size: meta.len(),
            max,
        });
    }
    Ok(Opened {
        file,
        size: meta.len(),
        max,
    })
}

/// The whole file at `path`, if it is a regular file of at most `max`
/// bytes.
pub(crate) fn read(path: &Path, max: u64) -> Result<Vec<u8>, FileError> {
    open(path, max)?.read_all()
}

/// [`read`], as UTF-8 text.
pub(crate) fn read_to_string(path: &Path, max: u64) -> Result<String, FileError> {
    String::from_utf8(read(path, max)?).map_err(|err| {
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

    /// Every byte, at most the maximum it was opened with (a file that
    /// grew past it meanwhile is refused).
    pub(crate) fn read_all(self) -> Result<Vec<u8>, FileError> {
        let capacity = usize::try_from(self.size).map_err(io::Error::other)?;
        let mut bytes = Vec::with_capacity(capacity);
        self.file.take(self.max + 1).read_to_end(&mut bytes)?;
        let size = bytes.len() as u64;
        if size > self.max {
            return Err(FileError::TooLarge {
                size,
                max: self.max,
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
        let text = |p: &Path| read(p, 1 << 20).unwrap_err().to_string();
        assert_eq!(text(&pipe), "it is a named pipe (FIFO), not a regular file");
        assert_eq!(text(&zero), "it is a character device, not a regular file");
        assert_eq!(text(&d), "it is a directory, not a regular file");
        assert_eq!(
            text(&sparse),
            "it is 10737418240 bytes, more than the 1048576 such a file may have"
        );
        assert!(matches!(
            read(&d.join("absent"), 1),
            Err(FileError::NotFound)
        ));
        assert!(started.elapsed().as_secs() < 2, "{:?}", started.elapsed());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_regular_file_is_read_whole_or_by_its_tail() {
        let d = dir("regular");
        let f = d.join("f");
        std::fs::write(&f, b"hello world").unwrap();
        assert_eq!(read(&f, 11).unwrap(), b"hello world");
        assert!(matches!(
            read(&f, 10),
            Err(FileError::TooLarge { size: 11, max: 10 })
        ));
        let opened = open(&f, 100).unwrap();
        assert_eq!(opened.size(), 11);
        assert_eq!(opened.tail(5).unwrap(), b"world");
        assert_eq!(opened.tail(500).unwrap(), b"hello world");
        std::fs::write(&f, [0xff, 0xfe]).unwrap();
        assert!(
            read_to_string(&f, 10)
                .unwrap_err()
                .to_string()
                .contains("not UTF-8")
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}
