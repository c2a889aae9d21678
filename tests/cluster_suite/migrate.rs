//! `sqlx::migrate!` on dqlite: applied once, a second run is a no-op, undo and re-apply.

use sqlx::migrate::Migrator;
use sqlx::Executor;
use sqlx_dqlite::DqlitePool;

use crate::common;

static MIGRATOR: Migrator = sqlx::migrate!("tests/migrations");

type Applied = Vec<(i64, Vec<u8>, bool, String)>;

async fn applied(pool: &DqlitePool) -> Applied {
    sqlx::query_as("SELECT version, checksum, success, installed_on FROM _sqlx_migrations ORDER BY version")
        .fetch_all(pool)
        .await
        .unwrap()
}

async fn tables(pool: &DqlitePool) -> Vec<String> {
    sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
        .fetch_all(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn migrate_twice_is_a_no_op_then_undo_and_redo() {
    let pool = common::shared_pool("migrate").await;
    let versions: Vec<i64> =
        MIGRATOR.iter().filter(|m| m.migration_type.is_up_migration()).map(|m| m.version).collect();
    assert_eq!(versions, vec![20260101000001, 20260101000002, 20260101000003]);

    MIGRATOR.run(&pool).await.unwrap();
    let first = applied(&pool).await;
    assert_eq!(first.iter().map(|m| m.0).collect::<Vec<_>>(), versions);
    assert!(first.iter().all(|m| m.2), "every migration recorded as successful: {first:?}");
    for (m, recorded) in MIGRATOR.iter().filter(|m| m.migration_type.is_up_migration()).zip(&first) {
        assert_eq!(&m.checksum[..], &recorded.1[..], "checksum of {}", m.version);
    }
    assert_eq!(tables(&pool).await, vec!["_sqlx_dqlite_migration_lock", "_sqlx_migrations", "accounts", "orders"]);
    let seed: (String, Option<String>, i64) = sqlx::query_as(
        "SELECT a.email, a.display_name, o.total_cents FROM accounts a JOIN orders o ON o.account_id = a.id",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(seed, ("seed@example.com".into(), Some("Seed".into()), 1250));

    // Second run: nothing applied, nothing rewritten (installed_on unchanged), data untouched.
    MIGRATOR.run(&pool).await.unwrap();
    assert_eq!(applied(&pool).await, first, "second run changed the migrations table");
    let accounts: i64 = sqlx::query_scalar("SELECT count(*) FROM accounts").fetch_one(&pool).await.unwrap();
    assert_eq!(accounts, 1, "second run re-ran a data migration");

    // Undo down to the first migration, then re-apply.
    MIGRATOR.undo(&pool, 20260101000001).await.unwrap();
    assert_eq!(applied(&pool).await.iter().map(|m| m.0).collect::<Vec<_>>(), vec![20260101000001]);
    assert_eq!(tables(&pool).await, vec!["_sqlx_dqlite_migration_lock", "_sqlx_migrations", "accounts"]);
    let columns: Vec<String> = sqlx::query_scalar("SELECT name FROM pragma_table_info('accounts') ORDER BY cid")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(columns, vec!["id", "email", "created_at"]);
    MIGRATOR.run(&pool).await.unwrap();
    assert_eq!(applied(&pool).await.len(), 3);
    assert_eq!(tables(&pool).await, vec!["_sqlx_dqlite_migration_lock", "_sqlx_migrations", "accounts", "orders"]);
}

#[tokio::test]
async fn migrations_on_a_single_connection() {
    let pool = common::shared_pool("migrate_conn").await;
    let mut conn = pool.acquire().await.unwrap();
    MIGRATOR.run(&mut *conn).await.unwrap();
    MIGRATOR.run(&mut *conn).await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations").fetch_one(&mut *conn).await.unwrap();
    assert_eq!(n, 3);
    // A table created outside migrations is left alone by them.
    conn.execute("CREATE TABLE unrelated (x INTEGER)").await.unwrap();
    MIGRATOR.run(&mut *conn).await.unwrap();
    let unrelated: i64 = sqlx::query_scalar("SELECT count(*) FROM sqlite_master WHERE name = 'unrelated'")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(unrelated, 1);
}
