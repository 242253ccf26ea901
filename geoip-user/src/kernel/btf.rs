//! Just enough of a BTF reader (the kernel's own type information,
//! `/sys/kernel/btf/vmlinux`, see Documentation/bpf/btf.rst) to find where
//! a struct member sits in the running kernel, so the kernel program reads
//! fields at this kernel's offsets instead of offsets compiled for another.

use std::{io, path::Path};

use geoip_common::{SockLayout, TCP_SPAN_MAX, TcpLayout};

/// Where the running kernel describes its types.
pub(crate) const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xeb9f;
const HEADER_LEN: usize = 24;
const TYPE_LEN: usize = 12;

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Debug, thiserror::Error)]
pub(crate) enum BtfError {
    #[error("cannot read the kernel's BTF at {path}")]
    Read {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("malformed BTF: {what}")]
    Malformed { what: &'static str },
    #[error("the kernel's BTF has no struct {name}")]
    NoStruct { name: String },
    #[error("the kernel's BTF has no member {path} in struct {name}")]
    NoMember { name: String, path: String },
    #[error("struct {name} member {path} is not a {expected}")]
    Shape {
        name: String,
        path: String,
        expected: &'static str,
    },
}

/// One type record: its kind, name and the `size`/`type` word, and where
/// its trailing data (members, ...) starts in the type section.
#[derive(Clone, Copy, Debug)]
struct Type {
    kind: u32,
    vlen: u32,
    kind_flag: bool,
    name_off: u32,
    word: u32,
    extra: usize,
}

/// Parsed BTF: the type records and the string section.
pub(crate) struct Btf {
    /// Type id `n` is at index `n - 1` (id 0 is `void`).
    types: Vec<Type>,
    types_data: Vec<u8>,
    strings: Vec<u8>,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn usize_of(v: u32) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

impl Btf {
    /// Read and parse the running kernel's BTF.
    pub(crate) fn from_kernel() -> Result<Self, BtfError> {
        Self::from_file(Path::new(VMLINUX))
    }

    fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&data)
    }

    /// Parse raw BTF (header, type section, string section), in this
    /// machine's byte order as the kernel writes it.
    pub(crate) fn parse(data: &[u8]) -> Result<Self, BtfError> {
        let bad = |what| BtfError::Malformed { what };
        if u16_at(data, 0) != Some(MAGIC) {
            return Err(bad("wrong magic (not BTF, or the other byte order)"));
        }
        let field = |at| {
            u32_at(data, at)
                .map(usize_of)
                .ok_or_else(|| bad("short header"))
        };
        let hdr_len = field(4)?;
        let (type_off, type_len) = (field(8)?, field(12)?);
        let (str_off, str_len) = (field(16)?, field(20)?);
        if hdr_len < HEADER_LEN {
            return Err(bad("header too short"));
        }
        let section = |off: usize, len: usize| {
            let start = hdr_len.checked_add(off)?;
            data.get(start..start.checked_add(len)?)
        };
        let types_data = section(type_off, type_len)
            .ok_or_else(|| bad("type section out of bounds"))?
            .to_vec();
        let strings = section(str_off, str_len)
            .ok_or_else(|| bad("string section out of bounds"))?
            .to_vec();
        let mut types = Vec::new();
        let mut at = 0;
        while at < types_data.len() {
            let word =
                |i: usize| u32_at(&types_data, at + 4 * i).ok_or_else(|| bad("truncated type"));
            let (name_off, info, word) = (word(0)?, word(1)?, word(2)?);
            let kind = (info >> 24) & 0x1f;
            let vlen = info & 0xffff;
            let n = usize_of(vlen);
            let extra_len = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * n,
                KIND_ENUM | KIND_FUNC_PROTO => 8 * n,
                0..=19 => 0,
                _ => return Err(bad("unknown type kind")),
            };
            let extra = at + TYPE_LEN;
            types.push(Type {
                kind,
                vlen,
                kind_flag: info >> 31 == 1,
                name_off,
                word,
                extra,
            });
            at = extra + extra_len;
        }
        if at != types_data.len() {
            return Err(bad("type section ends inside a type"));
        }
        Ok(Self {
            types,
            types_data,
            strings,
        })
    }

    fn name(&self, off: u32) -> &[u8] {
        let rest = self.strings.get(usize_of(off)..).unwrap_or_default();
        rest.split(|b| *b == 0).next().unwrap_or_default()
    }

    fn get(&self, id: u32) -> Option<&Type> {
        self.types.get(usize_of(id).checked_sub(1)?)
    }

    /// Follow typedefs and qualifiers to the type they name.
    fn resolve(&self, mut id: u32) -> Option<(u32, &Type)> {
        for _ in 0..32 {
            let t = self.get(id)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.word;
                }
                _ => return Some((id, t)),
            }
        }
        None
    }

    /// Members of a struct or union: (name offset, type id, bit offset).
    fn members(&self, t: &Type) -> impl Iterator<Item = (u32, u32, u32)> + '_ {
        let (flag, extra) = (t.kind_flag, t.extra);
        (0..usize_of(t.vlen)).map_while(move |i| {
            let at = extra + 12 * i;
            let name = u32_at(&self.types_data, at)?;
            let ty = u32_at(&self.types_data, at + 4)?;
            let off = u32_at(&self.types_data, at + 8)?;
            // With kind_flag the top byte is a bitfield's size.
            Some((name, ty, if flag { off & 0x00ff_ffff } else { off }))
        })
    }

    /// Find member `name` in a struct/union, looking into anonymous
    /// members too; its type id and bit offset.
    fn member(&self, composite: &Type, name: &str, depth: u32) -> Option<(u32, u32)> {
        if depth > 8 {
            return None;
        }
        for (name_off, ty, off) in self.members(composite) {
            if name_off == 0 {
                let (_, inner) = self.resolve(ty)?;
                if matches!(inner.kind, KIND_STRUCT | KIND_UNION)
                    && let Some((found, inner_off)) = self.member(inner, name, depth + 1)
                {
                    return Some((found, off + inner_off));
                }
            } else if self.name(name_off) == name.as_bytes() {
                return Some((ty, off));
            }
        }
        None
    }

    /// Byte offset of the dotted member `path` in `struct name`, and the
    /// resolved type of the last member.
    fn offset_of(&self, name: &str, path: &str) -> Result<(u32, &Type), BtfError> {
        let no_member = || BtfError::NoMember {
            name: name.to_owned(),
            path: path.to_owned(),
        };
        let mut current = self
            .types
            .iter()
            .find(|t| t.kind == KIND_STRUCT && self.name(t.name_off) == name.as_bytes())
            .ok_or_else(|| BtfError::NoStruct {
                name: name.to_owned(),
            })?;
        let mut bits = 0u32;
        for part in path.split('.') {
            if !matches!(current.kind, KIND_STRUCT | KIND_UNION) {
                return Err(no_member());
            }
            let (ty, off) = self.member(current, part, 0).ok_or_else(no_member)?;
            bits = bits.checked_add(off).ok_or_else(no_member)?;
            current = self.resolve(ty).ok_or_else(no_member)?.1;
        }
        if !bits.is_multiple_of(8) {
            return Err(BtfError::Shape {
                name: name.to_owned(),
                path: path.to_owned(),
                expected: "byte-aligned field",
            });
        }
        Ok((bits / 8, current))
    }

    /// Where the kernel program finds a socket's network namespace inode:
    /// `sock.__sk_common.skc_net.net` (a pointer) and `net.ns.inum` (a
    /// 32-bit integer).
    pub(crate) fn sock_layout(&self) -> Result<SockLayout, BtfError> {
        let shape = |name: &str, path: &str, expected| BtfError::Shape {
            name: name.to_owned(),
            path: path.to_owned(),
            expected,
        };
        let (net, ty) = self.offset_of("sock", "__sk_common.skc_net.net")?;
        if ty.kind != KIND_PTR {
            return Err(shape("sock", "__sk_common.skc_net.net", "pointer"));
        }
        let (inum, ty) = self.offset_of("net", "ns.inum")?;
        if ty.kind != KIND_INT || ty.word != 4 {
            return Err(shape("net", "ns.inum", "32-bit integer"));
        }
        Ok(SockLayout {
            net,
            inum,
            enabled: 1,
            reserved: 0,
        })
    }
}

impl Btf {
    /// Where the kernel program finds a TCP socket's byte counters:
    /// `tcp_sock.{write_seq, snd_una}` (32-bit), `tcp_sock.{bytes_received,
    /// bytes_acked}` (64-bit), read as one span of at most
    /// [`TCP_SPAN_MAX`] bytes.
    pub(crate) fn tcp_layout(&self) -> Result<TcpLayout, BtfError> {
        let field = |name: &str, path: &str, size: u32| -> Result<u32, BtfError> {
            let (offset, ty) = self.offset_of(name, path)?;
            if ty.kind != KIND_INT || ty.word != size {
                return Err(BtfError::Shape {
                    name: name.to_owned(),
                    path: path.to_owned(),
                    expected: if size == 4 {
                        "32-bit integer"
                    } else {
                        "64-bit integer"
                    },
                });
            }
            Ok(offset)
        };
        let fields = [
            (field("tcp_sock", "write_seq", 4)?, 4),
            (field("tcp_sock", "snd_una", 4)?, 4),
            (field("tcp_sock", "bytes_received", 8)?, 8),
            (field("tcp_sock", "bytes_acked", 8)?, 8),
        ];
        let start = fields.iter().map(|f| f.0).min().unwrap_or(0);
        let end = fields.iter().map(|f| f.0 + f.1).max().unwrap_or(0);
        let span = end - start;
        if span > TCP_SPAN_MAX {
            return Err(BtfError::Shape {
                name: "tcp_sock".to_owned(),
                path: "write_seq .. bytes_acked".to_owned(),
                expected: "byte counters within 512 bytes of each other",
            });
        }
        let relative = |i: usize| u16::try_from(fields[i].0 - start).unwrap_or(u16::MAX);
        Ok(TcpLayout {
            span_start: start,
            span,
            reserved2: 0,
            write_seq: relative(0),
            snd_una: relative(1),
            bytes_received: relative(2),
            bytes_acked: relative(3),
            reserved: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny BTF blob: `struct ns_common { int pad; unsigned int inum; }`,
    /// `struct net { long a; struct ns_common ns; }`, `typedef struct {
    /// struct net *net; } possible_net_t;`, `struct sock_common { long x;
    /// union { int u; possible_net_t skc_net; }; }` (anonymous),
    /// `struct sock { struct sock_common __sk_common; }`.
    pub(crate) fn sample() -> Vec<u8> {
        let mut strings = vec![0u8];
        let mut s = |name: &str| {
            let off = u32::try_from(strings.len()).unwrap();
            strings.extend_from_slice(name.as_bytes());
            strings.push(0);
            off
        };
        let mut types: Vec<u32> = Vec::new();
        let info = |kind: u32, vlen: u32| (kind << 24) | vlen;
        // 1: unsigned int
        types.extend([s("unsigned int"), info(KIND_INT, 0), 4, 32]);
        // 2: struct ns_common
        types.extend([s("ns_common"), info(KIND_STRUCT, 2), 8]);
        types.extend([s("pad"), 1, 0, s("inum"), 1, 32]);
        // 3: struct net
        types.extend([s("net"), info(KIND_STRUCT, 2), 16]);
        types.extend([s("a"), 1, 0, s("ns"), 2, 64]);
        // 4: struct net *
        types.extend([0, info(KIND_PTR, 0), 3]);
        // 5: anonymous struct { struct net *net; }
        types.extend([0, info(KIND_STRUCT, 1), 8]);
        types.extend([s("net"), 4, 0]);
        // 6: typedef possible_net_t
        types.extend([s("possible_net_t"), info(KIND_TYPEDEF, 0), 5]);
        // 7: anonymous union { unsigned int u; possible_net_t skc_net; }
        types.extend([0, info(KIND_UNION, 2), 8]);
        types.extend([s("u"), 1, 0, s("skc_net"), 6, 0]);
        // 8: struct sock_common
        types.extend([s("sock_common"), info(KIND_STRUCT, 2), 72]);
        types.extend([s("x"), 1, 0, 0, 7, 64 * 8]);
        // 9: const struct sock_common
        types.extend([0, info(KIND_CONST, 0), 8]);
        // 10: struct sock
        types.extend([s("sock"), info(KIND_STRUCT, 1), 72]);
        types.extend([s("__sk_common"), 9, 0]);
        let types: Vec<u8> = types.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC.to_ne_bytes());
        out.extend_from_slice(&[1, 0]);
        for w in [
            24u32,
            0,
            u32::try_from(types.len()).unwrap(),
            u32::try_from(types.len()).unwrap(),
            u32::try_from(strings.len()).unwrap(),
        ] {
            out.extend_from_slice(&w.to_ne_bytes());
        }
        out.extend_from_slice(&types);
        out.extend_from_slice(&strings);
        out
    }

    #[test]
    fn finds_members_through_typedefs_and_anonymous_unions() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(
            btf.sock_layout().unwrap(),
            SockLayout {
                net: 64,
                inum: 12,
                enabled: 1,
                reserved: 0
            }
        );
        assert!(matches!(
            btf.offset_of("sock", "__sk_common.nope"),
            Err(BtfError::NoMember { .. })
        ));
        assert!(matches!(
            btf.offset_of("nope", "x"),
            Err(BtfError::NoStruct { .. })
        ));
    }

    #[test]
    fn malformed_blobs_are_errors_not_panics() {
        let good = sample();
        for cut in [0, 1, 4, 23, 24, 40, good.len() - 1] {
            assert!(Btf::parse(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = good.clone();
        bad[0] ^= 0xff;
        assert!(Btf::parse(&bad).is_err());
    }

    /// The running kernel: the offsets exist and make sense.
    #[test]
    fn running_kernel_has_the_namespace_fields() {
        let btf = Btf::from_kernel().unwrap();
        let layout = btf.sock_layout().unwrap();
        assert_eq!(layout.enabled, 1);
        assert!(layout.net > 0 && layout.net < 4096, "{layout:?}");
        assert!(layout.inum < 4096, "{layout:?}");
    }

    /// The running kernel's byte counters: the offsets `pahole` shows for
    /// Linux 6.18 (checked with `bpftool btf dump`), and a span the
    /// program can read at once.
    #[test]
    fn running_kernel_has_the_byte_counters() {
        let btf = Btf::from_kernel().unwrap();
        let t = btf.tcp_layout().unwrap();
        assert!(t.span > 0 && t.span <= TCP_SPAN_MAX, "{t:?}");
        for offset in [t.write_seq, t.snd_una, t.bytes_received, t.bytes_acked] {
            assert!(u32::from(offset) < t.span, "{t:?}");
        }
        // The offsets of this kernel's tcp_sock (Linux 6.18 x86_64).
        if std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .is_ok_and(|r| r.starts_with("6.18."))
        {
            assert_eq!(t.span_start + u32::from(t.bytes_acked), 1824, "{t:?}");
            assert_eq!(t.span_start + u32::from(t.bytes_received), 1752, "{t:?}");
        }
    }
}
