//! The in-memory copy of one connection's uncommitted WAL writes (safe code).
//!
//! Pieces are keyed by file offset. A write replaces whatever bytes it covers (older pieces are
//! trimmed or split), so reads see the last write of every byte, as the file would.

use std::collections::BTreeMap;

/// Buffered WAL writes of one write transaction.
#[derive(Debug, Default)]
pub(crate) struct WalBuffer {
    pieces: BTreeMap<u64, Vec<u8>>,
    /// The largest piece length ever inserted (bounds the backwards search of `overlay`).
    max_len: u64,
}

impl WalBuffer {
    pub(crate) fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    pub(crate) fn clear(&mut self) {
        self.pieces.clear();
        self.max_len = 0;
    }

    /// One past the last buffered byte (0 when empty).
    pub(crate) fn end(&self) -> u64 {
        self.pieces.iter().next_back().map_or(0, |(off, p)| off + p.len() as u64)
    }

    /// Records a write of `data` at `off`.
    pub(crate) fn write(&mut self, off: u64, data: &[u8]) {
        let end = off + data.len() as u64;
        // Pieces that may overlap [off, end).
        let start_key = off.saturating_sub(self.max_len);
        let overlapping: Vec<u64> = self.pieces.range(start_key..end).map(|(k, _)| *k).collect();
        for k in overlapping {
            let Some(piece) = self.pieces.remove(&k) else { continue };
            let p_end = k + piece.len() as u64;
            if p_end <= off || k >= end {
                self.pieces.insert(k, piece);
                continue;
            }
            if k < off {
                self.pieces.insert(k, piece[..(off - k) as usize].to_vec());
            }
            if p_end > end {
                self.pieces.insert(end, piece[(end - k) as usize..].to_vec());
            }
        }
        self.pieces.insert(off, data.to_vec());
        self.max_len = self.max_len.max(data.len() as u64);
    }

    /// Copies the buffered bytes intersecting `[off, off + out.len())` over `out`; returns the
    /// end (absolute offset) of the furthest byte it covered, or 0 if none.
    pub(crate) fn overlay(&self, off: u64, out: &mut [u8]) -> u64 {
        let end = off + out.len() as u64;
        let mut covered = 0;
        for (&k, piece) in self.pieces.range(off.saturating_sub(self.max_len)..end) {
            let p_end = k + piece.len() as u64;
            if p_end <= off {
                continue;
            }
            let from = k.max(off);
            let to = p_end.min(end);
            out[(from - off) as usize..(to - off) as usize]
                .copy_from_slice(&piece[(from - k) as usize..(to - k) as usize]);
            covered = covered.max(to);
        }
        covered
    }

    /// The buffered pieces in offset order.
    pub(crate) fn pieces(&self) -> impl Iterator<Item = (u64, &[u8])> {
        self.pieces.iter().map(|(k, v)| (*k, v.as_slice()))
    }

    /// The buffered bytes before `end`, merged into runs of adjacent pieces of at most
    /// `max_run` bytes each (a run ends at a gap), in offset order: what a write-through
    /// writes with one system call per run instead of one per piece (SQLite writes each
    /// frame as two pieces, its header and its page).
    pub(crate) fn runs(&self, end: u64, max_run: usize) -> Vec<(u64, Vec<u8>)> {
        let mut runs: Vec<(u64, Vec<u8>)> = Vec::new();
        for (&off, piece) in self.pieces.range(..end) {
            let piece = &piece[..(piece.len() as u64).min(end - off) as usize];
            let mut rest = piece;
            let mut at = off;
            while !rest.is_empty() {
                let extend = runs.last().is_some_and(|(o, r)| o + r.len() as u64 == at && r.len() < max_run);
                if !extend {
                    runs.push((at, Vec::with_capacity(rest.len().min(max_run))));
                }
                let Some((_, run)) = runs.last_mut() else { break };
                let take = (max_run - run.len()).min(rest.len());
                run.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
                at += take as u64;
            }
        }
        runs
    }

    /// Total buffered bytes.
    #[cfg(test)]
    pub(crate) fn len_bytes(&self) -> usize {
        self.pieces.values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_write_wins_and_splits() {
        let mut b = WalBuffer::default();
        b.write(10, &[1; 10]);
        b.write(14, &[2; 2]);
        let mut out = [0u8; 12];
        assert_eq!(b.overlay(9, &mut out), 20);
        assert_eq!(out, [0, 1, 1, 1, 1, 2, 2, 1, 1, 1, 1, 0]);
        b.write(5, &[3; 8]);
        let mut out = [9u8; 16];
        b.overlay(4, &mut out);
        assert_eq!(out, [9, 3, 3, 3, 3, 3, 3, 3, 3, 1, 2, 2, 1, 1, 1, 1]);
        assert_eq!(b.end(), 20);
        assert_eq!(b.len_bytes(), 15);
    }

    #[test]
    fn runs_merge_adjacent_pieces_split_at_gaps_and_at_the_bound() {
        let mut b = WalBuffer::default();
        b.write(0, &[1; 4]);
        b.write(4, &[2; 6]);
        b.write(10, &[3; 3]);
        b.write(20, &[4; 5]);
        b.write(30, &[5; 2]);
        // Everything before 32, at most 8 bytes a run.
        let runs = b.runs(32, 8);
        let want: Vec<(u64, Vec<u8>)> =
            vec![(0, vec![1, 1, 1, 1, 2, 2, 2, 2]), (8, vec![2, 2, 3, 3, 3]), (20, vec![4; 5]), (30, vec![5; 2])];
        assert_eq!(runs, want);
        // `end` cuts the piece it falls in and drops the later ones.
        assert_eq!(b.runs(22, 64), vec![(0, [vec![1; 4], vec![2; 6], vec![3; 3]].concat()), (20, vec![4, 4])]);
        // The runs hold exactly the bytes `overlay` sees.
        let mut out = [0u8; 32];
        b.overlay(0, &mut out);
        for (off, run) in b.runs(32, 3) {
            assert_eq!(&out[off as usize..off as usize + run.len()], &run[..]);
        }
        assert!(WalBuffer::default().runs(100, 8).is_empty());
    }
}
