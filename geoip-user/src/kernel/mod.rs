//! The kernel side seen from user space, in the order start-up meets it:
//! the running kernel's release ([`version`]), its tracepoint record
//! layout ([`tracefs`]) and struct offsets ([`btf`]); whether it lets this
//! process create a ring buffer ([`map_create`], for `check`); loading and
//! attaching the program ([`probe`]); then, while the exporter runs,
//! reading its ring buffer ([`ring`]), decoding each record ([`events`]),
//! its counts of what it could not hand over ([`losses`]) and its log
//! lines ([`log`]); the arrays shared with it as memory, read and written
//! without a system call ([`shared_array`]).

pub(crate) mod btf;
pub(crate) mod events;
pub(crate) mod log;
pub(crate) mod losses;
pub(crate) mod map_create;
pub(crate) mod memlock;
pub(crate) mod probe;
pub(crate) mod ring;
pub(crate) mod shared_array;
pub(crate) mod tracefs;
pub(crate) mod version;
