//! The async dqlite client: framing over TCP, leader discovery, typed requests, ROWS streaming.
//!
//! ```text
//! discovery::connect_leader ── LEADER ──▶ seed ... ── CLIENT, OPEN ──▶ leader
//!          │
//!          ▼
//!   session::Session  (one request in flight; abandoned responses drained lazily)
//!          │ uses
//!          ▼
//!   stream::WireStream  (handshake, dqlite-wire framing, cancel-safe reads)
//! ```

pub(crate) mod discovery;
pub(crate) mod session;
pub(crate) mod stream;

#[cfg(test)]
pub(crate) mod fake;
