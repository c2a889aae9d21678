//! A key-value store as a sequential specification: one register per key, partitioned by key.
//!
//! Values are strings so that `append` histories stay readable in failure reports.

use super::linearizability::{Model, Operation, Partitioned};

/// A key-value operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvInput {
    /// Read a key.
    Get(String),
    /// Overwrite a key.
    Put(String, String),
    /// Append to a key's value (absent counts as empty).
    Append(String, String),
    /// Set `key` to `new` if its value is `expected` (`None`: absent).
    Cas {
        /// The key.
        key: String,
        /// The value the key must hold.
        expected: Option<String>,
        /// The value to store.
        new: String,
    },
}

impl KvInput {
    /// The key the operation touches.
    pub fn key(&self) -> &str {
        match self {
            KvInput::Get(k) | KvInput::Put(k, _) | KvInput::Append(k, _) => k,
            KvInput::Cas { key, .. } => key,
        }
    }
}

/// What a client was told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvOutput {
    /// A get's result (`None`: absent).
    Value(Option<String>),
    /// A put or append succeeded.
    Ok,
    /// Whether a cas swapped.
    Swapped(bool),
}

/// The key-value specification.
#[derive(Clone, Copy, Debug, Default)]
pub struct KvModel;

impl Model for KvModel {
    type State = Option<String>;
    type Input = KvInput;
    type Output = KvOutput;

    fn init(&self) -> Self::State {
        None
    }

    fn step(&self, state: &Self::State, input: &KvInput, output: Option<&KvOutput>) -> Option<Self::State> {
        match input {
            KvInput::Get(_) => match output {
                None => Some(state.clone()),
                Some(KvOutput::Value(v)) if v == state => Some(state.clone()),
                Some(_) => None,
            },
            KvInput::Put(_, v) => match output {
                None | Some(KvOutput::Ok) => Some(Some(v.clone())),
                Some(_) => None,
            },
            KvInput::Append(_, v) => match output {
                None | Some(KvOutput::Ok) => {
                    let mut s = state.clone().unwrap_or_default();
                    s.push_str(v);
                    Some(Some(s))
                }
                Some(_) => None,
            },
            KvInput::Cas { expected, new, .. } => {
                let swaps = expected == state;
                match output {
                    None => Some(if swaps { Some(new.clone()) } else { state.clone() }),
                    Some(KvOutput::Swapped(true)) if swaps => Some(Some(new.clone())),
                    Some(KvOutput::Swapped(false)) if !swaps => Some(state.clone()),
                    Some(_) => None,
                }
            }
        }
    }

    fn is_read_only(&self, input: &KvInput) -> bool {
        matches!(input, KvInput::Get(_))
    }

    /// An unknown-outcome write (put, append or cas) whose written string never occurs in
    /// anything observed about the key (a known get's result, a cas's expected value) may be
    /// assumed never to have happened, provided no known cas on the key that failed returned
    /// after the write was invoked.
    ///
    /// Why: take any linearization in which such a write `w` takes effect. From that point the
    /// value contains `w`'s string until a put overwrites it. No known get can come in between
    /// (it would show the string), nor a successful cas (its expected value would contain it),
    /// nor a failed cas (none can be placed after `w`'s invocation). What remains in between are
    /// blind writes (put, append) and unknown operations, which do not observe the value. So
    /// removing `w` leaves a valid linearization; and the converse holds because `w`'s outcome
    /// is unknown. An empty written string occurs everywhere and is never pruned.
    fn prunable_unknowns(&self, ops: &[&Operation<KvInput, KvOutput>]) -> Vec<bool> {
        let last_failed_cas = ops
            .iter()
            .filter_map(|o| match (&o.input, &o.response) {
                (KvInput::Cas { .. }, Some((t, KvOutput::Swapped(false)))) => Some(*t),
                _ => None,
            })
            .max();
        let mut observed: Vec<&str> = Vec::new();
        for o in ops {
            if let (KvInput::Get(_), Some((_, KvOutput::Value(Some(v))))) = (&o.input, &o.response) {
                observed.push(v);
            }
            if let KvInput::Cas { expected: Some(e), .. } = &o.input {
                observed.push(e);
            }
        }
        ops.iter()
            .map(|o| {
                let written = match &o.input {
                    _ if o.response.is_some() => return false,
                    KvInput::Get(_) => return false,
                    KvInput::Put(_, v) | KvInput::Append(_, v) => v,
                    KvInput::Cas { new, .. } => new,
                };
                let cas_after = last_failed_cas.is_some_and(|t| t >= o.invoke);
                !cas_after && !written.is_empty() && !observed.iter().any(|s| s.contains(written.as_str()))
            })
            .collect()
    }

    /// An unknown-outcome write whose written string is a unique token (the simulator writes
    /// `[client.seq]`, `p[client.seq]`, `c[client.seq]`) took effect if a known get returned a
    /// value containing the token, or a known successful cas expected one: it was linearized
    /// before that operation returned. Applied only when every written string of the partition
    /// is such a token, so that a token can occur in a value only where its own write put it.
    fn effect_deadlines(&self, ops: &[&Operation<KvInput, KvOutput>]) -> Vec<Option<u64>> {
        let written = |o: &Operation<KvInput, KvOutput>| -> Option<String> {
            match &o.input {
                KvInput::Get(_) => None,
                KvInput::Put(_, v) | KvInput::Append(_, v) => Some(v.clone()),
                KvInput::Cas { new, .. } => Some(new.clone()),
            }
        };
        let mut tokens: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        for o in ops {
            if let Some(w) = written(o) {
                match token(&w) {
                    Some(t) => *tokens.entry(t.to_owned()).or_default() += 1,
                    None => return vec![None; ops.len()],
                }
            }
        }
        // Observations: (what was seen, when the observer returned).
        let mut seen: Vec<(&str, u64)> = Vec::new();
        for o in ops {
            match (&o.input, &o.response) {
                (KvInput::Get(_), Some((t, KvOutput::Value(Some(v))))) => seen.push((v, *t)),
                (KvInput::Cas { expected: Some(e), .. }, Some((t, KvOutput::Swapped(true)))) => seen.push((e, *t)),
                _ => {}
            }
        }
        ops.iter()
            .map(|o| {
                if o.response.is_some() {
                    return None;
                }
                let w = written(o)?;
                let t = token(&w)?;
                if tokens.get(t) != Some(&1) {
                    return None;
                }
                seen.iter().filter(|(v, _)| v.contains(t)).map(|(_, at)| *at).min()
            })
            .collect()
    }
}

/// The bracketed part of a token `[a.b]`, `p[a.b]` or `c[a.b]` (digits `a`, `b`), if `s` is one.
fn token(s: &str) -> Option<&str> {
    let b = s.strip_prefix('p').or_else(|| s.strip_prefix('c')).unwrap_or(s);
    let inner = b.strip_prefix('[')?.strip_suffix(']')?;
    let (x, y) = inner.split_once('.')?;
    let digits = |d: &str| !d.is_empty() && d.bytes().all(|c| c.is_ascii_digit());
    (digits(x) && digits(y)).then_some(b)
}

impl Partitioned for KvModel {
    type Key = String;
    fn partition(&self, input: &KvInput) -> String {
        input.key().to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::super::linearizability::{check, check_single, HistoryError, Limits, Operation, Outcome};
    use super::*;

    type Op = Operation<KvInput, KvOutput>;

    fn get(client: u64, k: &str, t0: u64, t1: u64, v: Option<&str>) -> Op {
        Operation {
            client,
            input: KvInput::Get(k.into()),
            invoke: t0,
            response: Some((t1, KvOutput::Value(v.map(Into::into)))),
        }
    }
    fn put(client: u64, k: &str, v: &str, t0: u64, t1: Option<u64>) -> Op {
        Operation {
            client,
            input: KvInput::Put(k.into(), v.into()),
            invoke: t0,
            response: t1.map(|t| (t, KvOutput::Ok)),
        }
    }
    fn append(client: u64, k: &str, v: &str, t0: u64, t1: Option<u64>) -> Op {
        Operation {
            client,
            input: KvInput::Append(k.into(), v.into()),
            invoke: t0,
            response: t1.map(|t| (t, KvOutput::Ok)),
        }
    }
    fn cas(client: u64, k: &str, e: Option<&str>, n: &str, t0: u64, r: Option<(u64, bool)>) -> Op {
        Operation {
            client,
            input: KvInput::Cas { key: k.into(), expected: e.map(Into::into), new: n.into() },
            invoke: t0,
            response: r.map(|(t, b)| (t, KvOutput::Swapped(b))),
        }
    }
    fn verdict(h: &[Op]) -> Outcome {
        check(&KvModel, h, Limits::default()).expect("well-formed history")
    }
    fn assert_rejected(h: &[Op]) {
        match verdict(h) {
            Outcome::NotLinearizable(_) => {}
            other => panic!("expected a rejection, got {other:?} for {h:#?}"),
        }
    }

    #[test]
    fn empty_history_is_linearizable() {
        assert_eq!(verdict(&[]), Outcome::Linearizable);
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let h = [
            put(1, "x", "a", 0, Some(1)),
            get(1, "x", 2, 3, Some("a")),
            append(2, "x", "b", 4, Some(5)),
            get(2, "x", 6, 7, Some("ab")),
            cas(1, "x", Some("ab"), "c", 8, Some((9, true))),
            cas(1, "x", Some("ab"), "d", 10, Some((11, false))),
            get(1, "x", 12, 13, Some("c")),
        ];
        assert_eq!(verdict(&h), Outcome::Linearizable);
    }

    #[test]
    fn concurrent_read_may_see_old_or_new_value() {
        // The read overlaps the write: both answers are fine.
        for seen in [None, Some("a")] {
            let h = [put(1, "x", "a", 0, Some(10)), get(2, "x", 5, 6, seen)];
            assert_eq!(verdict(&h), Outcome::Linearizable, "seen {seen:?}");
        }
    }

    #[test]
    fn rejects_stale_read() {
        // The put finished before the read began, yet the read saw the old (absent) value.
        let h = [put(1, "x", "a", 0, Some(1)), get(2, "x", 2, 3, None)];
        assert_rejected(&h);
    }

    #[test]
    fn rejects_stale_read_after_overwrite() {
        let h = [put(1, "x", "a", 0, Some(1)), put(1, "x", "b", 2, Some(3)), get(2, "x", 4, 5, Some("a"))];
        assert_rejected(&h);
    }

    #[test]
    fn rejects_lost_write() {
        // Two appends acknowledged; a later read shows only one of them.
        let h = [append(1, "x", "a", 0, Some(2)), append(2, "x", "b", 1, Some(3)), get(3, "x", 4, 5, Some("a"))];
        assert_rejected(&h);
    }

    #[test]
    fn rejects_read_of_value_never_written() {
        let h = [put(1, "x", "a", 0, Some(1)), get(2, "x", 0, 3, Some("zzz"))];
        assert_rejected(&h);
    }

    #[test]
    fn rejects_reads_that_go_back_in_time() {
        // Two sequential reads by one client overlap one write: new then old is impossible.
        let h = [put(1, "x", "a", 0, Some(100)), get(2, "x", 1, 2, Some("a")), get(2, "x", 3, 4, None)];
        assert_rejected(&h);
    }

    #[test]
    fn rejects_double_successful_cas() {
        // Both clients swapped from the same expected value: only one can have.
        let h = [
            put(1, "x", "0", 0, Some(1)),
            cas(1, "x", Some("0"), "1", 2, Some((5, true))),
            cas(2, "x", Some("0"), "2", 3, Some((6, true))),
        ];
        assert_rejected(&h);
    }

    #[test]
    fn rejects_appends_out_of_real_time_order() {
        // "a" was acknowledged before "b" was invoked, so "ba" is impossible.
        let h = [append(1, "x", "a", 0, Some(1)), append(2, "x", "b", 2, Some(3)), get(3, "x", 4, 5, Some("ba"))];
        assert_rejected(&h);
        let ok = [append(1, "x", "a", 0, Some(1)), append(2, "x", "b", 2, Some(3)), get(3, "x", 4, 5, Some("ab"))];
        assert_eq!(verdict(&ok), Outcome::Linearizable);
    }

    #[test]
    fn unknown_outcome_may_or_may_not_take_effect() {
        // A put whose client timed out: later reads may see it or not, but not flip back.
        let base = put(1, "x", "a", 0, None);
        assert_eq!(verdict(&[base.clone(), get(2, "x", 5, 6, None)]), Outcome::Linearizable);
        assert_eq!(verdict(&[base.clone(), get(2, "x", 5, 6, Some("a"))]), Outcome::Linearizable);
        // It may take effect long after the client gave up.
        assert_eq!(
            verdict(&[base.clone(), get(2, "x", 5, 6, None), get(2, "x", 50, 60, Some("a")),]),
            Outcome::Linearizable
        );
        // But once seen it cannot be unseen.
        assert_rejected(&[base.clone(), get(2, "x", 5, 6, Some("a")), get(2, "x", 7, 8, None)]);
        // And it cannot take effect before it was invoked.
        assert_rejected(&[get(2, "x", 0, 1, Some("a")), put(1, "x", "a", 2, None)]);
    }

    #[test]
    fn unobserved_unknown_writes_are_pruned_without_changing_verdicts() {
        // Many unknown appends nobody ever saw: without pruning this search is exponential.
        let mut h: Vec<Op> = (0..40).map(|c| append(c, "x", &format!("[{c}]"), c, None)).collect();
        h.push(append(100, "x", "[a]", 50, Some(51)));
        h.push(get(101, "x", 60, 61, Some("[a]")));
        assert_eq!(check(&KvModel, &h, Limits { steps_max: 10_000 }), Ok(Outcome::Linearizable));
        // One of them observed: still decided, and still right.
        h.push(get(102, "x", 70, 71, Some("[a][7]")));
        assert_eq!(check(&KvModel, &h, Limits { steps_max: 10_000 }), Ok(Outcome::Linearizable));
        h.push(get(103, "x", 80, 81, Some("[a]")));
        assert!(matches!(check(&KvModel, &h, Limits { steps_max: 10_000 }), Ok(Outcome::NotLinearizable(_))));
        // A failed cas returning after the unknown write's invocation disables pruning (the
        // unseen write may explain it); one that returned before does not.
        let h =
            [put(1, "x", "a", 0, Some(1)), put(2, "x", "b", 2, None), cas(3, "x", Some("a"), "c", 5, Some((6, false)))];
        assert_eq!(verdict(&h), Outcome::Linearizable);
        assert_eq!(KvModel.prunable_unknowns(&h.iter().collect::<Vec<_>>()), vec![false; 3]);
        let h =
            [put(1, "x", "a", 0, Some(1)), cas(3, "x", Some("z"), "c", 2, Some((3, false))), put(2, "x", "b", 4, None)];
        assert_eq!(KvModel.prunable_unknowns(&h.iter().collect::<Vec<_>>()), vec![false, false, true]);
    }

    #[test]
    fn unknown_append_applies_at_most_once() {
        let h = [append(1, "x", "a", 0, None), get(2, "x", 10, 11, Some("aa"))];
        assert_rejected(&h);
    }

    #[test]
    fn keys_are_independent() {
        let h = [
            put(1, "x", "a", 0, Some(1)),
            put(1, "y", "b", 2, Some(3)),
            get(2, "y", 4, 5, Some("b")),
            get(2, "x", 6, 7, Some("a")),
        ];
        assert_eq!(verdict(&h), Outcome::Linearizable);
        let bad = [
            put(1, "x", "a", 0, Some(1)),
            put(1, "y", "b", 2, Some(3)),
            get(2, "y", 4, 5, Some("b")),
            get(2, "x", 6, 7, None),
        ];
        match verdict(&bad) {
            Outcome::NotLinearizable(v) => assert_eq!(v.partition, "\"x\""),
            other => panic!("expected rejection, got {other:?}"),
        }
    }

    #[test]
    fn violation_names_the_operation_that_could_not_be_placed() {
        let h = [put(1, "x", "a", 0, Some(1)), get(2, "x", 2, 3, None)];
        match verdict(&h) {
            Outcome::NotLinearizable(v) => {
                assert_eq!(v.longest_prefix, vec![0]);
                assert_eq!(v.stuck_at, vec![1]);
            }
            other => panic!("expected rejection, got {other:?}"),
        }
    }

    #[test]
    fn malformed_histories_are_errors_not_verdicts() {
        let h = [get(1, "x", 5, 4, None)];
        assert_eq!(check(&KvModel, &h, Limits::default()), Err(HistoryError::ResponseBeforeInvoke { op: 0 }));
        let h = [get(1, "x", 0, 10, None), get(1, "x", 5, 6, None)];
        assert!(matches!(
            check(&KvModel, &h, Limits::default()),
            Err(HistoryError::OverlappingClientOps { client: 1, .. })
        ));
    }

    #[test]
    fn step_budget_gives_unknown_not_a_verdict() {
        // Many fully concurrent appends then a read that matches none of the orders: the search
        // must explore a lot before it can say no. With a tiny budget it must say "unknown".
        let mut h: Vec<Op> = (0..12).map(|c| append(c, "x", &format!("{c},"), 0, Some(100))).collect();
        h.push(get(99, "x", 200, 201, Some("nope")));
        assert_eq!(check(&KvModel, &h, Limits { steps_max: 50 }), Ok(Outcome::Unknown { steps: 50 }));
    }

    #[test]
    fn observed_unknown_writes_get_a_deadline_and_still_constrain() {
        // An unknown append whose token a get observed took effect before that get returned.
        let h = vec![
            append(1, "x", "[1.1]", 0, None),
            get(2, "x", 10, 20, Some("[1.1]")),
            append(3, "x", "[3.1]", 1, None),
        ];
        let ops: Vec<&Op> = h.iter().collect();
        assert_eq!(KvModel.effect_deadlines(&ops), vec![Some(20), None, None]);
        assert_eq!(verdict(&h), Outcome::Linearizable);
        // Written strings that are not the simulator's tokens: no deadlines (they could occur
        // inside other values).
        let plain = [append(1, "x", "a", 0, None), get(2, "x", 10, 20, Some("a"))];
        let ops: Vec<&Op> = plain.iter().collect();
        assert_eq!(KvModel.effect_deadlines(&ops), vec![None, None]);
        // The deadline keeps a real violation visible: the write took effect by time 20, so a
        // later get that does not see it (with nothing overwriting) is a lost write.
        let lost =
            vec![append(1, "x", "[1.1]", 0, None), get(2, "x", 10, 20, Some("[1.1]")), get(2, "x", 30, 40, None)];
        assert_rejected(&lost);
    }

    #[test]
    fn concurrent_appends_find_the_one_valid_order() {
        // 8 concurrent appends; the read fixes a specific permutation the search must find.
        let mut h: Vec<Op> = (0..8).map(|c| append(c, "x", &format!("{c},"), 0, Some(100))).collect();
        let order = [5u64, 2, 7, 0, 3, 6, 1, 4];
        let expect: String = order.iter().map(|c| format!("{c},")).collect();
        h.push(get(99, "x", 200, 201, Some(&expect)));
        assert_eq!(verdict(&h), Outcome::Linearizable);
        // The same with one element missing is a lost write.
        let lost: String = order[..7].iter().map(|c| format!("{c},")).collect();
        let n = h.len();
        h[n - 1] = get(99, "x", 200, 201, Some(&lost));
        assert_rejected(&h);
    }

    #[test]
    fn single_object_check_agrees() {
        let h = [put(1, "x", "a", 0, Some(1)), get(2, "x", 2, 3, None)];
        assert!(matches!(check_single(&KvModel, &h, Limits::default()), Ok(Outcome::NotLinearizable(_))));
    }

    /// Brute force: try every permutation that respects real time. Used to cross-check the
    /// search on small random histories.
    fn brute_force(h: &[Op]) -> bool {
        fn go(h: &[Op], used: &mut Vec<bool>, state: Option<String>, done_known: usize) -> bool {
            let known = h.iter().filter(|o| o.response.is_some()).count();
            if done_known == known {
                return true;
            }
            for i in 0..h.len() {
                if used[i] {
                    continue;
                }
                // i may go next only if no unused op returned before i was invoked.
                let blocked = h
                    .iter()
                    .enumerate()
                    .any(|(j, o)| !used[j] && j != i && o.response.as_ref().is_some_and(|r| r.0 < h[i].invoke));
                if blocked {
                    continue;
                }
                if let Some(s) = KvModel.step(&state, &h[i].input, h[i].response.as_ref().map(|r| &r.1)) {
                    used[i] = true;
                    let k = done_known + usize::from(h[i].response.is_some());
                    if go(h, used, s, k) {
                        return true;
                    }
                    used[i] = false;
                }
            }
            false
        }
        go(h, &mut vec![false; h.len()], None, 0)
    }

    #[test]
    fn search_agrees_with_brute_force_on_random_small_histories() {
        // A tiny local PRNG (splitmix64) so the test needs nothing else.
        let mut x: u64 = 0x5EED;
        let mut next = move || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        let (mut yes, mut no) = (0, 0);
        for _ in 0..3000 {
            let n = 1 + (next() % 6) as usize;
            let mut h = Vec::new();
            let mut t = 0;
            for c in 0..n as u64 {
                t += next() % 3;
                let t0 = t;
                let t1 = t0 + next() % 6;
                let v = ["a", "b"][(next() % 2) as usize];
                let known = next() % 5 != 0;
                let op = match next() % 4 {
                    0 => get(c, "x", t0, t1, [None, Some("a"), Some("b"), Some("ab")][(next() % 4) as usize]),
                    1 => put(c, "x", v, t0, known.then_some(t1)),
                    2 => append(c, "x", v, t0, known.then_some(t1)),
                    _ => cas(
                        c,
                        "x",
                        [None, Some("a"), Some("b")][(next() % 3) as usize],
                        v,
                        t0,
                        known.then_some((t1, next() % 2 == 0)),
                    ),
                };
                h.push(op);
            }
            let expect = brute_force(&h);
            let got = verdict(&h);
            assert_eq!(got.is_linearizable(), expect, "history {h:#?} got {got:?}");
            assert!(!matches!(got, Outcome::Unknown { .. }));
            if expect {
                yes += 1
            } else {
                no += 1
            }
        }
        // Both verdicts must actually occur, or the cross-check proves little.
        assert!(yes > 300 && no > 300, "yes {yes} no {no}");
    }
}
