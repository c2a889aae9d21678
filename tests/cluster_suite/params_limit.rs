//! More than 255 parameters is refused clearly on dqlite 1.11 (no schema-1 tuples) instead of
//! being truncated, dropped or misread.
//!
//! Why each count matters: dqlite 1.11 ignores the schema byte of EXEC/QUERY and reads a
//! schema-1 tuple as a schema-0 one, whose count is the low byte of the uint32. 256 or 512
//! parameters therefore run the statement with *no* parameters (all NULL) and no error; other
//! counts may bind misread values or fail with "not an error".

use sqlx::{AssertSqlSafe, Executor, Row};

use crate::common;

fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

/// Prepared statements (QUERY/EXEC) and, with the statement cache off, QUERY_SQL/EXEC_SQL.
#[tokio::test]
async fn more_than_255_parameters_is_a_clear_error_on_dqlite_1_11() {
    check_parameter_limit("params_prepared", "").await;
    check_parameter_limit("params_unprepared", "statement_cache_capacity=0").await;
}

async fn check_parameter_limit(db: &str, options: &str) {
    let url = common::shared_cluster().url_with(&common::db_name(db), options);
    let pool = common::pool_for(&url, 1).await;
    pool.execute("CREATE TABLE sink (x INTEGER)").await.unwrap();

    // 255 is the most a schema-0 tuple carries: it works.
    let mut q = sqlx::query(AssertSqlSafe(format!("SELECT {}", placeholders(255))));
    for i in 0..255_i64 {
        q = q.bind(i);
    }
    let row = q.fetch_one(&pool).await.unwrap();
    assert_eq!(row.len(), 255);
    assert_eq!(row.get::<i64, _>(254), 254);

    for n in [256_usize, 300, 512] {
        // A read: refused, not answered with NULLs.
        let mut q = sqlx::query(AssertSqlSafe(format!("SELECT {}", placeholders(n))));
        for i in 0..n as i64 {
            q = q.bind(i);
        }
        let err = q
            .fetch_all(&pool)
            .await
            .expect_err(&format!("SELECT with {n} parameters must fail on 1.11"));
        assert_too_many(&err, n);

        // A write: refused, and nothing written.
        let rows = vec!["(?)"; n].join(", ");
        let sql = format!("INSERT INTO sink (x) VALUES {rows}");
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for i in 0..n as i64 {
            q = q.bind(i + 1);
        }
        let err = q
            .execute(&pool)
            .await
            .expect_err(&format!("INSERT with {n} parameters must fail on 1.11"));
        assert_too_many(&err, n);
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM sink")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(rows, 0, "a refused {n}-parameter INSERT wrote a row");
    }

    // The (only) connection is still usable.
    let one: i64 = sqlx::query_scalar("SELECT ?")
        .bind(1_i64)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(one, 1);
}

fn assert_too_many(err: &sqlx::Error, n: usize) {
    let text = err.to_string();
    assert!(
        text.contains("255"),
        "{n} parameters: the error must name the limit: {text}"
    );
    let reason = sqlx_dqlite::dqlite_error(err).map(|e| e.reason());
    assert!(
        matches!(
            reason,
            Some(sqlx_dqlite::DqliteErrorReason::TooManyParameters)
        ),
        "{n} parameters: {err:?}"
    );
}
