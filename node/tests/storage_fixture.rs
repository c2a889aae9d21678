//! Reads a data directory written by format version 1 (committed under
//! `node/tests/fixtures/storage-v1/`), with every file backend.
//!
//! The fixture was produced by `write_v1_fixture` below; to regenerate it (only when a new
//! format version is introduced, keeping the old directory for this test):
//! `STORAGE_WRITE_FIXTURE=1 cargo test -p dqlite-node --test storage_fixture`.

mod storage_common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use dqlite_node::raft::{LogIndex, NodeId, Term};
use dqlite_node::storage::backend::{Backend, PortableBackend};
use dqlite_node::storage::{format, LogOptions, SnapshotInfo, Storage, StorageOptions};
use storage_common::*;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/storage-v1")
}

fn opts() -> StorageOptions {
    StorageOptions { log: LogOptions { segment_size_bytes: 8192, background_preallocation: false } }
}

fn snapshot_data() -> Vec<u8> {
    (0..3000u32).map(|i| (i % 251) as u8).collect()
}

/// The log the fixture holds: 1..=12 term 1, then 9..=20 term 2 (a conflicting suffix replaced).
fn expected_log() -> Vec<dqlite_node::raft::Entry> {
    entries(1, 1, 8, 700).into_iter().chain(entries(2, 9, 20, 700)).collect()
}

/// Writes the v1 fixture into `dir` (deterministic: same bytes every time).
fn write_v1_fixture(dir: &Path) {
    let backend: Arc<dyn Backend> = Arc::new(PortableBackend::new(dir).expect("backend"));
    let mut s = Storage::open(backend, opts()).expect("open");
    s.meta.save(&hs(Term(1), Some(NodeId(1)))).expect("save");
    for i in 1..=12 {
        s.log.append(&entries(1, i, i, 700)).expect("append");
    }
    s.meta.save(&hs(Term(2), Some(NodeId(2)))).expect("save");
    s.log.append(&entries(2, 9, 14, 700)).expect("conflicting append");
    s.log.append(&entries(2, 15, 20, 700)).expect("append");
    let data = snapshot_data();
    s.snapshots
        .write(SnapshotInfo::new(LogIndex(6), Term(1), LogIndex(1), b"voters:1,2,3".to_vec()), &mut data.as_slice())
        .expect("snapshot");
    s.log.compact(LogIndex(6)).expect("compact");
    drop(s);
    let _ = std::fs::remove_file(dir.join("LOCK"));
}

fn copy_dir(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).expect("read fixture dir") {
        let e = e.expect("entry");
        std::fs::copy(e.path(), to.join(e.file_name())).expect("copy fixture file");
    }
}

#[test]
fn reads_a_format_v1_data_directory() {
    let src = fixture_dir();
    if std::env::var_os("STORAGE_WRITE_FIXTURE").is_some() {
        let _ = std::fs::remove_dir_all(&src);
        std::fs::create_dir_all(&src).expect("create fixture dir");
        write_v1_fixture(&src);
        eprintln!("wrote fixture to {}", src.display());
    }
    let names: Vec<String> = {
        let mut v: Vec<String> = std::fs::read_dir(&src)
            .expect("fixture directory node/tests/fixtures/storage-v1 must be committed")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert!(names.iter().any(|n| n.starts_with("closed-")), "{names:?}");
    assert!(names.iter().any(|n| n.starts_with("open-")), "{names:?}");
    // The segment header says format version 1.
    let seg = names.iter().find(|n| n.starts_with("open-")).expect("open segment");
    let bytes = std::fs::read(src.join(seg)).expect("read segment");
    assert_eq!(&bytes[0..8], b"DQRSLOG\0");
    assert_eq!(u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]), 1);
    assert_eq!(format::FORMAT_VERSION, 1, "a new version must keep reading v1 (this test)");

    let mut copies: Vec<Box<dyn Dir>> = Vec::new();
    let tmp = tempdir();
    copy_dir(&src, tmp.path());
    copies.push(Box::new(PortableDir(tmp)));
    #[cfg(target_os = "linux")]
    {
        let tmp = tempdir();
        copy_dir(&src, tmp.path());
        copies.push(Box::new(UringDir(tmp)));
    }
    for d in copies {
        let s = open(&*d, opts());
        assert_eq!(s.meta.load(), hs(Term(2), Some(NodeId(2))), "{}", d.kind());
        assert_eq!(s.log.last_index(), LogIndex(20));
        let first = s.log.first_index();
        assert!(first <= LogIndex(7), "entries above the snapshot must remain, first = {first}");
        let want: Vec<_> = expected_log().into_iter().filter(|e| e.index >= first).collect();
        assert_eq!(read_all(&s), want);
        let snap = s.snapshots.latest().expect("snapshot").clone();
        assert_eq!((snap.index, snap.term), (LogIndex(6), Term(1)));
        assert_eq!(snap.configuration, b"voters:1,2,3".to_vec());
        assert_eq!(snap.configuration_index, LogIndex(1));
        assert_eq!(s.snapshots.read(&snap).expect("snapshot data"), snapshot_data());
    }
    this_build_still_writes_the_v1_bytes();
}

/// Part of the test above (one test, so regenerating the fixture cannot race the comparison).
fn this_build_still_writes_the_v1_bytes() {
    // Writing the same history again gives byte-identical files: the encoder has not drifted
    // from the committed format.
    let tmp = tempdir();
    write_v1_fixture(tmp.path());
    let src = fixture_dir();
    for e in std::fs::read_dir(&src).expect("fixture dir") {
        let name = e.expect("entry").file_name();
        let want = std::fs::read(src.join(&name)).expect("fixture file");
        let got = std::fs::read(tmp.path().join(&name)).expect("regenerated file");
        assert!(want == got, "{name:?} differs from the committed v1 fixture");
    }
}
