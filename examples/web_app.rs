//! # A web service whose instances are the database
//!
//! A small axum service. Each instance (process) embeds a dqlite-rs node on its own 127.0.0.x
//! address through its connection URL, `dqlite://HOST:PORT/app.db?data=DIR&join=…`; three
//! instances form one Raft cluster, so a request to any instance reads and writes the same
//! data, and killing one leaves the others serving.
//!
//! ```text
//! cargo run --example web_app          # starts three instances, talks to each, kills one
//!
//!   HTTP :127.0.0.2   HTTP :127.0.0.3   HTTP :127.0.0.4      POST /notes  (body: text)
//!   axum + sqlx       axum + sqlx       axum + sqlx          GET  /notes
//!   node 127.0.0.2 ◄─► node 127.0.0.3 ◄─► node 127.0.0.4     GET  /health
//!       (each node in its instance's process; Raft over TCP between them)
//! ```
//!
//! One instance alone: `WEB_APP_INSTANCE='node=127.0.0.2:9001 http=127.0.0.2:8080 data=/tmp/a'
//! cargo run --example web_app` (add `join=127.0.0.3:9001,…` to join a cluster). An instance
//! exits when its standard input closes, so instances die with whoever started them.

use std::error::Error;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use sqlx_dqlite::{DqlitePool, DqlitePoolOptions};

/// The environment variable that makes a process an instance (see [`InstanceConfig::parse`]).
pub const INSTANCE_ENV: &str = "WEB_APP_INSTANCE";

/// One instance: its node's address, its HTTP address, its data directory, nodes to join.
#[derive(Debug, Clone)]
pub struct InstanceConfig {
    /// Raft and dqlite-protocol address of the embedded node.
    pub node: SocketAddr,
    /// HTTP address.
    pub http: SocketAddr,
    /// The node's data directory.
    pub data: PathBuf,
    /// Nodes a fresh node joins through (empty: it bootstraps a new cluster).
    pub join: Vec<SocketAddr>,
}

impl InstanceConfig {
    /// Parses `node=H:P http=H:P data=DIR [join=H:P,…]`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (mut node, mut http, mut data, mut join) = (None, None, None, Vec::new());
        for part in text.split_whitespace() {
            let (key, value) = part.split_once('=').ok_or_else(|| format!("`{part}`: expected key=value"))?;
            let addr = |v: &str| v.parse::<SocketAddr>().map_err(|e| format!("{key}={v}: {e}"));
            match key {
                "node" => node = Some(addr(value)?),
                "http" => http = Some(addr(value)?),
                "data" => data = Some(PathBuf::from(value)),
                "join" => {
                    for a in value.split(',').filter(|a| !a.is_empty()) {
                        join.push(addr(a)?);
                    }
                }
                other => return Err(format!("unknown key `{other}` (node, http, data, join)")),
            }
        }
        Ok(InstanceConfig {
            node: node.ok_or("missing node=HOST:PORT")?,
            http: http.ok_or("missing http=HOST:PORT")?,
            data: data.ok_or("missing data=DIR")?,
            join,
        })
    }

    /// The text [`parse`](Self::parse) reads.
    pub fn to_env(&self) -> String {
        let join: Vec<String> = self.join.iter().map(ToString::to_string).collect();
        format!("node={} http={} data={} join={}", self.node, self.http, self.data.display(), join.join(","))
    }

    /// The connection URL: it starts this instance's node in the process.
    pub fn url(&self) -> String {
        let join: Vec<String> = self.join.iter().map(ToString::to_string).collect();
        let join = if join.is_empty() { String::new() } else { format!("&join={}", join.join(",")) };
        format!("dqlite://{}/app.db?data={}{join}", self.node, self.data.display())
    }
}

#[derive(Clone)]
struct App {
    pool: DqlitePool,
    data: PathBuf,
    name: String,
}

#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq)]
struct Note {
    id: i64,
    body: String,
    /// The instance that took the request.
    via: String,
}

type HttpError = (StatusCode, String);

fn unavailable(e: sqlx::Error) -> HttpError {
    (StatusCode::SERVICE_UNAVAILABLE, e.to_string())
}

async fn add_note(State(app): State<App>, body: String) -> Result<Json<Note>, HttpError> {
    let r = sqlx::query("INSERT INTO notes (body, via) VALUES (?, ?)")
        .bind(&body)
        .bind(&app.name)
        .execute(&app.pool)
        .await
        .map_err(unavailable)?;
    Ok(Json(Note { id: r.last_insert_rowid(), body, via: app.name.clone() }))
}

async fn list_notes(State(app): State<App>) -> Result<Json<Vec<Note>>, HttpError> {
    let rows: Vec<(i64, String, String)> = sqlx::query_as("SELECT id, body, via FROM notes ORDER BY id")
        .fetch_all(&app.pool)
        .await
        .map_err(unavailable)?;
    Ok(Json(rows.into_iter().map(|(id, body, via)| Note { id, body, via }).collect()))
}

async fn health(State(app): State<App>) -> Result<Json<serde_json::Value>, HttpError> {
    let node = dqlite::node::embedded::running(&app.data)
        .ok_or((StatusCode::SERVICE_UNAVAILABLE, "the embedded node is not running".to_owned()))?;
    Ok(Json(serde_json::json!({
        "instance": app.name,
        "node": node.address(),
        "leader": node.leader().map(|l| l.1),
        "is_leader": node.is_leader(),
        "members": node.cluster().len(),
    })))
}

/// Runs one instance until its standard input closes.
pub async fn serve(config: InstanceConfig) -> Result<(), Box<dyn Error>> {
    let pool = DqlitePoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(30))
        .connect(&config.url())
        .await?;
    sqlx::query("CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL, via TEXT NOT NULL)")
        .execute(&pool)
        .await?;
    let app = App { pool, data: config.data.clone(), name: config.http.to_string() };
    let router =
        Router::new().route("/notes", get(list_notes).post(add_note)).route("/health", get(health)).with_state(app);
    let listener = tokio::net::TcpListener::bind(config.http).await?;
    eprintln!("instance {} serving, node {}", config.http, config.node);
    // Standard input closing (the starter is gone) stops the instance.
    let stdin_closed = tokio::task::spawn_blocking(|| {
        let mut sink = [0u8; 64];
        while std::io::stdin().read(&mut sink).is_ok_and(|n| n > 0) {}
    });
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            let _ = stdin_closed.await;
        })
        .await?;
    Ok(())
}

/// A running instance process.
pub struct Instance {
    /// Its configuration.
    pub config: InstanceConfig,
    child: Child,
    log: PathBuf,
}

impl Instance {
    /// Starts `program args…` as an instance (the config goes through [`INSTANCE_ENV`]; its
    /// output goes to `log`), then waits (bounded) until it answers `GET /health`.
    pub fn start(
        program: &Path,
        args: &[&str],
        config: InstanceConfig,
        log: PathBuf,
        bound: Duration,
    ) -> Result<Self, Box<dyn Error>> {
        let out = std::fs::File::create(&log)?;
        let child = Command::new(program)
            .args(args)
            .env(INSTANCE_ENV, config.to_env())
            .stdin(Stdio::piped())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()?;
        let mut instance = Instance { config, child, log };
        let start = Instant::now();
        loop {
            if let Some(status) = instance.child.try_wait()? {
                return Err(format!(
                    "instance {} exited with {status}:\n{}",
                    instance.config.http,
                    instance.log_tail()
                )
                .into());
            }
            if let Ok((200, _)) = http(instance.config.http, "GET", "/health", "") {
                return Ok(instance);
            }
            if start.elapsed() > bound {
                return Err(format!(
                    "instance {} did not answer within {bound:?}:\n{}",
                    instance.config.http,
                    instance.log_tail()
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILLs the instance (its node dies with it, as in a crash) and reaps it.
    pub fn kill(&mut self) -> std::io::Result<()> {
        self.child.kill()?;
        self.child.wait().map(|_| ())
    }

    /// The end of the instance's output.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text[text.len().saturating_sub(4000)..].to_owned()
    }

    /// `GET /health` as JSON.
    pub fn health(&self) -> Result<serde_json::Value, String> {
        match http(self.config.http, "GET", "/health", "") {
            Ok((200, body)) => serde_json::from_str(&body).map_err(|e| e.to_string()),
            Ok((status, body)) => Err(format!("{status}: {body}")),
            Err(e) => Err(e.to_string()),
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request (`Connection: close`); returns the status and the body.
pub fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: text/plain\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    s.read_to_string(&mut response)?;
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad HTTP response: {response:?}"));
    let status = response.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or_else(bad)?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).ok_or_else(bad)?;
    Ok((status, body))
}

/// Configurations for `n` instances on 127.0.0.2…: free ports now, data under `root`;
/// instance 0 bootstraps, the others join it.
pub fn configs(n: usize, root: &Path) -> std::io::Result<Vec<InstanceConfig>> {
    let free = |ip: [u8; 4]| -> std::io::Result<SocketAddr> {
        std::net::TcpListener::bind(SocketAddr::from((ip, 0)))?.local_addr()
    };
    let mut configs: Vec<InstanceConfig> = Vec::new();
    for i in 0..n {
        let ip = [127, 0, 0, 2 + i as u8];
        let join = configs.first().map(|c| vec![c.node]).unwrap_or_default();
        configs.push(InstanceConfig {
            node: free(ip)?,
            http: free(ip)?,
            data: root.join(format!("instance{i}")),
            join,
        });
    }
    Ok(configs)
}

/// Which instance's node leads (per the instances themselves).
pub fn leader_index(instances: &[Instance]) -> Option<usize> {
    instances.iter().position(|i| i.health().is_ok_and(|h| h["is_leader"] == serde_json::Value::Bool(true)))
}

/// POSTs a note to `addr`; `Some(id)` when the service acknowledged it.
pub fn post_note(addr: SocketAddr, body: &str) -> Option<i64> {
    match http(addr, "POST", "/notes", body) {
        Ok((200, json)) => serde_json::from_str::<serde_json::Value>(&json).ok()?["id"].as_i64(),
        _ => None,
    }
}

/// The note bodies `addr` lists, or why not.
pub fn list_bodies(addr: SocketAddr) -> Result<Vec<String>, String> {
    match http(addr, "GET", "/notes", "") {
        Ok((200, json)) => {
            let notes: Vec<serde_json::Value> = serde_json::from_str(&json).map_err(|e| e.to_string())?;
            Ok(notes.iter().filter_map(|n| n["body"].as_str().map(str::to_owned)).collect())
        }
        Ok((status, body)) => Err(format!("{status}: {body}")),
        Err(e) => Err(e.to_string()),
    }
}

fn demo() -> Result<(), Box<dyn Error>> {
    let root = std::env::temp_dir().join(format!("dqlite-web-app-{}", std::process::id()));
    let exe = std::env::current_exe()?;
    let mut instances = Vec::new();
    for (i, config) in configs(3, &root)?.into_iter().enumerate() {
        let log = root.join(format!("instance{i}.log"));
        std::fs::create_dir_all(&root)?;
        instances.push(Instance::start(&exe, &[], config, log, Duration::from_secs(60))?);
        println!("instance {i}: http://{}  (node {})", instances[i].config.http, instances[i].config.node);
    }
    for (i, inst) in instances.iter().enumerate() {
        let id = post_note(inst.config.http, &format!("hello from a client of instance {i}"))
            .ok_or_else(|| format!("instance {i} did not take the write:\n{}", inst.log_tail()))?;
        println!("POST /notes to instance {i}: note {id}");
    }
    for (i, inst) in instances.iter().enumerate() {
        let bodies = list_bodies(inst.config.http)?;
        println!("GET /notes from instance {i}: {} notes", bodies.len());
        if bodies.len() != 3 {
            return Err(format!("instance {i} lists {bodies:?}").into());
        }
    }
    let leader = leader_index(&instances).ok_or("no instance reports a leading node")?;
    println!("killing instance {leader} (its node leads)");
    instances[leader].kill()?;
    let survivor = (leader + 1) % instances.len();
    let addr = instances[survivor].config.http;
    let deadline = Instant::now() + Duration::from_secs(60);
    let id = loop {
        if let Some(id) = post_note(addr, "written after the leader's instance died") {
            break id;
        }
        if Instant::now() > deadline {
            return Err(format!("instance {survivor} never took a write after the failover").into());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    println!("POST /notes to instance {survivor}: note {id}");
    for (i, inst) in instances.iter().enumerate().filter(|(i, _)| *i != leader) {
        let bodies = list_bodies(inst.config.http)?;
        println!("GET /notes from instance {i}: {} notes", bodies.len());
        if bodies.len() != 4 {
            return Err(format!("instance {i} lists {bodies:?}").into());
        }
    }
    println!("the service kept answering, with every acknowledged write");
    drop(instances);
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}

fn main() -> Result<(), Box<dyn Error>> {
    match std::env::var(INSTANCE_ENV) {
        Ok(text) => {
            let config = InstanceConfig::parse(&text)?;
            tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(serve(config))
        }
        Err(_) => demo(),
    }
}
