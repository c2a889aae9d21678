//! CRUD through `sqlx::query`, `query_as`, `query_scalar` and `#[derive(FromRow)]`.

use sqlx::{Executor, Row};

use crate::common;

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
struct User {
    id: i64,
    name: String,
    email: Option<String>,
    age: i32,
}

#[tokio::test]
async fn create_read_update_delete() {
    let pool = common::shared_pool("crud").await;
    pool.execute(
        "CREATE TABLE users (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT NOT NULL,
            email TEXT,
            age INTEGER NOT NULL
        )",
    )
    .await
    .unwrap();

    // Create: every insert reports one row and a growing rowid.
    let mut ids = Vec::new();
    for (name, email, age) in
        [("ada", Some("ada@example.com"), 36), ("bob", None, 41), ("cy", Some("cy@example.com"), 29)]
    {
        let done = sqlx::query("INSERT INTO users (name, email, age) VALUES (?, ?, ?)")
            .bind(name)
            .bind(email)
            .bind(age)
            .execute(&pool)
            .await
            .unwrap();
        assert_eq!(done.rows_affected(), 1);
        ids.push(done.last_insert_rowid());
    }
    assert_eq!(ids, vec![1, 2, 3]);

    // Read through FromRow.
    let users: Vec<User> =
        sqlx::query_as("SELECT id, name, email, age FROM users ORDER BY id").fetch_all(&pool).await.unwrap();
    assert_eq!(
        users,
        vec![
            User { id: 1, name: "ada".into(), email: Some("ada@example.com".into()), age: 36 },
            User { id: 2, name: "bob".into(), email: None, age: 41 },
            User { id: 3, name: "cy".into(), email: Some("cy@example.com".into()), age: 29 },
        ]
    );

    // Read through tuples, query_scalar, Row::get by name and by index.
    let (name, age): (String, i64) =
        sqlx::query_as("SELECT name, age FROM users WHERE id = ?").bind(2_i64).fetch_one(&pool).await.unwrap();
    assert_eq!((name.as_str(), age), ("bob", 41));
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM users").fetch_one(&pool).await.unwrap();
    assert_eq!(count, 3);
    let row = sqlx::query("SELECT name, email FROM users WHERE id = ?").bind(3_i64).fetch_one(&pool).await.unwrap();
    assert_eq!(row.get::<String, _>("name"), "cy");
    assert_eq!(row.get::<Option<String>, _>(1).as_deref(), Some("cy@example.com"));
    assert_eq!(row.len(), 2);
    let missing = sqlx::query_as::<_, User>("SELECT id, name, email, age FROM users WHERE id = ?")
        .bind(99_i64)
        .fetch_optional(&pool)
        .await
        .unwrap();
    assert_eq!(missing, None);

    // Update.
    let done = sqlx::query("UPDATE users SET age = age + 1 WHERE age > ?").bind(30).execute(&pool).await.unwrap();
    assert_eq!(done.rows_affected(), 2);
    let ages: Vec<i32> = sqlx::query_scalar("SELECT age FROM users ORDER BY id").fetch_all(&pool).await.unwrap();
    assert_eq!(ages, vec![37, 42, 29]);

    // Delete.
    let done = sqlx::query("DELETE FROM users WHERE email IS NULL").execute(&pool).await.unwrap();
    assert_eq!(done.rows_affected(), 1);
    let names: Vec<String> = sqlx::query_scalar("SELECT name FROM users ORDER BY id").fetch_all(&pool).await.unwrap();
    assert_eq!(names, vec!["ada", "cy"]);
}

#[tokio::test]
async fn statements_are_reused_from_the_cache_and_without_it() {
    // The same parameterized statement many times (prepared once, cached), then the same work
    // with the statement cache disabled (EXEC_SQL/QUERY_SQL path).
    for (db, options) in [("cache_on", ""), ("cache_off", "statement_cache_capacity=0")] {
        let url = common::shared_cluster().url_with(&common::db_name(db), options);
        let pool = common::pool_for(&url, 2).await;
        pool.execute("CREATE TABLE kv (k INTEGER PRIMARY KEY, v TEXT NOT NULL)").await.unwrap();
        for k in 0..50_i64 {
            sqlx::query("INSERT INTO kv (k, v) VALUES (?, ?)")
                .bind(k)
                .bind(format!("v{k}"))
                .execute(&pool)
                .await
                .unwrap();
        }
        let total: i64 =
            sqlx::query_scalar("SELECT sum(k) FROM kv WHERE v LIKE ?").bind("v%").fetch_one(&pool).await.unwrap();
        assert_eq!(total, (0..50).sum::<i64>(), "{db}");
        let v: String = sqlx::query_scalar("SELECT v FROM kv WHERE k = ?").bind(42_i64).fetch_one(&pool).await.unwrap();
        assert_eq!(v, "v42", "{db}");
    }
}

#[tokio::test]
async fn multi_statement_batch_without_arguments() {
    let pool = common::shared_pool("batch").await;
    pool.execute(
        "CREATE TABLE a (x INTEGER);
             INSERT INTO a VALUES (1);
             INSERT INTO a VALUES (2);
             INSERT INTO a VALUES (3);",
    )
    .await
    .unwrap();
    let sum: i64 = sqlx::query_scalar("SELECT sum(x) FROM a").fetch_one(&pool).await.unwrap();
    assert_eq!(sum, 6);
}
