//! More than 255 parameters is refused clearly on dqlite 1.11 (no schema-1 tuples) instead of
//! being truncated, dropped or misread; on our own node (which reads schema-1 tuples, as dqlite
//! >= 1.15 does) the same statements run with every parameter bound.
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
    let (url, launcher) = {
        let cluster = common::shared_cluster();
        (cluster.url_with(&common::db_name(db), options), cluster.launcher())
    };
    // Only C dqlite 1.11 lacks schema-1 (params32) tuples; our node has them.
    let params32 = launcher != "real";
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
        if params32 {
            check_all_bound(&pool, n).await;
            continue;
        }
        // A read: refused, not answered with NULLs.
        let mut q = sqlx::query(AssertSqlSafe(format!("SELECT {}", placeholders(n))));
        for i in 0..n as i64 {
            q = q.bind(i);
        }
        let err = q.fetch_all(&pool).await.expect_err(&format!("SELECT with {n} parameters must fail on 1.11"));
        assert_too_many(&err, n);

        // A write: refused, and nothing written.
        let rows = vec!["(?)"; n].join(", ");
        let sql = format!("INSERT INTO sink (x) VALUES {rows}");
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for i in 0..n as i64 {
            q = q.bind(i + 1);
        }
        let err = q.execute(&pool).await.expect_err(&format!("INSERT with {n} parameters must fail on 1.11"));
        assert_too_many(&err, n);
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM sink").fetch_one(&pool).await.unwrap();
        assert_eq!(rows, 0, "a refused {n}-parameter INSERT wrote a row");
    }

    // The (only) connection is still usable.
    let one: i64 = sqlx::query_scalar("SELECT ?").bind(1_i64).fetch_one(&pool).await.unwrap();
    assert_eq!(one, 1);
}

/// On a server with schema-1 tuples: every one of `n` parameters is bound, for a read and a write.
async fn check_all_bound(pool: &sqlx_dqlite::DqlitePool, n: usize) {
    let mut q = sqlx::query(AssertSqlSafe(format!("SELECT {}", placeholders(n))));
    for i in 0..n as i64 {
        q = q.bind(i);
    }
    let row = q.fetch_one(pool).await.unwrap();
    assert_eq!(row.len(), n);
    for i in 0..n {
        assert_eq!(row.get::<i64, _>(i), i as i64, "parameter {i} of {n}");
    }
    let before: i64 = sqlx::query_scalar("SELECT count(*) FROM sink").fetch_one(pool).await.unwrap();
    let sql = format!("INSERT INTO sink (x) VALUES {}", vec!["(?)"; n].join(", "));
    let mut q = sqlx::query(AssertSqlSafe(sql));
    for i in 0..n as i64 {
        q = q.bind(i + 1);
    }
    assert_eq!(q.execute(pool).await.unwrap().rows_affected(), n as u64);
    let (count, sum): (i64, i64) =
        sqlx::query_as("SELECT count(*), coalesce(sum(x), 0) FROM sink").fetch_one(pool).await.unwrap();
    assert_eq!(count - before, n as i64);
    assert!(sum >= (n * (n + 1) / 2) as i64, "every inserted value bound: sum {sum}");
}

fn assert_too_many(err: &sqlx::Error, n: usize) {
    let text = err.to_string();
    assert!(text.contains("255"), "{n} parameters: the error must name the limit: {text}");
    let reason = sqlx_dqlite::dqlite_error(err).map(|e| e.reason());
    assert!(matches!(reason, Some(sqlx_dqlite::DqliteErrorReason::TooManyParameters)), "{n} parameters: {err:?}");
}
