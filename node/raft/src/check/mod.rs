//! Checkers that judge a run from the outside: a linearizability checker for client histories
//! and incremental checkers for Raft's safety properties.
//!
//! Built for tests and the simulator (feature `sim`); nothing here is used by the core itself.
//!
//! ```text
//!   simulator ──observations──> safety::SafetyChecker   (after every step)
//!   clients   ──history──────> linearizability::check   (at the end of a run, per key)
//! ```

pub mod kv;
pub mod linearizability;
pub mod safety;
