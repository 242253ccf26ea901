//! What the HTTP side asks the table's task, and the views it answers
//! with.

use std::net::IpAddr;

use super::labels::AsnCount;
use crate::geo::Country;

/// One tracked connection, as `/api/v1/connections` shows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub(crate) struct ConnView {
    pub(crate) remote: IpAddr,
    pub(crate) remote_port: u16,
    pub(crate) local: IpAddr,
    pub(crate) local_port: u16,
    pub(crate) direction: &'static str,
    pub(crate) country: String,
    /// Inode number of the connection's network namespace.
    pub(crate) netns: u32,
}

/// Up to `limit` tracked connections, and how many there are.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub(crate) struct ConnList {
    pub(crate) total: usize,
    pub(crate) connections: Vec<ConnView>,
}

/// A question for the task that owns the table.
pub(crate) enum Query {
    /// Up to `limit` tracked connections (`/api/v1/connections`).
    Connections {
        limit: usize,
        reply: tokio::sync::oneshot::Sender<ConnList>,
    },
    /// The live connections by ASN of one country, or all, of one
    /// service, or all (`/api/v1/asns`).
    Asns {
        country: Option<Country>,
        service: Option<String>,
        reply: tokio::sync::oneshot::Sender<Vec<AsnCount>>,
    },
}
