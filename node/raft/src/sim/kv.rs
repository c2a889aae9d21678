//! The simulated application: a key-value state machine whose commands travel through Raft as
//! opaque payloads, and the encoding of those payloads.
//!
//! Every command carries the issuing client and its request number, so the node that proposed
//! it can answer the client when it applies the entry (whoever leads by then).

use std::collections::BTreeMap;

use crate::check::kv::{KvInput, KvOutput};

/// A command as it travels in a log entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    /// The issuing client.
    pub client: u64,
    /// The client's request number.
    pub seq: u64,
    /// The operation.
    pub op: KvInput,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8).map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    }
    fn str(&mut self) -> Option<String> {
        let n = u32::from_le_bytes(self.take(4)?.try_into().ok()?) as usize;
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
}

impl Command {
    /// The payload bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32);
        out.extend_from_slice(&self.client.to_le_bytes());
        out.extend_from_slice(&self.seq.to_le_bytes());
        match &self.op {
            KvInput::Get(k) => {
                out.push(0);
                put_str(&mut out, k);
            }
            KvInput::Put(k, v) => {
                out.push(1);
                put_str(&mut out, k);
                put_str(&mut out, v);
            }
            KvInput::Append(k, v) => {
                out.push(2);
                put_str(&mut out, k);
                put_str(&mut out, v);
            }
            KvInput::Cas { key, expected, new } => {
                out.push(3);
                put_str(&mut out, key);
                match expected {
                    None => out.push(0),
                    Some(e) => {
                        out.push(1);
                        put_str(&mut out, e);
                    }
                }
                put_str(&mut out, new);
            }
        }
        out
    }

    /// Decodes a payload; `None` if it is not a well-formed command.
    pub fn decode(bytes: &[u8]) -> Option<Command> {
        let mut r = Reader(bytes);
        let client = r.u64()?;
        let seq = r.u64()?;
        let op = match r.u8()? {
            0 => KvInput::Get(r.str()?),
            1 => KvInput::Put(r.str()?, r.str()?),
            2 => KvInput::Append(r.str()?, r.str()?),
            3 => {
                let key = r.str()?;
                let expected = match r.u8()? {
                    0 => None,
                    1 => Some(r.str()?),
                    _ => return None,
                };
                KvInput::Cas { key, expected, new: r.str()? }
            }
            _ => return None,
        };
        if !r.0.is_empty() {
            return None;
        }
        Some(Command { client, seq, op })
    }
}

/// The state machine each simulated node runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvStore {
    /// The data.
    pub map: BTreeMap<String, String>,
}

impl KvStore {
    /// Applies one operation and returns what the client is told.
    pub fn apply(&mut self, op: &KvInput) -> KvOutput {
        match op {
            KvInput::Get(k) => KvOutput::Value(self.map.get(k).cloned()),
            KvInput::Put(k, v) => {
                self.map.insert(k.clone(), v.clone());
                KvOutput::Ok
            }
            KvInput::Append(k, v) => {
                self.map.entry(k.clone()).or_default().push_str(v);
                KvOutput::Ok
            }
            KvInput::Cas { key, expected, new } => {
                if self.map.get(key) == expected.as_ref() {
                    self.map.insert(key.clone(), new.clone());
                    KvOutput::Swapped(true)
                } else {
                    KvOutput::Swapped(false)
                }
            }
        }
    }

    /// Serializes the whole store (the snapshot payload).
    pub fn snapshot(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(self.map.len() as u64).to_le_bytes());
        for (k, v) in &self.map {
            put_str(&mut out, k);
            put_str(&mut out, v);
        }
        out
    }

    /// Rebuilds a store from [`KvStore::snapshot`] bytes; `None` if malformed.
    pub fn restore(bytes: &[u8]) -> Option<KvStore> {
        let mut r = Reader(bytes);
        let n = r.u64()?;
        let mut map = BTreeMap::new();
        for _ in 0..n {
            let k = r.str()?;
            let v = r.str()?;
            map.insert(k, v);
        }
        if !r.0.is_empty() {
            return None;
        }
        Some(KvStore { map })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip_and_garbage_is_rejected() {
        let ops = [
            KvInput::Get("k".into()),
            KvInput::Put("k".into(), "v".into()),
            KvInput::Append("k".into(), "w".into()),
            KvInput::Cas { key: "k".into(), expected: None, new: "x".into() },
            KvInput::Cas { key: "k".into(), expected: Some("v".into()), new: "x".into() },
        ];
        for (i, op) in ops.into_iter().enumerate() {
            let c = Command { client: 7, seq: i as u64, op };
            let b = c.encode();
            assert_eq!(Command::decode(&b), Some(c));
            for cut in 0..b.len() {
                assert_eq!(Command::decode(&b[..cut]), None);
            }
        }
        assert_eq!(Command::decode(&[0xff; 40]), None);
    }

    #[test]
    fn store_applies_and_snapshots() {
        let mut s = KvStore::default();
        assert_eq!(s.apply(&KvInput::Append("a".into(), "1".into())), KvOutput::Ok);
        assert_eq!(s.apply(&KvInput::Append("a".into(), "2".into())), KvOutput::Ok);
        assert_eq!(
            s.apply(&KvInput::Cas { key: "b".into(), expected: None, new: "x".into() }),
            KvOutput::Swapped(true)
        );
        assert_eq!(s.apply(&KvInput::Get("a".into())), KvOutput::Value(Some("12".into())));
        let r = KvStore::restore(&s.snapshot()).unwrap();
        assert_eq!(r, s);
        assert_eq!(KvStore::restore(&[1, 2, 3]), None);
    }
}
