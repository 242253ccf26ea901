//! The HTTP server around the router, with the limits an exporter that
//! runs on every host needs: a bound on concurrent connections (the rest
//! get a quick 503), a bound on the request head, a timeout for reading
//! it that is also the keep-alive idle timeout (a slow client cannot hold
//! a connection), HTTP/1.1 only, gzip when the client asks for it, and
//! TLS when `--web.config.file` configures it (the handshake bounded by the
//! same timeout).

use std::{convert::Infallible, future::Future, io, sync::Arc, time::Duration};

use axum::{Router, extract::Request};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::{Semaphore, watch},
    task::JoinSet,
};
use tower::ServiceExt as _;
use tower_http::compression::CompressionLayer;

use super::tls::TlsReloader;
use crate::metrics::Metrics;

/// What bounds the server.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Connections served at once; more are answered 503 and closed.
    pub(crate) max_connections: usize,
    /// Largest request line plus headers, in bytes; larger gets 431.
    pub(crate) max_header_bytes: usize,
    /// Time to send a request's head, and the longest a kept-alive
    /// connection may sit idle.
    pub(crate) header_timeout: Duration,
    /// How long requests in flight may finish after shutdown begins.
    pub(crate) shutdown_grace: Duration,
}

/// Plain TCP or TLS, from `--web.config.file`.
#[derive(Clone)]
pub(crate) enum Transport {
    Plain,
    Tls(Arc<TlsReloader>),
}

const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: 44\r\n\r\ntoo many connections to the exporter; retry\n";

/// Serve `app` on `listener` until `shutdown`, then give the requests in
/// flight [`Limits::shutdown_grace`] before closing what is left.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    transport: Transport,
    metrics: Metrics,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let app = app.layer(
        CompressionLayer::new()
            .gzip(true)
            .no_br()
            .no_deflate()
            .no_zstd(),
    );
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // EMFILE and friends: wait a little rather than spin.
                    tracing::warn!(error = %err, "accepting an HTTP connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics.http_rejected();
            connections.spawn(refuse(stream));
            continue;
        };
        let app = app.clone();
        let stop = stop_rx.clone();
        let transport = transport.clone();
        connections.spawn(async move {
            match transport {
                Transport::Plain => serve_connection(stream, app, limits, stop).await,
                Transport::Tls(tls) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(tls.config());
                    match tokio::time::timeout(limits.header_timeout, acceptor.accept(stream)).await
                    {
                        Ok(Ok(stream)) => serve_connection(stream, app, limits, stop).await,
                        Ok(Err(err)) => tracing::debug!(error = %err, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                }
            }
            drop(permit);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(limits.shutdown_grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::info!(
            "HTTP clients still connected after {:?}; closing them",
            limits.shutdown_grace
        );
        connections.abort_all();
    }
    Ok(())
}

/// Answer 503 and close, spending at most a second on it.
async fn refuse(mut stream: TcpStream) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(BUSY).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

async fn serve_connection(
    stream: impl AsyncRead + AsyncWrite + Unpin + Send + 'static,
    app: Router,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) {
    let service = TowerToHyperService::new(
        app.map_request(|req: Request<Incoming>| req.map(axum::body::Body::new))
            .map_err(|e: Infallible| match e {}),
    );
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_header_size(limits.max_header_bytes)
        .max_buf_size(limits.max_header_bytes.max(8192) * 2);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(err) = result {
                tracing::debug!(error = %err, "HTTP connection ended with an error");
            }
        }
        () = async {
            let _ = stop.wait_for(|stopping| *stopping).await;
        } => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}
