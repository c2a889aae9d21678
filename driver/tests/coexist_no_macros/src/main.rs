//! Both drivers in one program without sqlx's `macros` feature: this must compile.

use sqlx::{Connection, Executor};

async fn both(sqlite_url: &str, dqlite_url: &str) -> Result<(), sqlx::Error> {
    let mut lite = sqlx::SqliteConnection::connect(sqlite_url).await?;
    lite.execute("SELECT 1").await?;
    let pool = sqlx_dqlite::DqlitePool::connect(dqlite_url).await?;
    let n: i64 = sqlx::query_scalar("SELECT ?").bind(1_i64).fetch_one(&pool).await?;
    assert_eq!(n, 1);
    Ok(())
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let args: Vec<String> = std::env::args().collect();
    if let [_, sqlite, dqlite] = args.as_slice() {
        rt.block_on(both(sqlite, dqlite)).expect("both drivers");
    }
}
