//! Why the exporter could not start or stopped, and the exit code each
//! reason gets.

use std::{io, net::SocketAddr};

use crate::{
    geo::OpenError, kernel::probe::ProbeError, metrics::MetricsError, snapshot::SnapshotError,
    web::WebConfigError,
};

#[derive(Debug, thiserror::Error)]
pub(crate) enum AppError {
    #[error(transparent)]
    Database(#[from] OpenError),
    #[error(transparent)]
    WebConfig(#[from] WebConfigError),
    #[error(
        "cannot listen on {addr}: address already in use; pass another --web.listen-address or stop what listens there"
    )]
    AddrInUse {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot listen on {addr}; pass another --web.listen-address")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error("enumerating the connections that already exist failed")]
    Snapshot(#[from] SnapshotError),
    #[error("setting up metrics failed")]
    Metrics(#[from] MetricsError),
    #[error("serving HTTP failed")]
    Serve(#[source] io::Error),
    #[error("starting the event thread failed")]
    EventThread(#[source] io::Error),
}

impl AppError {
    /// 2 for what the user fixes with flags or input files, 1 otherwise.
    pub(crate) const fn exit_code(&self) -> u8 {
        match self {
            Self::Database(_) | Self::WebConfig(_) | Self::AddrInUse { .. } | Self::Bind { .. } => {
                2
            }
            _ => 1,
        }
    }
}
