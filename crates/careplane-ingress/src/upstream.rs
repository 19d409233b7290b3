//! Keep-alive HTTP/1.1 connections to the upstreams (Odoo on loopback), one
//! set per worker thread.
//!
//! hyper-util's pooled client did the same with more per request: a pool
//! key hashed twice (SipHash), a checkout future raced against a connect
//! future, connection info copied into every response's extensions and a
//! task spawned per request to put the connection back. Here a request takes
//! the most recently used idle connection to its port (or opens one), and
//! the response body puts it back when it has been read to the end: ~10% of
//! the proxy's instructions per request went to that pool.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

use crate::proxy::ProxyBody;

/// Idle connections are closed after this long unused.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

type Sender = SendRequest<ProxyBody>;

#[derive(Default)]
struct Idle {
    /// (upstream port, idle connections to it, most recently used last).
    by_port: Vec<(u16, Vec<(Sender, Instant)>)>,
}

/// The upstream connections of one worker. Cloned per client connection;
/// the lock is only ever taken by the worker's own thread, so it is never
/// contended (futures handed to Tokio must be `Send`, which rules out a
/// `RefCell`).
#[derive(Clone)]
pub struct Upstreams {
    idle: Arc<Mutex<Idle>>,
    connect_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connecting to the upstream timed out")]
    ConnectTimeout,
    #[error("connecting to the upstream: {0}")]
    Connect(#[source] std::io::Error),
    #[error("upstream HTTP: {0}")]
    Http(#[source] hyper::Error),
}

impl Upstreams {
    pub fn new(connect_timeout: Duration) -> Upstreams {
        Upstreams {
            idle: Arc::default(),
            connect_timeout,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Idle> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An idle connection to `port` that is still open, newest first.
    fn take(&self, port: u16) -> Option<Sender> {
        let mut idle = self.lock();
        let list = &mut idle.by_port.iter_mut().find(|(p, _)| *p == port)?.1;
        while let Some((s, since)) = list.pop() {
            if !s.is_closed() && since.elapsed() < IDLE_TIMEOUT {
                return Some(s);
            }
        }
        None
    }

    fn put(&self, port: u16, s: Sender) {
        if s.is_closed() {
            return;
        }
        let mut idle = self.lock();
        let now = Instant::now();
        match idle.by_port.iter_mut().find(|(p, _)| *p == port) {
            Some((_, list)) => list.push((s, now)),
            None => idle.by_port.push((port, vec![(s, now)])),
        }
    }

    /// Closes connections idle for longer than [`IDLE_TIMEOUT`] (dropping
    /// the sender ends the connection's task).
    pub fn sweep(&self) {
        let mut idle = self.lock();
        for (_, list) in &mut idle.by_port {
            list.retain(|(s, since)| !s.is_closed() && since.elapsed() < IDLE_TIMEOUT);
        }
        idle.by_port.retain(|(_, list)| !list.is_empty());
    }

    async fn connect(&self, port: u16) -> Result<Sender, Error> {
        let tcp = tokio::time::timeout(
            self.connect_timeout,
            tokio::net::TcpStream::connect(("127.0.0.1", port)),
        )
        .await
        .map_err(|_| Error::ConnectTimeout)?
        .map_err(Error::Connect)?;
        let _ = tcp.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(Error::Http)?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    /// Sends `req` (origin-form URI, `Host` set) to `127.0.0.1:port`. A
    /// request an idle connection could not take (it closed meanwhile) goes
    /// to another, as hyper-util's client retried it.
    pub async fn send(
        &self,
        port: u16,
        mut req: Request<ProxyBody>,
    ) -> Result<Response<UpstreamBody>, Error> {
        while let Some(mut s) = self.take(port) {
            // A connection put back as its response ended may not have
            // finished with it yet; this waits for that (or its closing).
            if s.ready().await.is_err() {
                continue;
            }
            match s.try_send_request(req).await {
                Ok(resp) => return Ok(self.wrap(port, s, resp)),
                Err(mut e) => match e.take_message() {
                    Some(back) => req = back,
                    None => return Err(Error::Http(e.into_error())),
                },
            }
        }
        let mut s = self.connect(port).await?;
        let resp = s.send_request(req).await.map_err(Error::Http)?;
        Ok(self.wrap(port, s, resp))
    }

    fn wrap(&self, port: u16, s: Sender, resp: Response<Incoming>) -> Response<UpstreamBody> {
        resp.map(|inner| UpstreamBody {
            inner,
            ended: false,
            back: Some((self.clone(), port, s)),
        })
    }
}

/// A response body from the upstream; once read to the end its connection
/// goes back to the idle set (dropped early, the connection closes).
pub struct UpstreamBody {
    inner: Incoming,
    ended: bool,
    back: Option<(Upstreams, u16, Sender)>,
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(None) = r {
            self.ended = true;
        }
        r
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        if self.ended || self.inner.is_end_stream() {
            if let Some((pool, port, s)) = self.back.take() {
                pool.put(port, s);
            }
        }
    }
}
