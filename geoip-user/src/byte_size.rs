//! A number of bytes as people read it: `10.0 GiB`, `512 B`.

use std::fmt;

/// Bytes, shown in the largest binary unit that keeps a whole number
/// before the point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ByteSize(pub(crate) u64);

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
        if self.0 < 1024 {
            return write!(f, "{} B", self.0);
        }
        let mut unit = 0;
        let mut scaled = self.0;
        while scaled >= 1024 * 1024 && unit + 1 < UNITS.len() {
            scaled /= 1024;
            unit += 1;
        }
        // One decimal, from integers (no float rounding surprises):
        // `scaled` is the size in UNITS[unit] times 1024.
        let tenths = (u128::from(scaled) * 10 + 512) / 1024;
        write!(f, "{}.{} {}", tenths / 10, tenths % 10, UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::ByteSize;

    #[test]
    fn sizes_read_as_people_write_them() {
        let text = |n| ByteSize(n).to_string();
        assert_eq!(text(0), "0 B");
        assert_eq!(text(1023), "1023 B");
        assert_eq!(text(1024), "1.0 KiB");
        assert_eq!(text(1536), "1.5 KiB");
        assert_eq!(text(2 << 30), "2.0 GiB");
        assert_eq!(text(10 << 30), "10.0 GiB");
        assert_eq!(text((1 << 20) - 1), "1024.0 KiB");
        assert_eq!(text(300 << 20), "300.0 MiB");
        assert_eq!(text(u64::MAX), "16.0 EiB");
    }
}
