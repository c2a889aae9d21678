//! One conformance suite, run against every backend: the io_uring one (Linux; fails loudly if
//! io_uring cannot be set up; with and without `O_DIRECT`), the portable `pwrite`+`fdatasync`
//! one and the in-memory one (with 1- and 4096-byte write alignment).
//! Each test is instantiated once per backend by `conformance!` at the bottom.

mod storage_common;

use std::io::ErrorKind;

use dqlite_node::raft::{LogIndex, NodeId, Term};
use dqlite_node::storage::backend::OpenMode;
use dqlite_node::storage::{InvalidRequest, LogOptions, SnapshotInfo, Storage, StorageError, StorageOptions};
use storage_common::*;

fn backend_file_semantics(dir: &dyn Dir) {
    let b = dir.backend();
    let mut f = b.open("a", OpenMode::CreateNew).expect("create");
    assert_eq!(b.open("a", OpenMode::CreateNew).unwrap_err().kind(), ErrorKind::AlreadyExists);
    assert_eq!(b.open("missing", OpenMode::Existing).unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(f.len().expect("len"), 0);
    f.write_at(10, b"hello").expect("write");
    assert_eq!(f.len().expect("len"), 15);
    let mut buf = [0u8; 15];
    f.read_at(0, &mut buf).expect("read");
    assert_eq!(&buf[..10], &[0u8; 10]);
    assert_eq!(&buf[10..], b"hello");
    let mut past = [0u8; 4];
    assert_eq!(f.read_at(13, &mut past).unwrap_err().kind(), ErrorKind::UnexpectedEof);

    // Group commit: aligned and unaligned writes in one call, then one sync.
    let block = vec![7u8; 8192];
    let odd = vec![9u8; 100];
    f.write_all_sync(&[(4096, &block[..4096]), (8192, &block), (20_000, &odd)]).expect("write_all_sync");
    assert_eq!(f.len().expect("len"), 20_100);
    let mut got = vec![0u8; 12_288];
    f.read_at(4096, &mut got).expect("read back");
    assert!(got.iter().all(|&x| x == 7));
    let mut got = vec![0u8; 100];
    f.read_at(20_000, &mut got).expect("read back");
    assert_eq!(got, odd);
    // The bytes before the aligned writes are untouched.
    let mut head = [0u8; 15];
    f.read_at(0, &mut head).expect("read");
    assert_eq!(&head[10..], b"hello");

    f.set_len(12).expect("set_len");
    f.sync().expect("sync");
    assert_eq!(f.len().expect("len"), 12);
    drop(f);

    let mut g = b.open("b", OpenMode::CreateNew).expect("create b");
    g.write_at(0, b"bee").expect("write b");
    g.sync().expect("sync b");
    drop(g);
    b.sync_dir().expect("sync_dir");
    assert_eq!(b.list().expect("list"), vec!["a".to_owned(), "b".to_owned()]);
    b.rename("b", "a").expect("rename replaces");
    b.sync_dir().expect("sync_dir");
    assert_eq!(b.list().expect("list"), vec!["a".to_owned()]);
    let f = b.open("a", OpenMode::Existing).expect("open");
    let mut three = [0u8; 3];
    f.read_at(0, &mut three).expect("read");
    assert_eq!(&three, b"bee");
    drop(f);
    b.remove("a").expect("remove");
    b.sync_dir().expect("sync_dir");
    assert!(b.list().expect("list").is_empty());
    assert_eq!(b.remove("a").unwrap_err().kind(), ErrorKind::NotFound);
    assert!(b.open("../escape", OpenMode::CreateNew).is_err());
}

fn lock_excludes_a_second_store(dir: &dyn Dir) {
    let s = open(dir, StorageOptions::default());
    match Storage::open(dir.backend(), StorageOptions::default()) {
        Err(StorageError::Locked { .. }) => {}
        other => panic!("second open must fail with Locked, got {other:?}"),
    }
    drop(s);
    let _again = open(dir, StorageOptions::default());
}

fn append_read_reopen(dir: &dyn Dir) {
    let mut s = open(dir, StorageOptions::default());
    assert!(s.log.is_empty());
    assert_eq!(s.log.last_index(), LogIndex(0));
    let mut next = 1u64;
    for batch in [1u64, 5, 64, 2, 1, 30] {
        s.log.append(&entries(1, next, next + batch - 1, 200 + batch as usize)).expect("append");
        next += batch;
    }
    let last = next - 1;
    assert_eq!(s.log.first_index(), LogIndex(1));
    assert_eq!(s.log.last_index(), LogIndex(last));
    let all = read_all(&s);
    assert_eq!(all.len() as u64, last);
    let mid = s.log.entries(LogIndex(4)..LogIndex(70)).expect("range");
    assert_eq!(mid, all[3..69].to_vec());
    assert_eq!(s.log.term(LogIndex(3)), Some(Term(1)));
    assert_eq!(s.log.term(LogIndex(last + 1)), None);
    assert!(matches!(s.log.entries(LogIndex(1)..LogIndex(last + 2)), Err(StorageError::OutOfRange { .. })));
    drop(s);
    let s = open(dir, StorageOptions::default());
    assert_eq!(read_all(&s), all);
}

fn conflicting_suffix_is_replaced(dir: &dyn Dir) {
    let mut s = open(dir, StorageOptions::default());
    s.log.append(&entries(1, 1, 10, 50)).expect("append");
    s.log.append(&entries(2, 6, 8, 70)).expect("append conflicting");
    assert_eq!(s.log.last_index(), LogIndex(8));
    assert_eq!(s.log.term(LogIndex(5)), Some(Term(1)));
    assert_eq!(s.log.term(LogIndex(6)), Some(Term(2)));
    let expect: Vec<_> = entries(1, 1, 5, 50).into_iter().chain(entries(2, 6, 8, 70)).collect();
    assert_eq!(read_all(&s), expect);
    // Truncate inside a batch, then append after it.
    s.log.truncate_suffix(LogIndex(7)).expect("truncate");
    assert_eq!(s.log.last_index(), LogIndex(6));
    s.log.append(&entries(3, 7, 9, 10)).expect("append");
    drop(s);
    let mut s = open(dir, StorageOptions::default());
    let expect: Vec<_> =
        entries(1, 1, 5, 50).into_iter().chain(entries(2, 6, 6, 70)).chain(entries(3, 7, 9, 10)).collect();
    assert_eq!(read_all(&s), expect);
    // Truncating everything, then starting again at 1.
    s.log.truncate_suffix(LogIndex(1)).expect("truncate all");
    assert!(s.log.is_empty());
    s.log.append(&entries(4, 1, 2, 5)).expect("append");
    drop(s);
    let s = open(dir, StorageOptions::default());
    assert_eq!(read_all(&s), entries(4, 1, 2, 5));
}

fn invalid_requests_are_refused(dir: &dyn Dir) {
    let mut s = open(dir, StorageOptions::default());
    assert!(matches!(s.log.append(&[]), Err(StorageError::Invalid(InvalidRequest::EmptyAppend))));
    s.log.append(&entries(1, 1, 3, 5)).expect("append");
    assert!(matches!(s.log.append(&entries(1, 5, 6, 5)), Err(StorageError::Invalid(InvalidRequest::Gap))));
    let mut bad = entries(1, 4, 5, 5);
    bad[1].index = LogIndex(9);
    assert!(matches!(s.log.append(&bad), Err(StorageError::Invalid(InvalidRequest::NotConsecutive))));
    assert!(matches!(s.log.append(&entries(1, 0, 0, 5)), Err(StorageError::Invalid(InvalidRequest::ZeroIndex))));
    s.log.truncate_suffix(LogIndex(10)).expect("truncate past the end is a no-op");
    assert_eq!(s.log.last_index(), LogIndex(3));
}

fn segments_roll_over_and_compact(dir: &dyn Dir) {
    let opts = small_segments();
    let mut s = open(dir, opts);
    for i in 1..=200u64 {
        s.log.append(&[entry(1, i, 300)]).expect("append");
    }
    let names = s.backend().list().expect("list");
    let closed = names.iter().filter(|n| n.starts_with("closed-")).count();
    let open_n = names.iter().filter(|n| n.starts_with("open-")).count();
    assert!(closed >= 3, "expected several closed segments, got {names:?}");
    // The segment being written, the next one prepared ahead, and a full one whose rename to
    // `closed-` is still with the preparer.
    assert!((1..=3).contains(&open_n), "{names:?}");
    s.log.compact(LogIndex(100)).expect("compact");
    let first = s.log.first_index();
    assert!(first > LogIndex(1) && first <= LogIndex(101), "first index after compact: {first}");
    let after = s.backend().list().expect("list").iter().filter(|n| n.starts_with("closed-")).count();
    assert!(after < closed);
    assert_eq!(s.log.last_index(), LogIndex(200));
    let kept = read_all(&s);
    assert_eq!(kept.first().map(|e| e.index), Some(first));
    drop(s);
    let mut s = open(dir, opts);
    assert_eq!(s.log.first_index(), first);
    assert_eq!(read_all(&s), kept);
    // Conflict across a segment boundary: replaces entries in closed segments.
    s.log.append(&entries(2, 150, 160, 300)).expect("append over closed segments");
    assert_eq!(s.log.last_index(), LogIndex(160));
    drop(s);
    let s = open(dir, opts);
    assert_eq!(s.log.last_index(), LogIndex(160));
    assert_eq!(s.log.term(LogIndex(149)), Some(Term(1)));
    assert_eq!(s.log.term(LogIndex(150)), Some(Term(2)));
    let all = read_all(&s);
    assert_eq!(all.last(), Some(&entry(2, 160, 300)));
}

fn entry_larger_than_a_segment(dir: &dyn Dir) {
    let opts = small_segments();
    let mut s = open(dir, opts);
    s.log.append(&entries(1, 1, 2, 10)).expect("append");
    let big = entry(1, 3, 100_000);
    s.log.append(std::slice::from_ref(&big)).expect("append big");
    s.log.append(&entries(1, 4, 5, 10)).expect("append");
    drop(s);
    let s = open(dir, opts);
    assert_eq!(s.log.entries(LogIndex(3)..LogIndex(4)).expect("read"), vec![big]);
    assert_eq!(s.log.last_index(), LogIndex(5));
}

fn reset_after_snapshot_install(dir: &dyn Dir) {
    let opts = small_segments();
    let mut s = open(dir, opts);
    for i in 1..=100u64 {
        s.log.append(&[entry(1, i, 300)]).expect("append");
    }
    s.log.reset(LogIndex(1001)).expect("reset");
    assert!(s.log.is_empty());
    assert_eq!(s.log.last_index(), LogIndex(1000));
    assert!(s.backend().list().expect("list").iter().all(|n| !n.starts_with("closed-")));
    s.log.append(&entries(5, 1001, 1003, 10)).expect("append after reset");
    drop(s);
    let s = open(dir, opts);
    assert_eq!(s.log.first_index(), LogIndex(1001));
    assert_eq!(read_all(&s), entries(5, 1001, 1003, 10));
}

fn metadata_alternates_and_survives_reopen(dir: &dyn Dir) {
    let mut s = open(dir, StorageOptions::default());
    assert_eq!(s.meta.load().term, Term(0));
    assert_eq!(s.meta.load().vote, None);
    for t in 1..=5u64 {
        s.meta.save(&hs(Term(t), Some(NodeId(t % 3 + 1)))).expect("save");
    }
    s.meta.save(&hs(Term(6), None)).expect("save");
    drop(s);
    let s = open(dir, StorageOptions::default());
    assert_eq!(s.meta.load(), hs(Term(6), None));
    let names = s.backend().list().expect("list");
    assert!(names.contains(&"metadata-1".to_owned()) && names.contains(&"metadata-2".to_owned()));
}

fn snapshots_newest_two_kept(dir: &dyn Dir) {
    let mut s = open(dir, StorageOptions::default());
    assert!(s.snapshots.latest().is_none());
    let mut written = Vec::new();
    for (i, size) in [(10u64, 5_000usize), (20, 0), (30, 2_500_000)] {
        let data: Vec<u8> = (0..size).map(|x| (x * 13 + i as usize) as u8).collect();
        let meta = SnapshotInfo::new(LogIndex(i), Term(2), LogIndex(1), format!("conf@{i}").into_bytes());
        let done = s.snapshots.write(meta, &mut data.as_slice()).expect("write snapshot");
        assert_eq!(done.data_len, size as u64);
        written.push((done, data));
    }
    assert_eq!(s.snapshots.list().len(), 2);
    assert_eq!(s.snapshots.latest().map(|m| m.index), Some(LogIndex(30)));
    drop(s);
    let s = open(dir, StorageOptions::default());
    let list = s.snapshots.list().to_vec();
    assert_eq!(list.iter().map(|m| m.index).collect::<Vec<_>>(), vec![LogIndex(20), LogIndex(30)]);
    for m in &list {
        let (_, data) = written.iter().find(|(w, _)| w.index == m.index).expect("written");
        assert_eq!(&s.snapshots.read(m).expect("read snapshot"), data);
        assert_eq!(m.configuration, format!("conf@{}", m.index).into_bytes());
    }
    let latest = s.snapshots.latest().expect("latest").clone();
    let mut chunk = vec![0u8; 1000];
    let n = s.snapshots.read_chunk(&latest, 2_499_500, &mut chunk).expect("chunk");
    assert_eq!(n, 500);
    let names = s.backend().list().expect("list");
    assert!(!names.iter().any(|n| n.contains("-00000000000000000010-")), "{names:?}");
}

fn snapshot_received_in_chunks(dir: &dyn Dir) {
    let mut s = open(dir, StorageOptions::default());
    let data: Vec<u8> = (0..100_000u32).map(|x| (x % 253) as u8).collect();
    let info = SnapshotInfo::new(LogIndex(50), Term(3), LogIndex(40), b"cfg".to_vec());
    // A first attempt that is abandoned and restarted at offset 0.
    s.snapshots.receive_chunk(&info, 0, &data[..1000]).expect("chunk");
    assert!(matches!(
        s.snapshots.receive_chunk(&info, 5000, &data[5000..6000]),
        Err(StorageError::Invalid(InvalidRequest::SnapshotChunkOutOfOrder))
    ));
    let mut off = 0;
    for chunk in data.chunks(30_000) {
        s.snapshots.receive_chunk(&info, off as u64, chunk).expect("chunk");
        off += chunk.len();
    }
    let done = s.snapshots.finish_receive().expect("finish");
    assert_eq!(done.data_len, data.len() as u64);
    assert_eq!(done.configuration_index, LogIndex(40));
    drop(s);
    let s = open(dir, StorageOptions::default());
    let latest = s.snapshots.latest().expect("latest").clone();
    assert_eq!(latest, done);
    assert_eq!(s.snapshots.read(&latest).expect("read"), data);
    assert!(s.backend().list().expect("list").iter().all(|n| !n.ends_with(".tmp")));
}

fn default_options_many_entries(dir: &dyn Dir) {
    let opts = StorageOptions { log: LogOptions { segment_size_bytes: 256 * 1024, ..LogOptions::default() } };
    let mut s = open(dir, opts);
    let mut next = 1;
    while next < 2000 {
        s.log.append(&entries(1, next, next + 63, 1024)).expect("append 64");
        next += 64;
    }
    let all = read_all(&s);
    drop(s);
    let s = open(dir, opts);
    assert_eq!(read_all(&s), all);
}

macro_rules! conformance {
    ($backend:ident, $mk:expr) => {
        mod $backend {
            use super::*;
            fn dir() -> Box<dyn Dir> {
                $mk
            }
            #[test]
            fn backend_file_semantics() {
                super::backend_file_semantics(&*dir());
            }
            #[test]
            fn lock_excludes_a_second_store() {
                super::lock_excludes_a_second_store(&*dir());
            }
            #[test]
            fn append_read_reopen() {
                super::append_read_reopen(&*dir());
            }
            #[test]
            fn conflicting_suffix_is_replaced() {
                super::conflicting_suffix_is_replaced(&*dir());
            }
            #[test]
            fn invalid_requests_are_refused() {
                super::invalid_requests_are_refused(&*dir());
            }
            #[test]
            fn segments_roll_over_and_compact() {
                super::segments_roll_over_and_compact(&*dir());
            }
            #[test]
            fn entry_larger_than_a_segment() {
                super::entry_larger_than_a_segment(&*dir());
            }
            #[test]
            fn reset_after_snapshot_install() {
                super::reset_after_snapshot_install(&*dir());
            }
            #[test]
            fn metadata_alternates_and_survives_reopen() {
                super::metadata_alternates_and_survives_reopen(&*dir());
            }
            #[test]
            fn snapshots_newest_two_kept() {
                super::snapshots_newest_two_kept(&*dir());
            }
            #[test]
            fn snapshot_received_in_chunks() {
                super::snapshot_received_in_chunks(&*dir());
            }
            #[test]
            fn default_options_many_entries() {
                super::default_options_many_entries(&*dir());
            }
        }
    };
}

#[cfg(target_os = "linux")]
conformance!(io_uring, Box::new(UringDir(tempdir())));
#[cfg(target_os = "linux")]
conformance!(io_uring_buffered, Box::new(UringBufferedDir(tempdir())));
conformance!(portable, Box::new(PortableDir(tempdir())));
conformance!(memory, Box::new(MemDir(dqlite_node::storage::backend::MemDisk::new())));
conformance!(memory_aligned, {
    let disk = dqlite_node::storage::backend::MemDisk::new();
    disk.set_alignment(4096);
    Box::new(MemDir(disk))
});
