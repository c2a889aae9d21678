//! Client connections on threads of their own: a request is read, executed and answered on one
//! thread, with no hand-off between threads.
//!
//! ```text
//!  accept ─► handshake word ─► spawn ──► thread "dqlite-client"
//!  (server task)                          current_thread tokio runtime: connection::serve
//!                                         (socket I/O, protocol, timers, cluster futures)
//!                                           │ a backend call that may block (SQLite: a commit
//!                                           ▼ waits for Raft) is an offload job:
//!                                         drive() leaves block_on, runs the job on this same
//!                                         thread outside the runtime, and goes back in
//! ```
//!
//! Why jobs run outside the runtime: the SQLite layer blocks on tokio channels for the Raft
//! hand-off (`blocking_send` / `blocking_recv`), which tokio forbids inside a runtime. Leaving
//! `block_on` and entering it again costs well under a microsecond; a wake-up of another thread
//! costs 30–60 µs on a small VM.
//!
//! Each thread holds the server's connection permit (`max_connections`) while it lives and
//! watches the server's shutdown signal; [`offload`] outside such a thread runs the job at once.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;

use dqlite_wire::ProtocolVersion;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use super::backend::{ClusterBackend, SqlBackend};
use super::Shared;

type Job = Box<dyn FnOnce()>;

thread_local! {
    /// This thread runs [`drive`].
    static DRIVING: Cell<bool> = const { Cell::new(false) };
    /// The job the connection's future waits for.
    static JOB: RefCell<Option<Job>> = const { RefCell::new(None) };
}

/// Runs `f` on this thread outside the tokio runtime and returns its result: on a connection
/// thread the future waits while [`drive`] runs `f` between two `block_on`s; elsewhere `f` runs
/// at once. Cancel-safe: a job that ran completes whole; dropping the future drops its result.
pub(crate) async fn offload<R: 'static>(f: impl FnOnce() -> R + 'static) -> R {
    if !DRIVING.with(Cell::get) {
        return f();
    }
    let slot: Rc<RefCell<Option<R>>> = Rc::default();
    let out = slot.clone();
    JOB.with(|j| *j.borrow_mut() = Some(Box::new(move || *out.borrow_mut() = Some(f()))));
    std::future::poll_fn(|_| match slot.borrow_mut().take() {
        Some(r) => Poll::Ready(r),
        None => Poll::Pending,
    })
    .await
}

/// Runs `fut` to completion on `rt`, running its [`offload`] jobs outside the runtime.
pub(crate) fn drive<F: Future>(rt: &tokio::runtime::Runtime, fut: F) -> F::Output {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            DRIVING.with(|d| d.set(false));
            drop(JOB.with(|j| j.borrow_mut().take()));
        }
    }
    DRIVING.with(|d| d.set(true));
    let _reset = Reset;
    let mut fut = std::pin::pin!(fut);
    loop {
        let done = rt.block_on(std::future::poll_fn(|cx| {
            if let Poll::Ready(v) = fut.as_mut().poll(cx) {
                return Poll::Ready(Some(v));
            }
            if JOB.with(|j| j.borrow().is_some()) {
                Poll::Ready(None)
            } else {
                Poll::Pending
            }
        }));
        match done {
            Some(v) => return v,
            None => {
                if let Some(job) = JOB.with(|j| j.borrow_mut().take()) {
                    job();
                }
            }
        }
    }
}

/// Serves one client connection on a new thread: `stream` (made inside that thread's runtime:
/// a `TcpStream::from_std` needs it) speaks `version`; the connection ends at the server's
/// shutdown. `guard` (the connection permit) lives as long as the thread.
pub(crate) fn spawn_client<S, C, T, M, G>(
    make_stream: M,
    version: Option<ProtocolVersion>,
    shared: Arc<Shared<S, C>>,
    mut shutdown: watch::Receiver<bool>,
    guard: G,
) where
    S: SqlBackend,
    C: ClusterBackend,
    T: AsyncRead + AsyncWrite + Unpin,
    M: FnOnce() -> io::Result<T> + Send + 'static,
    G: Send + 'static,
{
    let spawned = std::thread::Builder::new().name("dqlite-client".into()).spawn(move || {
        let _guard = guard;
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                tracing::warn!(error = %e, "cannot start a client connection's runtime; closed");
                return;
            }
        };
        let served = drive(&rt, async move {
            let stream = make_stream()?;
            tokio::select! {
                r = super::serve_client(stream, version, shared) => r,
                _ = shutdown.wait_for(|stop| *stop) => Ok(()),
            }
        });
        if let Err(e) = served {
            tracing::debug!(error = %e, "client connection ended");
        }
    });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start a client connection's thread; closed");
    }
}
