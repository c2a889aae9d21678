//! The lock file keeps a second *process* out of a data directory (the conformance suite checks
//! two stores in one process).

mod storage_common;

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use dqlite_node::storage::{Storage, StorageError, StorageOptions};
use storage_common::*;

const CHILD_ENV: &str = "STORAGE_LOCK_TEST_CHILD_DIR";
const LOCKED_MARKER: &str = "STORAGE-LOCK-TEST: child holds the lock";

/// Not a test: the child process of the test below (run with `--ignored`). Holds the directory
/// until its stdin closes.
#[test]
#[ignore = "helper process for a_second_process_cannot_open_a_locked_directory"]
fn lock_holder_child() {
    let dir = std::env::var_os(CHILD_ENV).expect("run by a_second_process_cannot_open_a_locked_directory");
    let s = Storage::open_dir(&PathBuf::from(dir), StorageOptions::default()).expect("child open");
    // libtest prints "test lock_holder_child ... " first on the same line.
    println!("{LOCKED_MARKER}");
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    drop(s);
}

#[test]
fn a_second_process_cannot_open_a_locked_directory() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let tmp = tempdir();
    let exe = std::env::current_exe().expect("test binary");
    let mut child = Command::new(exe)
        .args(["--exact", "lock_holder_child", "--ignored", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, tmp.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("child stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut saw_locked = false;
    for line in lines.by_ref() {
        let line = line.expect("read child output");
        if line.contains(LOCKED_MARKER) {
            saw_locked = true;
            break;
        }
    }
    assert!(saw_locked, "child never reported holding the lock");
    match Storage::open_dir(tmp.path(), StorageOptions::default()) {
        Err(StorageError::Locked { dir }) => assert!(dir.contains(&*tmp.path().to_string_lossy())),
        other => panic!("expected Locked while another process holds the directory, got {other:?}"),
    }
    drop(child.stdin.take()); // the child sees EOF, closes its store and exits
    for line in lines {
        line.expect("read child output"); // drain, so the child's harness can finish printing
    }
    let status = child.wait().expect("child exit");
    assert!(status.success(), "child failed: {status}");
    Storage::open_dir(tmp.path(), StorageOptions::default()).expect("open after the child exited");
}
