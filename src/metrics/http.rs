//! The `/metrics` listener: plain HTTP/1 by hyper, `GET /metrics` only (anything else is 404,
//! or 405 on `/metrics`). Bounded so a scraper, or someone posing as one, cannot pin the node:
//! at most [`MAX_CONNECTIONS`] open, a request's head read within [`HEAD_TIMEOUT`] and at most
//! [`MAX_HEAD`] bytes, a connection closed after [`MAX_LIFETIME`]; it stops when `stopping` is
//! cancelled. Knows nothing of the node: it serves what `render` gives.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Scrapers open one connection each; a handful is plenty.
pub const MAX_CONNECTIONS: usize = 16;
/// A request head (line and headers) must arrive within this (a slowloris is cut off).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// hyper's smallest read buffer: a request head larger than this is refused.
pub const MAX_HEAD: usize = 8192;
/// Even a well-behaved keep-alive connection is closed after this; the scraper reconnects.
pub const MAX_LIFETIME: Duration = Duration::from_secs(60);

/// The content type of OpenMetrics text, as Prometheus asks for it.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves `/metrics` on `listener` until `stopping` is cancelled; each connection is a task
/// of `tasks` (so a stopping node waits for it, briefly).
pub async fn serve<F>(listener: TcpListener, render: F, stopping: CancellationToken, tasks: TaskTracker)
where
    F: Fn() -> String + Send + Sync + 'static,
{
    let render = Arc::new(render);
    let open = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stopping.cancelled() => return,
        };
        let (socket, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors, say: go on once some are free.
                tracing::warn!(error = %e, "the metrics listener could not accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&open).try_acquire_owned() else {
            tracing::debug!(%peer, limit = MAX_CONNECTIONS, "refused a metrics connection: too many open");
            continue;
        };
        let (render, stopping) = (Arc::clone(&render), stopping.clone());
        tasks.spawn(async move {
            let service = service_fn(move |req| {
                let (refused, render) = (refuse(&req), Arc::clone(&render));
                async move {
                    Ok::<_, Infallible>(match refused {
                        Some(answer) => answer,
                        // Off the event loop: the figures include the data directory's size.
                        None => figures(tokio::task::spawn_blocking(move || render()).await),
                    })
                }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .max_buf_size(MAX_HEAD)
                .serve_connection(TokioIo::new(socket), service);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = tokio::time::sleep(MAX_LIFETIME) => {}
                () = stopping.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(1), conn).await;
                }
            }
            drop(permit);
        });
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = status;
    r
}

/// The answer to anything but `GET /metrics`; `None` for that.
fn refuse(req: &Request<Incoming>) -> Option<Response<Full<Bytes>>> {
    if req.uri().path() != "/metrics" {
        return Some(plain(
            StatusCode::NOT_FOUND,
            "not found: kvnode serves GET /metrics only\n",
        ));
    }
    if req.method() != Method::GET {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed: use GET /metrics\n");
        r.headers_mut().insert(ALLOW, HeaderValue::from_static("GET"));
        return Some(r);
    }
    None
}

fn figures(rendered: Result<String, tokio::task::JoinError>) -> Response<Full<Bytes>> {
    match rendered {
        Ok(text) => {
            let mut r = Response::new(Full::new(Bytes::from(text)));
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(OPENMETRICS));
            r
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not gather the figures for /metrics");
            plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the figures could not be gathered; see the node's log\n",
            )
        }
    }
}
