//! A deterministic simulator of whole clusters of [`RawNode`](crate::RawNode)s.
//!
//! One `u64` seed decides everything: the cluster's shape and settings (the [`Scenario`]),
//! every message delay, loss and duplicate, every crash, partition, membership change,
//! leadership transfer and snapshot, and every client request. There is no wall clock and no
//! thread, so a seed replays exactly.
//!
//! ```text
//!   clients ──propose / read_index──> RawNode ──Ready──> host: write (unsynced) ──fsync──> disk
//!      ^                                 ^  │                 │ send messages / persisted
//!      └──── answers on apply / read ────┘  │                 v
//!                                           └──── step <── network (delay, loss, dup, cuts)
//!                        after every Ready: check::safety  ·  at the end: check::linearizability
//! ```
//!
//! Use [`run_seed`]; on failure the returned [`Failure`] carries the seed, the virtual time and
//! a trace of the run (the seed is replayed with tracing on to produce it).

mod cluster;
pub mod host;
pub mod kv;
pub mod net;
pub mod rng;

use std::fmt;

use net::{NetConfig, NetStats};
use rng::Rng;

/// How long and how closely to run one seed.
#[derive(Clone, Debug)]
pub struct Options {
    /// The seed.
    pub seed: u64,
    /// Virtual duration of the fault phase.
    pub safety_ms: u64,
    /// Bound on the liveness phase (virtual), plus 20 ms per entry the furthest-behind running
    /// server lags the longest log when the faults heal.
    pub liveness_ms: u64,
    /// Record a trace of every event (slow; used to explain a failure).
    pub trace: bool,
    /// Step budget of the linearizability search.
    pub lin_steps_max: u64,
    /// Most client operations in one run (keeps a history checkable).
    pub ops_max: usize,
    /// Complete operations whose client gave up from what the cluster applied before checking
    /// linearizability (see `Cluster::completed_history`); off, they stay unknown.
    pub complete_unknowns: bool,
}

impl Options {
    /// Defaults for one seed: 10 s of faults, 30 s to converge after healing.
    pub fn new(seed: u64) -> Options {
        Options {
            seed,
            safety_ms: 10_000,
            liveness_ms: 30_000,
            trace: false,
            // Optimized builds (the long runs) can afford a deeper search.
            lin_steps_max: if cfg!(debug_assertions) { 300_000 } else { 5_000_000 },
            ops_max: 3_000,
            complete_unknowns: true,
        }
    }
}

/// The cluster's shape and the intensity of faults, drawn from the seed.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Initial voters.
    pub voters: usize,
    /// Extra server ids that membership changes may add.
    pub extra: usize,
    /// Simulated clients.
    pub clients: usize,
    /// Distinct keys (fewer keys, more contention).
    pub keys: usize,
    /// `Config::network_latency`, in ms.
    pub latency_ms: u64,
    /// `Config::tick`, in ms.
    pub tick_ms: u64,
    /// `Config::max_inflight_appends`.
    pub max_inflight: usize,
    /// `Config::max_append_bytes`.
    pub max_append_bytes: u64,
    /// `Config::snapshot_chunk_bytes`.
    pub chunk_bytes: u64,
    /// Initial network settings.
    pub net: NetConfig,
    /// Longest simulated fsync (the common case); 0 means each `Ready` is durable at once
    /// (synchronous) and no fsync tail, failure or crash-after-vote applies.
    pub fsync_ms_max: u64,
    /// Probability (per million) that an fsync falls in the heavy tail: `fsync_tail_ms` more.
    pub fsync_tail_per_million: u32,
    /// Longest extra latency of an fsync in the tail (up to a few election timeouts).
    pub fsync_tail_ms: u64,
    /// Probability (per million) that an fsync fails. The process then aborts (as a database
    /// must after a failed fsync: the state of the page cache is unknown) and restarts from
    /// whatever reached the disk.
    pub fsync_fail_per_million: u32,
    /// Probability (per million) that a restart fails to read the disk (EIO): the process
    /// exits and is restarted later. The same probability applies to reading a snapshot chunk
    /// for a follower (the chunk is not sent; the leader asks again).
    pub read_error_per_million: u32,
    /// Clock-rate skew: each server's tick period is `tick_ms` scaled by a rate within
    /// `1000 ± skew_permille` per mille (0: perfect clocks).
    pub skew_permille: u64,
    /// The application keeps no snapshot file to send: it captures its state machine when a
    /// follower needs a snapshot (see "Bounded memory" in `crate::ready`).
    pub live_snapshots: bool,
    /// Take a snapshot every this many applied entries (`None`: never).
    pub snapshot_every: Option<u64>,
    /// Entries kept behind a snapshot when compacting.
    pub trailing: u64,
    /// Mean gap between faults.
    pub fault_gap_ms: u64,
    /// Relative weights of: crash, partition, one-way cut, isolate leader, membership change,
    /// leadership transfer, network weather, barrier, crash the leader, cut the leader off from
    /// some of its followers, pause a server, corrupt a stored entry (bit flip, then a crash:
    /// the restart detects it and the operator wipes the server), wipe a server's disk (the
    /// operator removes it from the configuration, then restarts it empty as a new server).
    pub weights: [u64; 13],
    /// Probability (per million) that a newly elected leader is crashed, isolated or cut off
    /// within a few network latencies (short-lived leaders with partly replicated entries).
    pub churn_per_million: u32,
    /// Probability (per million) that a server is crashed right after a `Ready` that changes
    /// its term or vote, before that write's fsync (asynchronous-fsync scenarios only).
    pub crash_after_vote_per_million: u32,
    /// Longest downtime after a crash.
    pub down_ms_max: u64,
    /// Longest partition.
    pub partition_ms_max: u64,
    /// How long a client waits before giving up (outcome unknown).
    pub client_timeout_ms: u64,
    /// Longest pause between a client's operations.
    pub think_ms: u64,
    /// Leaders send commit notices only when the host asks, at its next tick
    /// (`Config::eager_commit_updates` off, as the runtime's delayed notice), instead of in
    /// the next `Ready`. Drawn from a copy of the generator, so that every other draw of the
    /// seed is what it was before this knob existed.
    pub lazy_commit_updates: bool,
}

impl Scenario {
    /// Draws a scenario.
    pub fn from_rng(rng: &mut Rng) -> Scenario {
        // Timing: the default `Config` (LAN latency, tick = latency x 5) or a faster one with the
        // same tick counts, so that short-latency seeds go through many more elections.
        let base = crate::Config::new(crate::NodeId(1));
        let default_latency = (base.network_latency.as_millis() as u64).max(1);
        let latency_ms = *rng.pick(&[1, 2, 5, default_latency]).unwrap_or(&default_latency);
        let tick_ms = (base.tick.as_millis() as u64 * latency_ms / default_latency).max(1);
        let mut cfg = base.clone();
        cfg.network_latency = std::time::Duration::from_millis(latency_ms);
        cfg.tick = std::time::Duration::from_millis(tick_ms);
        let election_ms = (u64::from(cfg.election_ticks()) * tick_ms).max(tick_ms * 2);
        let mut s = Scenario {
            voters: *rng.pick(&[3, 3, 5, 5, 1]).unwrap_or(&3),
            extra: rng.range(0, 2) as usize,
            clients: rng.range(2, 5) as usize,
            keys: rng.range(1, 8) as usize,
            latency_ms,
            tick_ms,
            max_inflight: rng.range(1, 8) as usize,
            max_append_bytes: *rng.pick(&[1, 1, 40, 80, 200, 4096, 1 << 20]).unwrap_or(&4096),
            chunk_bytes: rng.range(16, 512),
            net: NetConfig::perfect(1),
            fsync_ms_max: if rng.below(5) == 0 { 0 } else { rng.range(1, 5 * latency_ms) },
            fsync_tail_per_million: if rng.below(2) == 0 { 0 } else { rng.range(2_000, 80_000) as u32 },
            fsync_tail_ms: rng.range(election_ms / 4, 3 * election_ms).max(1),
            fsync_fail_per_million: if rng.below(3) == 0 { rng.range(500, 20_000) as u32 } else { 0 },
            read_error_per_million: if rng.below(3) == 0 { rng.range(10_000, 300_000) as u32 } else { 0 },
            skew_permille: if rng.below(3) == 0 { 0 } else { rng.range(10, 500) },
            live_snapshots: rng.below(2) == 0,
            snapshot_every: if rng.below(4) == 0 { None } else { Some(rng.range(3, 50)) },
            trailing: rng.range(0, 5),
            fault_gap_ms: if rng.below(3) == 0 {
                rng.range(election_ms / 10, election_ms)
            } else {
                rng.range(election_ms / 2, 4 * election_ms)
            }
            .max(1),
            weights: [0; 13],
            churn_per_million: if rng.below(2) == 0 { 0 } else { rng.range(100_000, 700_000) as u32 },
            crash_after_vote_per_million: if rng.below(2) == 0 { 0 } else { rng.range(20_000, 300_000) as u32 },
            down_ms_max: rng.range(election_ms / 16, 4 * election_ms).max(2),
            partition_ms_max: rng.range(election_ms / 5, 4 * election_ms).max(2),
            client_timeout_ms: election_ms * 3,
            think_ms: rng.range(5, 50),
            lazy_commit_updates: rng.clone().next_u64() & 1 == 1,
        };
        for w in &mut s.weights {
            *w = if rng.below(5) == 0 { 0 } else { rng.range(1, 10) };
        }
        // Corruption and wipes are rarer (each ends in a membership change by the operator).
        for k in [11, 12] {
            s.weights[k] = if rng.below(2) == 0 { 0 } else { rng.range(1, 3) };
        }
        s.net = s.random_net(rng);
        s
    }

    /// Random network weather around this scenario's latency.
    pub fn random_net(&self, rng: &mut Rng) -> NetConfig {
        let lo = rng.range(0, self.latency_ms * 2);
        NetConfig {
            delay_ms_min: lo,
            delay_ms_max: lo + rng.range(0, self.latency_ms * 40),
            drop_per_million: if rng.below(3) == 0 { 0 } else { rng.range(0, 100_000) as u32 },
            duplicate_per_million: if rng.below(3) == 0 { 0 } else { rng.range(0, 50_000) as u32 },
        }
    }
}

/// What a passing seed did (to see that the faults really happened).
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// The scenario, formatted.
    pub scenario: String,
    /// Virtual time at the end.
    pub virtual_ms: u64,
    /// Virtual time the liveness phase took.
    pub liveness_ms: u64,
    /// Client operations issued.
    pub ops: usize,
    /// Operations acknowledged.
    pub ops_ok: u64,
    /// Operations with unknown outcome.
    pub ops_unknown: usize,
    /// Client timeouts.
    pub timeouts: u64,
    /// The linearizability search ran out of steps (no verdict).
    pub lin_unknown: bool,
    /// Steps used when it ran out.
    pub lin_steps: u64,
    /// Leaders elected.
    pub elections: u64,
    /// Crashes.
    pub crashes: u64,
    /// Restarts.
    pub restarts: u64,
    /// Pauses.
    pub pauses: u64,
    /// New leaders hit by a reactive fault.
    pub churned: u64,
    /// Partitions and cuts.
    pub partitions: u64,
    /// Membership changes accepted.
    pub conf_changes: u64,
    /// Membership changes abandoned.
    pub conf_aborted: u64,
    /// Leadership transfers started.
    pub transfers: u64,
    /// Leadership transfers abandoned.
    pub transfers_aborted: u64,
    /// Snapshots taken.
    pub snapshots_taken: u64,
    /// Snapshots installed from a leader.
    pub snapshots_installed: u64,
    /// Fsyncs in the heavy tail.
    pub fsync_tails: u64,
    /// Failed fsyncs (each aborted its server).
    pub fsync_failures: u64,
    /// Read errors (failed restarts, unread snapshot chunks).
    pub read_errors: u64,
    /// Stored entries corrupted (detected at the next restart).
    pub corruptions: u64,
    /// Disks wiped (by the fault, or by the operator after a detected corruption).
    pub wipes: u64,
    /// Wiped servers that rejoined empty after the operator removed them.
    pub rejoined: u64,
    /// Snapshots captured on demand for a follower (live-snapshot scenarios).
    pub live_snapshots: u64,
    /// Network counters.
    pub net: NetStats,
}

/// A failed seed.
#[derive(Clone, Debug)]
pub struct Failure {
    /// The seed.
    pub seed: u64,
    /// Virtual time of the failure.
    pub at_ms: u64,
    /// What went wrong.
    pub what: String,
    /// The run's trace (empty unless traced).
    pub trace: Vec<String>,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "seed {} failed at {} ms (virtual): {}", self.seed, self.at_ms, self.what)
    }
}

/// Runs one seed with `opts`. A panic inside the core (an assertion) is returned as a
/// [`Failure`] of that seed too.
pub fn run(opts: Options) -> Result<Report, Failure> {
    let seed = opts.seed;
    cluster::TRACE.with(|t| t.borrow_mut().clear());
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let mut c = cluster::Cluster::new(opts);
        c.run().map(|()| c.report)
    }));
    match result {
        Ok(r) => r,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "non-string panic payload".to_owned());
            Err(Failure {
                seed,
                at_ms: 0,
                what: format!("panicked: {msg}"),
                trace: cluster::TRACE.with(|t| std::mem::take(&mut *t.borrow_mut())),
            })
        }
    }
}

/// Runs one seed with tracing on and returns its trace, whatever the outcome.
pub fn trace_seed(opts: Options) -> (Result<Report, Failure>, Vec<String>) {
    let r = run(Options { trace: true, ..opts });
    let trace = match &r {
        Err(f) => f.trace.clone(),
        Ok(_) => cluster::TRACE.with(|t| std::mem::take(&mut *t.borrow_mut())),
    };
    (r, trace)
}

/// Runs one seed; on failure replays it with tracing on and returns the traced failure.
pub fn run_seed(opts: Options) -> Result<Report, Failure> {
    match run(opts.clone()) {
        Ok(r) => Ok(r),
        Err(f) if opts.trace => Err(f),
        Err(f) => {
            let traced = run(Options { trace: true, ..opts });
            match traced {
                Err(t) => Err(t),
                Ok(_) => Err(Failure {
                    what: format!("{} (and the traced replay did not fail: nondeterminism!)", f.what),
                    ..f
                }),
            }
        }
    }
}
