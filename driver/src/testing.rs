//! `TestSupport`, so `#[sqlx::test]` works with dqlite.
//!
//! The cluster comes from the `DATABASE_URL` environment variable (a `dqlite://` URL); each
//! test gets its own database named after the test (sqlx's hashed `_sqlx_test_…` name), which
//! is emptied before the test and after it passes (dqlite cannot delete databases; see
//! [`MigrateDatabase`](sqlx_core::migrate::MigrateDatabase) for dqlite).
//! Fixture snapshots are not supported.

use sqlx_core::connection::Connection;
use sqlx_core::pool::PoolOptions;
use sqlx_core::testing::{FixtureSnapshot, TestArgs, TestContext, TestSupport};
use sqlx_core::Error;

use crate::{Dqlite, DqliteConnectOptions, DqliteConnection};

fn base_options() -> Result<DqliteConnectOptions, Error> {
    let url = std::env::var("DATABASE_URL")
        .map_err(|_| Error::Configuration("DATABASE_URL must be set to a dqlite:// URL for #[sqlx::test]".into()))?;
    url.parse()
}

async fn empty_database(opts: &DqliteConnectOptions) -> Result<(), Error> {
    let mut conn = DqliteConnection::connect_with(opts).await?;
    conn.drop_all_objects().await?;
    conn.close().await
}

impl TestSupport for Dqlite {
    async fn test_context(args: &TestArgs) -> Result<TestContext<Self>, Error> {
        let db_name = Self::db_name(args);
        let connect_opts = base_options()?.database(db_name.clone());
        empty_database(&connect_opts).await?;
        Ok(TestContext { pool_opts: PoolOptions::new().max_connections(4), connect_opts, db_name })
    }

    async fn cleanup_test(db_name: &str) -> Result<(), Error> {
        let opts = base_options()?.database(db_name);
        empty_database(&opts).await
    }

    async fn cleanup_test_dbs() -> Result<Option<usize>, Error> {
        // dqlite cannot list databases; each test empties its own.
        Ok(None)
    }

    async fn snapshot(_conn: &mut DqliteConnection) -> Result<FixtureSnapshot<Self>, Error> {
        Err(Error::Configuration("fixture snapshots are not supported by sqlx-dqlite".into()))
    }
}
