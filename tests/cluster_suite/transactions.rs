//! Transactions through `pool.begin()`: commit, rollback, rollback on drop, isolation, and
//! nested savepoints.

use sqlx::{Acquire, Connection, Executor};
use sqlx_dqlite::DqlitePool;

use crate::common;

async fn setup(db: &str) -> DqlitePool {
    let pool = common::shared_pool(db).await;
    pool.execute("CREATE TABLE items (name TEXT PRIMARY KEY)").await.unwrap();
    pool
}

async fn names(pool: &DqlitePool) -> Vec<String> {
    sqlx::query_scalar("SELECT name FROM items ORDER BY name").fetch_all(pool).await.unwrap()
}

#[tokio::test]
async fn committed_transaction_is_visible() {
    let pool = setup("tx_commit").await;
    let mut tx = pool.begin().await.unwrap();
    for name in ["a", "b"] {
        sqlx::query("INSERT INTO items (name) VALUES (?)").bind(name).execute(&mut *tx).await.unwrap();
    }
    // Inside the transaction its own writes are visible...
    let inside: i64 = sqlx::query_scalar("SELECT count(*) FROM items").fetch_one(&mut *tx).await.unwrap();
    assert_eq!(inside, 2);
    // ...but not to another connection until commit.
    let mut other = pool.acquire().await.unwrap();
    let outside: i64 = sqlx::query_scalar("SELECT count(*) FROM items").fetch_one(&mut *other).await.unwrap();
    assert_eq!(outside, 0, "uncommitted rows leaked to another connection");
    tx.commit().await.unwrap();
    let after: i64 = sqlx::query_scalar("SELECT count(*) FROM items").fetch_one(&mut *other).await.unwrap();
    assert_eq!(after, 2);
    drop(other);
    assert_eq!(names(&pool).await, vec!["a", "b"]);
}

#[tokio::test]
async fn rolled_back_transaction_leaves_nothing() {
    let pool = setup("tx_rollback").await;
    sqlx::query("INSERT INTO items (name) VALUES ('kept')").execute(&pool).await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO items (name) VALUES (?)").bind("discarded").execute(&mut *tx).await.unwrap();
    sqlx::query("DELETE FROM items WHERE name = ?").bind("kept").execute(&mut *tx).await.unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(names(&pool).await, vec!["kept"]);
}

#[tokio::test]
async fn dropped_transaction_is_rolled_back() {
    let pool = setup("tx_drop").await;
    {
        let mut tx = pool.begin().await.unwrap();
        sqlx::query("INSERT INTO items (name) VALUES ('ghost')").execute(&mut *tx).await.unwrap();
        // dropped without commit
    }
    assert!(names(&pool).await.is_empty());
    // The connection that carried the dropped transaction is usable again (pool of 4, so run
    // enough transactions to reuse it).
    for i in 0..8 {
        let mut tx = pool.begin().await.unwrap();
        sqlx::query("INSERT INTO items (name) VALUES (?)").bind(format!("n{i}")).execute(&mut *tx).await.unwrap();
        tx.commit().await.unwrap();
    }
    assert_eq!(names(&pool).await.len(), 8);
}

#[tokio::test]
async fn transaction_on_a_single_connection() {
    let pool = setup("tx_conn").await;
    let mut conn = pool.acquire().await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    sqlx::query("INSERT INTO items (name) VALUES ('x')").execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
    // `Connection::transaction` commits on Ok and rolls back on Err.
    conn.transaction(|tx| {
        Box::pin(async move { sqlx::query("INSERT INTO items (name) VALUES ('y')").execute(&mut **tx).await })
    })
    .await
    .unwrap();
    let failed: Result<(), sqlx::Error> = conn
        .transaction(|tx| {
            Box::pin(async move {
                sqlx::query("INSERT INTO items (name) VALUES ('z')").execute(&mut **tx).await?;
                Err(sqlx::Error::Protocol("application gave up".into()))
            })
        })
        .await;
    assert!(failed.is_err());
    drop(conn);
    assert_eq!(names(&pool).await, vec!["x", "y"]);
}

#[tokio::test]
async fn nested_savepoints() {
    let pool = setup("tx_savepoints").await;
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO items (name) VALUES ('outer')").execute(&mut *tx).await.unwrap();

    // Level 2, rolled back: its row disappears, the outer one stays.
    {
        let mut sp = tx.begin().await.unwrap();
        sqlx::query("INSERT INTO items (name) VALUES ('sp1-rolled-back')").execute(&mut *sp).await.unwrap();
        sp.rollback().await.unwrap();
    }
    // Level 2, committed, containing level 3 rolled back by drop and level 3 committed.
    {
        let mut sp = tx.begin().await.unwrap();
        sqlx::query("INSERT INTO items (name) VALUES ('sp2')").execute(&mut *sp).await.unwrap();
        {
            let mut inner = sp.begin().await.unwrap();
            sqlx::query("INSERT INTO items (name) VALUES ('sp2-inner-dropped')").execute(&mut *inner).await.unwrap();
        }
        {
            let mut inner = sp.begin().await.unwrap();
            sqlx::query("INSERT INTO items (name) VALUES ('sp2-inner')").execute(&mut *inner).await.unwrap();
            inner.commit().await.unwrap();
        }
        sp.commit().await.unwrap();
    }
    let inside: Vec<String> =
        sqlx::query_scalar("SELECT name FROM items ORDER BY name").fetch_all(&mut *tx).await.unwrap();
    assert_eq!(inside, vec!["outer", "sp2", "sp2-inner"]);
    assert!(names(&pool).await.is_empty(), "savepoint release must not commit the outer transaction");
    tx.commit().await.unwrap();
    assert_eq!(names(&pool).await, vec!["outer", "sp2", "sp2-inner"]);

    // Rolling back the outer transaction discards committed savepoints too.
    let mut tx = pool.begin().await.unwrap();
    {
        let mut sp = tx.begin().await.unwrap();
        sqlx::query("INSERT INTO items (name) VALUES ('lost-with-outer')").execute(&mut *sp).await.unwrap();
        sp.commit().await.unwrap();
    }
    tx.rollback().await.unwrap();
    assert_eq!(names(&pool).await, vec!["outer", "sp2", "sp2-inner"]);
}

#[tokio::test]
async fn failed_statement_inside_transaction_keeps_it_usable() {
    let pool = setup("tx_error").await;
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO items (name) VALUES ('one')").execute(&mut *tx).await.unwrap();
    let dup = sqlx::query("INSERT INTO items (name) VALUES ('one')").execute(&mut *tx).await;
    assert!(dup.is_err(), "duplicate primary key must fail");
    sqlx::query("INSERT INTO items (name) VALUES ('two')").execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(names(&pool).await, vec!["one", "two"]);
}
