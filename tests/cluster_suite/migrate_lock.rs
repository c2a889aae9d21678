//! The cluster-wide migration lock: four application instances (four pools) running
//! `sqlx::migrate!().run(&pool)` at once on a fresh database all succeed and each migration
//! is applied exactly once; the lock is released on success, on failure and when the
//! migrating future is dropped.

use std::time::{Duration, Instant};

use sqlx::migrate::Migrator;
use sqlx_dqlite::DqlitePool;

use crate::common;

static MIGRATOR: Migrator = sqlx::migrate!("tests/migrations_concurrent");

async fn lock_rows(pool: &DqlitePool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM _sqlx_dqlite_migration_lock").fetch_one(pool).await.unwrap()
}

/// Waits (bounded) until no instance holds the migration lock.
async fn wait_unlocked(pool: &DqlitePool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while lock_rows(pool).await != 0 {
        assert!(Instant::now() < deadline, "{what}: migration lock still held");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn four_instances_migrate_at_once_and_each_migration_runs_once() {
    let url = common::shared_url("migrate_lock_four");
    let mut pools = Vec::new();
    for _ in 0..4 {
        pools.push(common::pool_for(&url, 2).await);
    }
    let runs = pools.iter().map(|pool| async move { MIGRATOR.run(pool).await });
    let results = futures_util::future::join_all(runs).await;
    for (i, r) in results.iter().enumerate() {
        assert!(r.is_ok(), "instance {i}: {r:?}");
    }
    let pool = &pools[0];
    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM applied_once ORDER BY rowid").fetch_all(pool).await.unwrap();
    assert_eq!(versions, [1, 2, 3], "each migration applied exactly once");
    let recorded: Vec<(i64, bool)> =
        sqlx::query_as("SELECT version, success FROM _sqlx_migrations ORDER BY version").fetch_all(pool).await.unwrap();
    assert_eq!(recorded, [(20260201000001, true), (20260201000002, true), (20260201000003, true)]);
    let user_version: i64 = sqlx::query_scalar("PRAGMA user_version").fetch_one(pool).await.unwrap();
    assert_eq!(user_version, 7, "the no-transaction migration returning rows ran");
    let audit: Vec<String> = sqlx::query_scalar("SELECT msg FROM audit").fetch_all(pool).await.unwrap();
    assert_eq!(audit, ["version; 3"]);
    assert_eq!(lock_rows(pool).await, 0, "released on success");
    // A later start is a no-op for every instance.
    for pool in &pools {
        MIGRATOR.run(pool).await.unwrap();
    }
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM applied_once").fetch_one(pool).await.unwrap();
    assert_eq!(n, 3);
}

fn migrations_dir(name: &str, files: &[(&str, &str)]) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("dqlite-migrate-lock-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for (file, sql) in files {
        std::fs::write(dir.join(file), sql).unwrap();
    }
    dir
}

#[tokio::test]
async fn the_lock_is_released_when_a_migration_fails() {
    let url = common::shared_url("migrate_lock_fail");
    let pool = common::pool_for(&url, 1).await;
    let dir = migrations_dir(
        "fail",
        &[("1_ok.sql", "CREATE TABLE ok (a);"), ("2_bad.sql", "INSERT INTO no_such_table VALUES (1);")],
    );
    let bad = Migrator::new(dir.as_path()).await.unwrap();
    let err = bad.run(&pool).await.unwrap_err();
    assert!(err.to_string().contains("no_such_table"), "{err}");
    assert_eq!(lock_rows(&pool).await, 0, "released on failure");
    // Another instance takes the lock at once (not after the lease) and gets the same error.
    let other = common::pool_for(&url, 1).await;
    let started = Instant::now();
    assert!(bad.run(&other).await.is_err());
    assert!(started.elapsed() < Duration::from_secs(10), "waited for a stale lock");
    // A version mismatch returns from sqlx's migrator without unlock(): released as well
    // (on the connection's next use / return to the pool).
    let changed =
        Migrator::new(migrations_dir("changed", &[("1_ok.sql", "CREATE TABLE ok (b);")]).as_path()).await.unwrap();
    let err = changed.run(&pool).await.unwrap_err();
    assert!(matches!(err, sqlx::migrate::MigrateError::VersionMismatch(1)), "{err}");
    wait_unlocked(&other, "after a version mismatch").await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn the_lock_is_released_when_the_migrator_is_dropped() {
    let url = common::shared_url("migrate_lock_drop");
    let pool = common::pool_for(&url, 1).await;
    let watcher = common::pool_for(&url, 1).await;
    let dir = migrations_dir(
        "drop",
        &[(
            "1_slow.sql",
            "CREATE TABLE slow AS WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 300000) \
             SELECT x FROM c;",
        )],
    );
    let migrator = Migrator::new(dir.as_path()).await.unwrap();
    {
        let run = migrator.run(&pool);
        tokio::pin!(run);
        // Drive the migration until the lock row is visible to another connection, then drop it.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            tokio::select! {
                r = &mut run => panic!("migration finished before it could be dropped: {r:?}"),
                _ = tokio::time::sleep(Duration::from_millis(2)) => {}
            }
            let held: Option<i64> = sqlx::query_scalar("SELECT count(*) FROM _sqlx_dqlite_migration_lock")
                .fetch_optional(&watcher)
                .await
                .unwrap_or(None);
            if held == Some(1) {
                break;
            }
            assert!(Instant::now() < deadline, "the migrator never took the lock");
        }
    }
    wait_unlocked(&watcher, "after dropping the migrator").await;
    // The next run takes the lock at once and applies the migration.
    migrator.run(&pool).await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM slow").fetch_one(&pool).await.unwrap();
    assert_eq!(n, 300000);
    let _ = std::fs::remove_dir_all(dir);
}
