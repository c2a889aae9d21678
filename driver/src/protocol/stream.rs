//! Message framing over a TCP socket: one request out, whole response messages in.
//!
//! Cancellation: reading is cancel-safe (bytes already read stay in `read_buf`); a write that
//! is cancelled half-way leaves `write_incomplete` set and the stream must be discarded.

use std::io;
use std::time::Duration;

use dqlite_wire::header::{self, Header};
use dqlite_wire::{DecodeContext, ProtocolVersion, Request, Response, DEFAULT_MAX_BODY_BYTES};
use sqlx_core::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::options::NodeAddress;

/// A whole response message, owned.
#[derive(Debug)]
pub(crate) struct Frame {
    pub header: Header,
    pub body: Vec<u8>,
}

impl Frame {
    /// Decode the response (borrowing text and blobs from this frame).
    pub fn decode(&self, ctx: &DecodeContext) -> Result<Response<'_>, Error> {
        Response::decode(&self.header, &self.body, ctx)
            .map_err(|e| Error::Protocol(format!("malformed dqlite response: {e}")))
    }
}

/// What a [`WireStream`] runs over: a TCP socket, or (feature `embedded`) an in-process pipe to
/// a node of this process, served exactly like a TCP client.
#[derive(Debug)]
pub(crate) enum Socket {
    Tcp(TcpStream),
    #[cfg(feature = "embedded")]
    Local(tokio::io::DuplexStream),
}

impl tokio::io::AsyncRead for Socket {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            #[cfg(feature = "embedded")]
            Socket::Local(s) => std::pin::Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Socket {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Tcp(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            #[cfg(feature = "embedded")]
            Socket::Local(s) => std::pin::Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => std::pin::Pin::new(s).poll_flush(cx),
            #[cfg(feature = "embedded")]
            Socket::Local(s) => std::pin::Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            #[cfg(feature = "embedded")]
            Socket::Local(s) => std::pin::Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// A socket that completed the protocol handshake.
#[derive(Debug)]
pub(crate) struct WireStream {
    socket: Socket,
    read_buf: Vec<u8>,
    write_buf: Vec<u8>,
    write_incomplete: bool,
    ctx: DecodeContext,
    peer: NodeAddress,
    /// Messages received so far (tests use it to check read-on-demand).
    #[cfg_attr(not(test), allow(dead_code))]
    frames_received: u64,
    /// Longest wait for one message (None = forever).
    request_timeout: Option<Duration>,
    /// When the last whole message arrived.
    last_received: std::time::Instant,
    /// When a probe ([`WireStream::is_idle_alive`]) last found the socket open and idle.
    probed_alive: Option<std::time::Instant>,
    /// A probe found the socket closed, reset or carrying unsolicited bytes: it stays unusable.
    probe_failed: bool,
    /// How long a successful probe is trusted ([`PROBE_TRUST`]; tests change it).
    probe_trust: Duration,
    /// Probes that asked the kernel (tests count them).
    #[cfg_attr(not(test), allow(dead_code))]
    probes: u64,
}

/// How long a probe that found the socket open is trusted by
/// [`WireStream::is_idle_alive_recent`]. A pooled request is probed three times within a few
/// microseconds (sqlx's `ping` on release and on acquire, then the check before the request is
/// written); one probe is enough for all three. Anything idle longer is probed again.
pub(crate) const PROBE_TRUST: Duration = Duration::from_millis(1);

/// Connection-level failures, classified for the retry rules.
#[derive(Debug)]
pub(crate) enum WireError {
    /// The request was not (completely) handed to the kernel: the server cannot have run it.
    NotSent(Error),
    /// The request went out but no complete response came back: it may or may not have run.
    Lost(Error),
}

impl WireError {
    pub fn into_inner(self) -> Error {
        match self {
            WireError::NotSent(e) | WireError::Lost(e) => e,
        }
    }
}

impl WireStream {
    /// Dial `addr`, send the version-1 handshake.
    pub async fn connect(addr: &NodeAddress, timeout: Duration) -> Result<Self, Error> {
        let dial = TcpStream::connect((addr.host(), addr.port()));
        let socket = tokio::time::timeout(timeout, dial).await.map_err(|_| {
            Error::Io(io::Error::new(io::ErrorKind::TimedOut, format!("timed out connecting to dqlite node {addr}")))
        })??;
        socket.set_nodelay(true)?;
        Self::handshake(Socket::Tcp(socket), addr.clone()).await
    }

    /// An in-process connection to a node of this process (`peer` names it in errors), after
    /// the same handshake as over TCP.
    #[cfg(feature = "embedded")]
    pub async fn local(pipe: tokio::io::DuplexStream, peer: NodeAddress) -> Result<Self, Error> {
        Self::handshake(Socket::Local(pipe), peer).await
    }

    async fn handshake(socket: Socket, peer: NodeAddress) -> Result<Self, Error> {
        let mut stream = WireStream {
            socket,
            read_buf: Vec::with_capacity(8192),
            write_buf: Vec::with_capacity(1024),
            write_incomplete: false,
            ctx: DecodeContext::default(),
            peer,
            frames_received: 0,
            request_timeout: None,
            last_received: std::time::Instant::now(),
            probed_alive: None,
            probe_failed: false,
            probe_trust: PROBE_TRUST,
            probes: 0,
        };
        let hs = ProtocolVersion::V1.encode();
        stream.write_incomplete = true;
        stream.socket.write_all(&hs).await?;
        stream.write_incomplete = false;
        Ok(stream)
    }

    pub fn peer(&self) -> &NodeAddress {
        &self.peer
    }

    /// Whether this stream is an in-process pipe (feature `embedded`) rather than a socket.
    pub fn is_in_process(&self) -> bool {
        match self.socket {
            Socket::Tcp(_) => false,
            #[cfg(feature = "embedded")]
            Socket::Local(_) => true,
        }
    }

    #[cfg(test)]
    pub fn frames_received(&self) -> u64 {
        self.frames_received
    }

    #[cfg(test)]
    pub fn probes(&self) -> u64 {
        self.probes
    }

    #[cfg(test)]
    pub fn set_probe_trust(&mut self, trust: Duration) {
        self.probe_trust = trust;
    }

    /// Time since the server last sent a whole message.
    pub fn since_last_received(&self) -> Duration {
        self.last_received.elapsed()
    }

    pub fn ctx(&self) -> &DecodeContext {
        &self.ctx
    }

    /// True if a write was cancelled half-way: the byte stream is corrupt.
    pub fn is_write_incomplete(&self) -> bool {
        self.write_incomplete
    }

    /// Send one request.
    pub async fn send(&mut self, req: &Request<'_>) -> Result<(), WireError> {
        if self.write_incomplete {
            return Err(WireError::NotSent(Error::Protocol(
                "connection unusable: an earlier write was interrupted".into(),
            )));
        }
        self.write_buf.clear();
        req.encode(&mut self.write_buf).map_err(|e| WireError::NotSent(Error::Encode(Box::new(e))))?;
        self.write_incomplete = true;
        // A failed write_all means the kernel did not accept the whole message, so the server
        // never saw a complete request: it cannot have executed it.
        self.socket.write_all(&self.write_buf).await.map_err(|e| WireError::NotSent(Error::Io(e)))?;
        self.write_incomplete = false;
        if self.write_buf.capacity() > 1 << 20 {
            self.write_buf = Vec::with_capacity(1024);
        }
        Ok(())
    }

    /// Bound every later wait for a message (`Duration::ZERO` = no bound).
    pub fn set_request_timeout(&mut self, timeout: Duration) {
        self.request_timeout = (!timeout.is_zero()).then_some(timeout);
    }

    /// Receive one whole message (bounded by the request timeout, if any).
    pub async fn recv(&mut self) -> Result<Frame, Error> {
        match self.request_timeout {
            None => self.recv_unbounded().await,
            Some(t) => match tokio::time::timeout(t, self.recv_unbounded()).await {
                Ok(r) => r,
                Err(_) => Err(Error::Io(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("dqlite node {} sent no response within {t:?}", self.peer),
                ))),
            },
        }
    }

    async fn recv_unbounded(&mut self) -> Result<Frame, Error> {
        loop {
            if let Some((msg, used)) = header::parse(&self.read_buf, DEFAULT_MAX_BODY_BYTES)
                .map_err(|e| Error::Protocol(format!("malformed dqlite message: {e}")))?
            {
                let frame = Frame { header: msg.header, body: msg.body.to_vec() };
                self.read_buf.drain(..used);
                self.frames_received += 1;
                self.last_received = std::time::Instant::now();
                return Ok(frame);
            }
            // Read straight into the buffer's spare capacity (no zeroed bounce buffer to copy
            // from). `read_buf` is cancel-safe: bytes read stay in `read_buf`.
            self.read_buf.reserve(16 * 1024);
            let n = self.socket.read_buf(&mut self.read_buf).await?;
            if n == 0 {
                return Err(Error::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("dqlite node {} closed the connection", self.peer),
                )));
            }
        }
    }

    /// Without blocking: is this idle socket still open? Returns false if the peer closed or
    /// reset it, or sent bytes nobody asked for (a protocol violation on an idle connection).
    ///
    /// This asks the kernel (a non-blocking `MSG_PEEK`), not tokio's readiness cache, which
    /// only learns about a FIN when the reactor next polls: a leader killed a moment ago must
    /// be noticed *before* the next request is written, or that request's fate is unknown.
    pub fn is_idle_alive(&mut self) -> bool {
        if !self.read_buf.is_empty() || self.write_incomplete || self.probe_failed {
            return false;
        }
        let alive = self.probe();
        if alive {
            self.probed_alive = Some(std::time::Instant::now());
        } else {
            self.probe_failed = true;
        }
        alive
    }

    /// [`is_idle_alive`](Self::is_idle_alive), trusting a probe that found the socket open
    /// less than [`PROBE_TRUST`] ago instead of asking the kernel again. A probe only says no
    /// close had arrived when it ran (a response read since says nothing: a FIN may be queued
    /// behind it), so only its age counts.
    pub fn is_idle_alive_recent(&mut self) -> bool {
        if !self.read_buf.is_empty() || self.write_incomplete || self.probe_failed {
            return false;
        }
        if self.probed_alive.is_some_and(|t| t.elapsed() < self.probe_trust) {
            return true;
        }
        self.is_idle_alive()
    }

    /// The non-blocking check itself.
    fn probe(&mut self) -> bool {
        self.probes += 1;
        // One arm only without the `embedded` feature.
        #[allow(clippy::infallible_destructuring_match)]
        let tcp = match &mut self.socket {
            Socket::Tcp(tcp) => tcp,
            #[cfg(feature = "embedded")]
            Socket::Local(pipe) => {
                // A pipe learns of its peer's end at once: poll it without waiting (a no-op
                // waker is fine; the next real read registers the task again).
                let mut byte = [0u8; 1];
                let mut rb = tokio::io::ReadBuf::new(&mut byte);
                let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
                // Pending: open and idle. Ready: EOF, unsolicited bytes or an error.
                return tokio::io::AsyncRead::poll_read(std::pin::Pin::new(pipe), &mut cx, &mut rb).is_pending();
            }
        };
        let mut byte = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        match socket2::SockRef::from(&*tcp).peek(&mut byte) {
            // Nothing to read: open and idle (tokio sockets are non-blocking).
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => true,
            // EOF (Ok(0)), unsolicited data (Ok(n)), or reset/other errors.
            _ => false,
        }
    }

    /// Shut the socket down (best effort).
    pub async fn shutdown(&mut self) {
        let _ = self.socket.shutdown().await;
    }
}
