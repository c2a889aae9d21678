//! The `dqlited` binary (sqlx-cli as a library + this driver) end to end against the cluster:
//! `database create`, `migrate run|info|revert`, `database drop`.

use std::process::{Command, Output};

use crate::common;

fn dqlited(args: &[&str]) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_dqlited"))
        .args(args)
        .arg("--no-dotenv")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("DATABASE_URL")
        .env("CLICOLOR", "0")
        .env("NO_COLOR", "1")
        .output()
        .expect("running the dqlited binary");
    eprintln!(
        "$ dqlited {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn ok(args: &[&str]) -> String {
    let output = dqlited(args);
    assert!(output.status.success(), "dqlited {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn status_of(info: &str, version: &str) -> String {
    info.lines()
        .find_map(|line| line.strip_prefix(&format!("{version}/")))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no line for {version} in:\n{info}"))
        .to_owned()
}

const V1: &str = "20260101000001";
const V2: &str = "20260101000002";
const V3: &str = "20260101000003";

#[test]
fn create_migrate_info_revert_drop() {
    // This process's pools use the cluster's URL; the dqlited processes one without options
    // that only this process can use (an embedded node's `data=DIR`).
    let url = common::shared_url("cli.db");
    let url = url.as_str();
    let remote = common::shared_cluster().remote_url(&common::db_name("cli.db"));
    let src = ["--source", "tests/migrations", "--database-url", &remote];

    ok(&["database", "create", "--database-url", &remote]);

    let info = ok(&[&["migrate", "info"][..], &src].concat());
    assert_eq!([V1, V2, V3].map(|v| status_of(&info, v)), ["pending", "pending", "pending"]);

    let run = ok(&[&["migrate", "run"][..], &src].concat());
    for v in [V1, V2, V3] {
        assert!(run.contains(&format!("Applied {v}/")), "{run}");
    }
    let info = ok(&[&["migrate", "info"][..], &src].concat());
    assert_eq!([V1, V2, V3].map(|v| status_of(&info, v)), ["installed", "installed", "installed"]);

    // Second run: nothing to do.
    let again = ok(&[&["migrate", "run"][..], &src].concat());
    assert!(!again.contains("Applied"), "{again}");

    // Revert the latest migration only.
    let revert = ok(&[&["migrate", "revert"][..], &src].concat());
    assert!(revert.contains(&format!("Applied {V3}/revert")), "{revert}");
    let info = ok(&[&["migrate", "info"][..], &src].concat());
    assert_eq!([V1, V2, V3].map(|v| status_of(&info, v)), ["installed", "installed", "pending"]);

    // Check the schema through the driver itself.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let pool = common::pool_for(url, 1).await;
        let columns: Vec<String> = sqlx::query_scalar("SELECT name FROM pragma_table_info('accounts') ORDER BY cid")
            .fetch_all(&pool)
            .await
            .unwrap();
        assert_eq!(columns, vec!["id", "email", "created_at"]);
        pool.close().await;
    });

    ok(&["database", "drop", "-y", "--database-url", &remote]);
    runtime.block_on(async {
        let pool = common::pool_for(url, 1).await;
        // SQLite's own objects (sqlite_sequence, left by AUTOINCREMENT) cannot be dropped.
        let objects: Vec<String> = sqlx::query_scalar("SELECT name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'")
            .fetch_all(&pool)
            .await
            .unwrap();
        assert!(objects.is_empty(), "database drop left objects behind: {objects:?}");
        pool.close().await;
    });
}

#[test]
fn bad_input_is_a_clear_error() {
    let missing_db =
        dqlited(&["migrate", "info", "--source", "tests/migrations", "--database-url", "dqlite://127.0.0.1:1"]);
    assert!(!missing_db.status.success());
    assert!(!missing_db.stderr.is_empty());

    let prepare = dqlited(&["prepare", "--database-url", "dqlite://127.0.0.1:1/x"]);
    assert!(!prepare.status.success());
    assert!(String::from_utf8_lossy(&prepare.stderr).contains("not available for dqlite"));

    let unknown = dqlited(&["frobnicate"]);
    assert!(!unknown.status.success());
}
