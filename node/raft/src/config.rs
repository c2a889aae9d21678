//! Static configuration of one Raft node, with timing derived from one `network_latency` knob.

use core::time::Duration;

use crate::types::NodeId;

/// How one node behaves. Pre-vote and check-quorum are always on.
///
/// Timing: the application calls [`RawNode::tick`](crate::RawNode::tick) every [`Config::tick`].
/// The heartbeat interval is `10 x network_latency` and the election timeout
/// `100 x network_latency`, so the default latency of 10 ms gives etcd's LAN defaults:
/// heartbeat 100 ms, election timeout 1 s (randomized per election in `[1 s, 2 s)`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// This node's id (never 0).
    pub id: NodeId,
    /// The typical one-way network latency between peers.
    pub network_latency: Duration,
    /// How much time one call to `tick` stands for.
    pub tick: Duration,
    /// Most AppendEntries messages in flight to one follower in the replicate state.
    pub max_inflight_appends: usize,
    /// Most payload bytes in one AppendEntries (at least one entry is always sent).
    pub max_append_bytes: u64,
    /// Most bytes per InstallSnapshot chunk the core asks the application for.
    pub snapshot_chunk_bytes: u64,
    /// Seed for the deterministic PRNG that randomizes election timeouts (mixed with `id`).
    pub rng_seed: u64,
    /// Leader: tell idle followers about a new commit index in the very next `Ready` (an empty
    /// AppendEntries; true, the default). When false, the application decides when: it asks
    /// [`RawNode::commit_updates_pending`](crate::RawNode::commit_updates_pending) and calls
    /// [`RawNode::send_commit_updates`](crate::RawNode::send_commit_updates), typically after a
    /// short delay, so that the next AppendEntries, which carries the commit index too, makes
    /// the notice unnecessary. Heartbeats carry it in any case.
    pub eager_commit_updates: bool,
}

/// Why a [`Config`] is rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Node id 0 is reserved.
    #[error("node id 0 is reserved")]
    ZeroId,
    /// `tick` is zero.
    #[error("tick duration is zero")]
    ZeroTick,
    /// The heartbeat interval would be shorter than one tick.
    #[error("heartbeat interval ({heartbeat:?}) shorter than a tick ({tick:?})")]
    TickTooLong {
        /// The derived heartbeat interval.
        heartbeat: Duration,
        /// The configured tick.
        tick: Duration,
    },
    /// `max_inflight_appends` is zero.
    #[error("max_inflight_appends is zero")]
    ZeroInflight,
    /// `max_append_bytes` or `snapshot_chunk_bytes` is zero.
    #[error("a byte limit is zero")]
    ZeroBytes,
}

impl Config {
    /// Defaults for a LAN: latency 10 ms, tick 50 ms (heartbeat 2 ticks, election 20 ticks),
    /// 32 appends in flight, 1 MiB per append, 1 MiB snapshot chunks, seed 0, eager commit
    /// updates.
    pub fn new(id: NodeId) -> Config {
        Config {
            id,
            network_latency: Duration::from_millis(10),
            tick: Duration::from_millis(50),
            max_inflight_appends: 32,
            max_append_bytes: 1 << 20,
            snapshot_chunk_bytes: 1 << 20,
            rng_seed: 0,
            eager_commit_updates: true,
        }
    }

    /// The heartbeat interval: `10 x network_latency`.
    pub fn heartbeat_interval(&self) -> Duration {
        self.network_latency.saturating_mul(10)
    }

    /// The (minimum) election timeout: `100 x network_latency`.
    pub fn election_timeout(&self) -> Duration {
        self.network_latency.saturating_mul(100)
    }

    fn ticks(&self, d: Duration) -> u32 {
        let t = self.tick.as_nanos().max(1);
        let n = d.as_nanos().div_ceil(t);
        n.clamp(1, u32::MAX as u128) as u32
    }

    /// The heartbeat interval in ticks (at least 1).
    pub fn heartbeat_ticks(&self) -> u32 {
        self.ticks(self.heartbeat_interval())
    }

    /// The minimum election timeout in ticks (at least twice the heartbeat).
    pub fn election_ticks(&self) -> u32 {
        self.ticks(self.election_timeout()).max(self.heartbeat_ticks().saturating_mul(2))
    }

    /// Checks the configuration.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.id == NodeId::ZERO {
            return Err(ConfigError::ZeroId);
        }
        if self.tick.is_zero() {
            return Err(ConfigError::ZeroTick);
        }
        if self.heartbeat_interval() < self.tick {
            return Err(ConfigError::TickTooLong { heartbeat: self.heartbeat_interval(), tick: self.tick });
        }
        if self.max_inflight_appends == 0 {
            return Err(ConfigError::ZeroInflight);
        }
        if self.max_append_bytes == 0 || self.snapshot_chunk_bytes == 0 {
            return Err(ConfigError::ZeroBytes);
        }
        Ok(())
    }
}

/// A small deterministic PRNG (SplitMix64): no entropy source, same seed, same sequence.
#[derive(Clone, Debug)]
pub(crate) struct Prng(u64);

impl Prng {
    pub(crate) fn new(seed: u64) -> Prng {
        Prng(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[lo, hi)`; `lo` if the range is empty.
    pub(crate) fn range(&mut self, lo: u32, hi: u32) -> u32 {
        if hi <= lo {
            return lo;
        }
        lo + (self.next_u64() % u64::from(hi - lo)) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_derive_lan_timing() {
        let c = Config::new(NodeId(1));
        assert_eq!(c.heartbeat_interval(), Duration::from_millis(100));
        assert_eq!(c.election_timeout(), Duration::from_secs(1));
        assert_eq!(c.heartbeat_ticks(), 2);
        assert_eq!(c.election_ticks(), 20);
        c.validate().unwrap();
    }

    #[test]
    fn validate_rejects_bad_values() {
        assert_eq!(Config::new(NodeId(0)).validate(), Err(ConfigError::ZeroId));
        let mut c = Config::new(NodeId(1));
        c.tick = Duration::from_secs(1);
        assert!(matches!(c.validate(), Err(ConfigError::TickTooLong { .. })));
        let mut c = Config::new(NodeId(1));
        c.max_inflight_appends = 0;
        assert_eq!(c.validate(), Err(ConfigError::ZeroInflight));
    }

    #[test]
    fn prng_is_splitmix64() {
        // Reference outputs of SplitMix64 from state 0.
        let mut p = Prng::new(0);
        assert_eq!(p.next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(p.next_u64(), 0x6e78_9e6a_a1b9_65f4);
        assert_eq!(p.next_u64(), 0x06c4_5d18_8009_454f);
    }

    #[test]
    fn validate_boundaries() {
        let mut c = Config::new(NodeId(1));
        c.tick = c.heartbeat_interval();
        c.validate().unwrap();
        assert_eq!(c.heartbeat_ticks(), 1);
        assert_eq!(c.election_ticks(), 10);
        let mut c = Config::new(NodeId(1));
        c.snapshot_chunk_bytes = 0;
        assert_eq!(c.validate(), Err(ConfigError::ZeroBytes));
        let mut c = Config::new(NodeId(1));
        c.max_append_bytes = 0;
        assert_eq!(c.validate(), Err(ConfigError::ZeroBytes));
        let mut c = Config::new(NodeId(1));
        c.tick = Duration::ZERO;
        assert_eq!(c.validate(), Err(ConfigError::ZeroTick));
    }

    #[test]
    fn prng_is_deterministic_and_in_range() {
        let mut a = Prng::new(7);
        let mut b = Prng::new(7);
        for _ in 0..100 {
            let x = a.range(10, 20);
            assert_eq!(x, b.range(10, 20));
            assert!((10..20).contains(&x));
        }
    }
}
