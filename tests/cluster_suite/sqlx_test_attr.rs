//! `#[sqlx::test]` with dqlite: the driver's `TestSupport` gives each test its own database in
//! the cluster named by `DATABASE_URL`, applies the migrations, and empties it afterwards.
//!
//! `DATABASE_URL` must name the cluster before sqlx's generated test runs, but the shared
//! cluster only exists once some test starts it. So the attributed functions are `#[ignore]`d
//! as stand-alone tests and run by a plain test that starts the cluster first (which sets
//! `DATABASE_URL`).

use sqlx::Executor;
use sqlx_dqlite::DqlitePool;

use crate::common;

#[sqlx::test(migrations = "tests/migrations")]
#[ignore = "needs DATABASE_URL; run through sqlx_test_attribute_on_the_shared_cluster"]
async fn with_migrations(pool: DqlitePool) -> sqlx::Result<()> {
    let (email,): (String,) = sqlx::query_as("SELECT email FROM accounts").fetch_one(&pool).await?;
    assert_eq!(email, "seed@example.com");
    sqlx::query("INSERT INTO accounts (email) VALUES (?)").bind("new@example.com").execute(&pool).await?;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM accounts").fetch_one(&pool).await?;
    assert_eq!(n, 2);
    Ok(())
}

#[sqlx::test(migrations = false)]
#[ignore = "needs DATABASE_URL; run through sqlx_test_attribute_on_the_shared_cluster"]
async fn without_migrations(pool: DqlitePool) -> sqlx::Result<()> {
    // A fresh, empty database for this test.
    let tables: i64 = sqlx::query_scalar("SELECT count(*) FROM sqlite_master").fetch_one(&pool).await?;
    assert_eq!(tables, 0);
    pool.execute("CREATE TABLE t (x INTEGER)").await?;
    Ok(())
}

#[test]
fn sqlx_test_attribute_on_the_shared_cluster() {
    drop(common::shared_cluster()); // starts it and sets DATABASE_URL
    with_migrations().unwrap();
    without_migrations().unwrap();
    // Run again: each run starts from an emptied database, so re-running passes too.
    with_migrations().unwrap();
    without_migrations().unwrap();
}
