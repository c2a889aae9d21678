//! A linearizability checker for histories of concurrent operations.
//!
//! The search is Wing & Gong's, with the two improvements Lowe describes ("Testing for
//! linearizability", 2017) and that Porcupine popularised:
//!
//! * **Just-in-time linearization.** Events live in one list ordered by time (a call event at
//!   `invoke`, a return event at `response`). The search walks the list; at a call it tries to
//!   linearize that operation now (the model must accept the operation in the current state),
//!   and if it succeeds the call and its return are *lifted* out of the list and the walk
//!   restarts from the head. Reaching a return event whose operation is not yet linearized means
//!   the current prefix cannot be extended: backtrack.
//! * **Memoization.** A configuration is the set of linearized operations plus the model state.
//!   A configuration seen before is never explored again.
//! * **P-compositionality.** When the model is a product of independent objects (a key-value
//!   store is one register per key), each partition is checked alone; the whole history is
//!   linearizable iff every partition is.
//!
//! Operations whose outcome is unknown (the client timed out, or the server said "leadership
//! lost") have no response: they may take effect at any point after their invocation, or never.
//! The search treats their return as being at infinity and succeeds as soon as every operation
//! *with* a known outcome is linearized (the rest are deemed never to have taken effect).
//!
//! The search is exponential in the worst case, so it runs under a step budget; exceeding it is
//! reported as [`Outcome::Unknown`], never as a verdict.

use std::collections::HashSet;
use std::fmt;
use std::hash::Hash;

/// A sequential specification: the object the history is supposed to behave like.
pub trait Model {
    /// The object's state. Hashed for memoization, so keep it small.
    type State: Clone + Eq + Hash + fmt::Debug;
    /// An operation's input (what the client asked for).
    type Input: fmt::Debug;
    /// An operation's output (what the client was told).
    type Output: fmt::Debug;

    /// The state before any operation.
    fn init(&self) -> Self::State;

    /// Applies `input` to `state`. With `Some(output)`, returns the new state if the object could
    /// have answered `output`, `None` if not. With `None` (outcome unknown) it must return the
    /// state after the operation takes effect, whatever it would have answered.
    fn step(&self, state: &Self::State, input: &Self::Input, output: Option<&Self::Output>) -> Option<Self::State>;

    /// Whether the operation never changes the state (a read). Reads with an unknown outcome
    /// constrain nothing and are dropped before the search.
    fn is_read_only(&self, _input: &Self::Input) -> bool {
        false
    }

    /// Marks operations with an unknown outcome that may be assumed never to have taken effect
    /// without changing the verdict (the model must prove that). `ops` is one partition; the
    /// default prunes nothing.
    fn prunable_unknowns(&self, ops: &[&Operation<Self::Input, Self::Output>]) -> Vec<bool> {
        vec![false; ops.len()]
    }

    /// For operations with an unknown outcome that provably took effect, a time by which they
    /// did: the response time of a known operation that observed their effect (it was
    /// linearized before that). The search then treats them as operations that must be
    /// linearized by that time, with the output still unknown. `ops` is one partition; `None`
    /// means no bound (the default for every operation).
    fn effect_deadlines(&self, ops: &[&Operation<Self::Input, Self::Output>]) -> Vec<Option<u64>> {
        vec![None; ops.len()]
    }
}

/// A model whose operations each touch one independent part of the state (e.g. one key).
pub trait Partitioned: Model {
    /// The partition key.
    type Key: Clone + Eq + Hash + Ord + fmt::Debug;
    /// Which partition an operation belongs to.
    fn partition(&self, input: &Self::Input) -> Self::Key;
}

/// One operation of a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation<I, O> {
    /// The client that issued it (for diagnostics; a client has at most one operation pending).
    pub client: u64,
    /// What was asked.
    pub input: I,
    /// When it was invoked.
    pub invoke: u64,
    /// When and with what it returned; `None` if the outcome is unknown (response at infinity).
    pub response: Option<(u64, O)>,
}

/// The verdict on a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Some order of the operations respects real time and the model.
    Linearizable,
    /// No such order exists.
    NotLinearizable(Violation),
    /// The step budget ran out before the search finished.
    Unknown {
        /// Steps taken when the search gave up.
        steps: u64,
    },
}

impl Outcome {
    /// True only for [`Outcome::Linearizable`].
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Outcome::Linearizable)
    }
}

/// Why a history is not linearizable: the deepest point the search reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The partition (formatted with `Debug`) in which the search failed.
    pub partition: String,
    /// Indices (into the checked history) of the longest linearized prefix found, in order.
    pub longest_prefix: Vec<usize>,
    /// Indices of operations that had returned by then but could not be placed next.
    pub stuck_at: Vec<usize>,
}

/// A history that cannot be checked because it is malformed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HistoryError {
    /// An operation returned before it was invoked.
    ResponseBeforeInvoke {
        /// Index of the operation in the history.
        op: usize,
    },
    /// A client had two operations pending at once.
    OverlappingClientOps {
        /// The client.
        client: u64,
        /// Indices of the two operations.
        ops: (usize, usize),
    },
}

impl fmt::Display for HistoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HistoryError::ResponseBeforeInvoke { op } => {
                write!(f, "operation {op} returned before it was invoked")
            }
            HistoryError::OverlappingClientOps { client, ops } => {
                write!(f, "client {client} had operations {} and {} pending at once", ops.0, ops.1)
            }
        }
    }
}

impl std::error::Error for HistoryError {}

/// Bounds for [`check`].
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Search steps (attempts to linearize an operation, plus backtracks) across all partitions.
    pub steps_max: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { steps_max: 5_000_000 }
    }
}

/// Checks a whole history, partition by partition.
pub fn check<M: Partitioned>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    limits: Limits,
) -> Result<Outcome, HistoryError> {
    validate(history)?;
    let mut parts: std::collections::BTreeMap<M::Key, Vec<usize>> = Default::default();
    for (i, op) in history.iter().enumerate() {
        parts.entry(model.partition(&op.input)).or_default().push(i);
    }
    let mut steps_left = limits.steps_max;
    let mut unknown = None;
    for (key, ops) in parts {
        let sub: Vec<&Operation<M::Input, M::Output>> = ops.iter().map(|&i| &history[i]).collect();
        match search(model, &sub, &mut steps_left) {
            Search::Ok => {}
            Search::Fail { longest_prefix, stuck_at } => {
                return Ok(Outcome::NotLinearizable(Violation {
                    partition: format!("{key:?}"),
                    longest_prefix: longest_prefix.into_iter().map(|i| ops[i]).collect(),
                    stuck_at: stuck_at.into_iter().map(|i| ops[i]).collect(),
                }))
            }
            Search::OutOfSteps => {
                // Keep looking: another partition may still give a definite "no".
                unknown = Some(limits.steps_max);
            }
        }
    }
    Ok(match unknown {
        Some(steps) => Outcome::Unknown { steps },
        None => Outcome::Linearizable,
    })
}

/// Checks a history as a single object (no partitioning).
pub fn check_single<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    limits: Limits,
) -> Result<Outcome, HistoryError> {
    validate(history)?;
    let all: Vec<&Operation<M::Input, M::Output>> = history.iter().collect();
    let mut steps_left = limits.steps_max;
    Ok(match search(model, &all, &mut steps_left) {
        Search::Ok => Outcome::Linearizable,
        Search::Fail { longest_prefix, stuck_at } => {
            Outcome::NotLinearizable(Violation { partition: String::from("all"), longest_prefix, stuck_at })
        }
        Search::OutOfSteps => Outcome::Unknown { steps: limits.steps_max },
    })
}

fn validate<I, O>(history: &[Operation<I, O>]) -> Result<(), HistoryError> {
    let mut by_client: std::collections::HashMap<u64, Vec<usize>> = Default::default();
    for (i, op) in history.iter().enumerate() {
        if let Some((t, _)) = &op.response {
            if *t < op.invoke {
                return Err(HistoryError::ResponseBeforeInvoke { op: i });
            }
        }
        by_client.entry(op.client).or_default().push(i);
    }
    for (client, mut ops) in by_client {
        ops.sort_by_key(|&i| history[i].invoke);
        for w in ops.windows(2) {
            let end = history[w[0]].response.as_ref().map(|r| r.0);
            // An operation with unknown outcome leaves the client free to go on (it gave up
            // waiting); a known response must come before the next invocation.
            if let Some(end) = end {
                if end > history[w[1]].invoke {
                    return Err(HistoryError::OverlappingClientOps { client, ops: (w[0], w[1]) });
                }
            }
        }
    }
    Ok(())
}

/// One linearized operation of the search: the candidates at its depth, which one was taken,
/// and the state before it.
struct Frame<S> {
    cands: Vec<usize>,
    k: usize,
    prev: S,
}

enum Search {
    Ok,
    Fail { longest_prefix: Vec<usize>, stuck_at: Vec<usize> },
    OutOfSteps,
}

/// A node of the event list: a call or a return of operation `op`.
#[derive(Clone, Copy)]
struct Event {
    op: usize,
    is_call: bool,
    prev: usize,
    next: usize,
    /// For a call: the index of its return event (`NONE` if the outcome is unknown).
    matching: usize,
}

const NONE: usize = usize::MAX;
const HEAD: usize = 0;

/// A fixed-size bit set, hashable for the memo table.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Bits {
        Bits(vec![0; n.div_ceil(64)])
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

fn search<M: Model>(model: &M, ops_all: &[&Operation<M::Input, M::Output>], steps_left: &mut u64) -> Search {
    // Reads with unknown outcome constrain nothing: drop them, and whatever the model says
    // may be assumed not to have happened.
    let prunable = model.prunable_unknowns(ops_all);
    let deadlines = model.effect_deadlines(ops_all);
    let deadline = |i: usize| -> Option<u64> {
        match &ops_all[i].response {
            Some((t, _)) => Some(*t),
            None => deadlines.get(i).copied().flatten().filter(|t| *t >= ops_all[i].invoke),
        }
    };
    let keep: Vec<usize> = (0..ops_all.len())
        .filter(|&i| {
            ops_all[i].response.is_some()
                || (!model.is_read_only(&ops_all[i].input) && !prunable.get(i).copied().unwrap_or(false))
        })
        .collect();
    let ops: Vec<&Operation<M::Input, M::Output>> = keep.iter().map(|&i| ops_all[i]).collect();
    // When each kept operation must be linearized by (its response, or a proven effect).
    let ret: Vec<Option<u64>> = keep.iter().map(|&i| deadline(i)).collect();
    let n = ops.len();
    let known = ret.iter().filter(|r| r.is_some()).count();
    if known == 0 {
        return Search::Ok;
    }

    // Time-ordered events; at equal times calls sort first (the operations overlap).
    let mut order: Vec<(u64, u8, usize)> = Vec::with_capacity(2 * n);
    for (i, op) in ops.iter().enumerate() {
        order.push((op.invoke, 0, i));
        if let Some(t) = ret[i] {
            order.push((t, 1, i));
        }
    }
    order.sort_unstable();
    // Slot 0 is a sentinel head.
    let mut ev: Vec<Event> = Vec::with_capacity(order.len() + 1);
    ev.push(Event { op: NONE, is_call: false, prev: NONE, next: NONE, matching: NONE });
    let mut call_slot = vec![NONE; n];
    for (k, &(_, kind, op)) in order.iter().enumerate() {
        let slot = k + 1;
        ev.push(Event {
            op,
            is_call: kind == 0,
            prev: slot - 1,
            next: if k + 1 < order.len() { slot + 1 } else { NONE },
            matching: NONE,
        });
        if kind == 0 {
            call_slot[op] = slot;
        } else {
            ev[call_slot[op]].matching = slot;
        }
    }
    ev[HEAD].next = if order.is_empty() { NONE } else { 1 };

    fn unlink(ev: &mut [Event], s: usize) {
        let (p, nx) = (ev[s].prev, ev[s].next);
        ev[p].next = nx;
        if nx != NONE {
            ev[nx].prev = p;
        }
    }
    fn relink(ev: &mut [Event], s: usize) {
        let (p, nx) = (ev[s].prev, ev[s].next);
        ev[p].next = s;
        if nx != NONE {
            ev[nx].prev = s;
        }
    }
    // Lift a call (and its return); undo in reverse order.
    fn lift(ev: &mut [Event], call: usize) {
        unlink(ev, call);
        let r = ev[call].matching;
        if r != NONE {
            unlink(ev, r);
        }
    }
    fn unlift(ev: &mut [Event], call: usize) {
        let r = ev[call].matching;
        if r != NONE {
            relink(ev, r);
        }
        relink(ev, call);
    }

    let mut state = model.init();
    let mut linearized = Bits::new(n);
    let mut memo: HashSet<(Bits, M::State)> = HashSet::new();
    let mut stack: Vec<Frame<M::State>> = Vec::new();
    let mut done_known = 0usize;
    let mut best: (Vec<usize>, Vec<usize>) = (Vec::new(), Vec::new());
    // The operations that may go next: the calls before the first pending return. They are
    // tried earliest deadline first, which is the order they really took effect in most
    // histories (a response, or a proven effect, bounds each), so a linearizable history is
    // usually found without backtracking; the order does not change the verdict.
    let candidates = |ev: &[Event]| -> Vec<usize> {
        let mut v = Vec::new();
        let mut s = ev[HEAD].next;
        while s != NONE && ev[s].is_call {
            v.push(s);
            s = ev[s].next;
        }
        v.sort_by_key(|&c| (ret[ev[c].op].unwrap_or(u64::MAX), ev[c].op));
        v
    };
    let mut cands = candidates(&ev);
    let mut k = 0usize;

    loop {
        if done_known == known {
            return Search::Ok;
        }
        if *steps_left == 0 {
            return Search::OutOfSteps;
        }
        *steps_left -= 1;
        if let Some(&slot) = cands.get(k) {
            let op = ops[ev[slot].op];
            let out = op.response.as_ref().map(|r| &r.1);
            if let Some(next_state) = model.step(&state, &op.input, out) {
                let mut next_lin = linearized.clone();
                next_lin.set(ev[slot].op);
                if memo.insert((next_lin.clone(), next_state.clone())) {
                    let prev = std::mem::replace(&mut state, next_state);
                    linearized = next_lin;
                    if ret[ev[slot].op].is_some() {
                        done_known += 1;
                    }
                    lift(&mut ev, slot);
                    stack.push(Frame { cands: std::mem::take(&mut cands), k, prev });
                    cands = candidates(&ev);
                    k = 0;
                    continue;
                }
            }
            k += 1;
            continue;
        }
        // No candidate extends the prefix: record it and backtrack.
        if stack.len() >= best.0.len() {
            let stuck: Vec<usize> = {
                let mut v = Vec::new();
                let mut s = ev[HEAD].next;
                while s != NONE {
                    if !ev[s].is_call {
                        v.push(keep[ev[s].op]);
                        break;
                    }
                    s = ev[s].next;
                }
                v
            };
            best = (stack.iter().map(|f| keep[ev[f.cands[f.k]].op]).collect(), stuck);
        }
        match stack.pop() {
            None => return Search::Fail { longest_prefix: best.0, stuck_at: best.1 },
            Some(f) => {
                let slot = f.cands[f.k];
                let op = ev[slot].op;
                if ret[op].is_some() {
                    done_known -= 1;
                }
                linearized.clear(op);
                state = f.prev;
                unlift(&mut ev, slot);
                cands = f.cands;
                k = f.k + 1;
            }
        }
    }
}
