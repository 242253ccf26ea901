//! A `sock_diag` filter ("bytecode") the kernel runs on each socket of a
//! dump, so that the dump leaves out what the exporter drops anyway.

use crate::exclude::Cidr;

/// Filter operations (`linux/inet_diag.h`).
const INET_DIAG_BC_JMP: u8 = 1;
const INET_DIAG_BC_D_COND: u8 = 8;
const INET_DIAG_BC_D_EQ: u8 = 12;
/// The largest filter sent (the attribute's length is 16 bits); beyond it
/// the dump is not filtered (the exclusions still apply when merging).
const FILTER_MAX_BYTES: usize = 32 * 1024;

/// A `sock_diag` filter run by the kernel on each socket of the dump: a
/// listening socket (remote port 0) passes; an established one passes
/// unless its remote address is in one of the excluded ranges. The dump
/// then leaves out what the exporter drops anyway (a load balancer's
/// connections to private back ends are half its sockets).
///
/// The kernel checks a filter by following each operation's "yes" jump
/// from the first to the end, so every "yes" goes to the next operation
/// and the decisions are "no" jumps: to the end (accept) or past it
/// (reject), through `JMP` operations (always "no").
#[derive(Clone, Debug, Default)]
pub(crate) struct Bytecode(Vec<u8>);

impl Bytecode {
    pub(crate) fn excluding(ranges: &[Cidr]) -> Self {
        let conds: Vec<Vec<u8>> = ranges.iter().map(hostcond).collect();
        let total = 8 + 4 + conds.iter().map(|c| 4 + c.len() + 4).sum::<usize>();
        if total > FILTER_MAX_BYTES {
            return Self::default();
        }
        let mut bc = Vec::with_capacity(total);
        let op = |bc: &mut Vec<u8>, code: u8, yes: usize, no: usize| {
            bc.push(code);
            bc.push(u8::try_from(yes).unwrap_or(u8::MAX));
            bc.extend_from_slice(&u16::try_from(no).unwrap_or(u16::MAX).to_ne_bytes());
        };
        // Remote port 0 (a listener): on to the accepting JMP; otherwise
        // over it to the first range. The port sits in a second operation.
        op(&mut bc, INET_DIAG_BC_D_EQ, 8, 12);
        op(&mut bc, 0, 0, 0);
        let left = total - bc.len();
        op(&mut bc, INET_DIAG_BC_JMP, 4, left);
        for cond in &conds {
            let size = 4 + cond.len();
            // In the range: on to the rejecting JMP; otherwise over it.
            op(&mut bc, INET_DIAG_BC_D_COND, size, size + 4);
            bc.extend_from_slice(cond);
            let left = total - bc.len();
            op(&mut bc, INET_DIAG_BC_JMP, 4, left + 4);
        }
        Self(bc)
    }

    pub(crate) const fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) const fn len(&self) -> usize {
        self.0.len()
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// `struct inet_diag_hostcond` for `cidr`, any port.
fn hostcond(cidr: &Cidr) -> Vec<u8> {
    let (family, prefix, addr) = cidr.parts();
    let mut out = vec![u8::try_from(family).unwrap_or(0), prefix, 0, 0];
    out.extend_from_slice(&(-1i32).to_ne_bytes());
    out.extend_from_slice(&addr);
    out
}
