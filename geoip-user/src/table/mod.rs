//! The connection table and what it counts: each connection looked up
//! once when it opens and counted in every family, uncounted exactly once
//! when it closes.
//!
//! From the bottom: [`fingerprint`] is how a connection is keyed,
//! [`labels`] the opt-in service, ASN and city labels, each capped to its
//! busiest values, [`measures`] durations and bytes, [`query`] what the
//! HTTP side asks; [`tracker`] is the table itself, owned by one task.

mod fingerprint;
mod labels;
mod measures;
mod query;
mod tracker;

pub(crate) use labels::{AsnCount, LabelLimits, Labels};
pub(crate) use measures::Measures;
#[cfg(test)]
pub(crate) use query::ConnList;
pub(crate) use query::Query;
#[cfg(feature = "bench")]
pub(crate) use tracker::Outcome;
pub(crate) use tracker::{SyncKind, SyncReport, Tracker};
