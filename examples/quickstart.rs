//! The main job, with nothing installed: three dqlite-rs nodes embedded in this process on
//! 127.0.0.x form one Raft cluster; sqlx migrates a database, writes to it and reads it back
//! with `FromRow` — through the node that leads, in process, without a socket.
//!
//! ```text
//! cargo run --example quickstart
//! ```
//!
//! Each node is named by a `dqlite://HOST:PORT/DB?data=DIR[&join=…]` URL: connecting through
//! it starts the node in this process (or attaches to it if it already runs).

use std::time::{Duration, Instant};

use sqlx::FromRow;
use sqlx_dqlite::{DqlitePool, DqlitePoolOptions};

#[derive(FromRow)]
struct Note {
    id: i64,
    author: String,
    body: String,
    stars: i64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let base = std::env::temp_dir().join(format!("dqlite-quickstart-{}", std::process::id()));
    let result = run(&base).await;
    let _ = std::fs::remove_dir_all(&base);
    result
}

async fn run(base: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    let started = Instant::now();
    // Three nodes on three loopback addresses; ports from the OS (free right now).
    let addrs: Vec<String> = (0..3)
        .map(|i| {
            let l = std::net::TcpListener::bind(("127.0.0.1", 0))?;
            let port = l.local_addr()?.port();
            Ok::<_, std::io::Error>(format!("127.0.0.{}:{port}", i + 1))
        })
        .collect::<Result<_, _>>()?;
    let mut pools: Vec<DqlitePool> = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let dir = base.join(format!("node{i}"));
        let join = if i == 0 { String::new() } else { format!("&join={}", addrs[0]) };
        let url = format!("dqlite://{addr}/notes.db?data={}{join}", dir.display());
        println!("node {i}: {url}");
        pools.push(DqlitePoolOptions::new().max_connections(4).connect(&url).await?);
    }
    let node = dqlite::node::embedded::running(&base.join("node0")).ok_or("node 0 is not running")?;
    // Wait (bounded) until all three are voters.
    let deadline = Instant::now() + Duration::from_secs(30);
    while node.cluster().len() < 3 {
        if Instant::now() > deadline {
            return Err(format!("the cluster did not reach 3 members: {:?}", node.cluster()).into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("cluster: {} members, leader {:?}", node.cluster().len(), node.leader().map(|l| l.1));

    let db = &pools[0];
    sqlx::migrate!("examples/migrations").run(db).await?;
    println!("migrated: notes table with a stars column");

    for (author, body, stars) in [("ada", "replicated by Raft", 3), ("linus", "plain SQLite files on disk", 5)] {
        let r = sqlx::query("INSERT INTO notes (author, body, stars) VALUES (?, ?, ?)")
            .bind(author)
            .bind(body)
            .bind(stars)
            .execute(db)
            .await?;
        println!("inserted note {} by {author}", r.last_insert_rowid());
    }

    // Every node's pool sees the same data (reads go to the leader).
    for (i, pool) in pools.iter().enumerate() {
        let notes: Vec<Note> =
            sqlx::query_as("SELECT id, author, body, stars FROM notes ORDER BY id").fetch_all(pool).await?;
        assert_eq!(notes.len(), 2, "node {i} sees every note");
        for n in &notes {
            println!("through node {i}: #{} {} ({} stars): {}", n.id, n.author, n.stars, n.body);
        }
    }
    let total: i64 = sqlx::query_scalar("SELECT sum(stars) FROM notes").fetch_one(db).await?;
    assert_eq!(total, 8);
    println!("total stars: {total}");

    for pool in &pools {
        pool.close().await;
    }
    for i in 0..3 {
        if let Some(n) = dqlite::node::embedded::running(&base.join(format!("node{i}"))) {
            n.close().await;
        }
    }
    println!("done in {:?}", started.elapsed());
    Ok(())
}
