//! `dqlited`: runs a dqlite-rs node (`run`), and sqlx-cli's `migrate` and `database` commands
//! for `dqlite://` URLs.
//!
//! ```text
//! dqlited run --address 127.0.0.1:9001 --data /var/lib/dqlite/n1                 # bootstrap
//! dqlited run --address 127.0.0.2:9001 --data /var/lib/dqlite/n2 --join 127.0.0.1:9001
//! ```
//!
//! `run` serves dqlite's client protocol and the peer protocol on `--address` until SIGTERM
//! or SIGINT, then hands leadership over and exits 0. A fresh data directory without `--join`
//! bootstraps a new cluster; with `--join` the node asks any listed node that answers to add it
//! (following the leader), retrying until one does; the first three members become voters,
//! later ones standbys. Restarted with the same `--data`, a node resumes (its id is in
//! `DATA/node-id`; `DATA/raft/` holds the Raft log, `DATA/db/` the databases). `RUST_LOG`
//! controls the logs (default `info`), which go to standard error.
//!
//! The stock `sqlx` binary only knows the drivers built into sqlx. This one is sqlx-cli 0.9.0
//! used as a library (`sqlx_cli::run`) after installing this project's driver into sqlx's Any
//! layer, so every command that goes through `AnyConnection` accepts `dqlite://` URLs:
//!
//! ```text
//! dqlited database create --database-url dqlite://127.0.0.1:9001/app.db?peers=127.0.0.1:9002
//! dqlited migrate run     --source migrations --database-url dqlite://...
//! dqlited migrate info    --source migrations --database-url dqlite://...
//! dqlited migrate revert  --source migrations --database-url dqlite://...
//! dqlited database drop -y --database-url dqlite://...
//! ```
//!
//! `DATABASE_URL` (also from a `.env` file) works as with `sqlx`. `prepare` is refused: sqlx's
//! compile-time checked macros cannot know a third-party driver.

use std::process::ExitCode;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, CommandFactory, FromArgMatches};
use dqlite::node::db::DbConfig;
use dqlite::node::node::{DataDir, Node, NodeConfig};
use sqlx_cli::opt::Command;
use sqlx_cli::Opt;

const ABOUT: &str = "Run a dqlite-rs node (`run`); migrations and database management for dqlite:// URLs \
     (sqlx-cli with the dqlite driver)";

/// Bound on the graceful shutdown (leadership handover, storage flush) after a signal.
const SHUTDOWN_BOUND: Duration = Duration::from_secs(30);

/// `dqlited run`.
#[derive(Debug, clap::Args)]
#[command(
    about = "Run a dqlite-rs node until SIGTERM or SIGINT (then hand leadership over and exit 0)",
    long_about = "Run a dqlite-rs node until SIGTERM or SIGINT, then hand leadership over and exit 0.\n\n\
        A fresh data directory without --join bootstraps a new cluster. With --join, the node asks \
        any listed node that answers to add it (following the leader), retrying until one does; \
        the first three members become voters, later ones standbys. Restarted with the same \
        --data, the node resumes. RUST_LOG controls the logs (default: info)."
)]
struct RunArgs {
    /// Address to listen on and to advertise to clients and peers (HOST:PORT).
    #[arg(long, value_name = "HOST:PORT")]
    address: String,
    /// Data directory (created if missing): node-id, raft/ (Raft log), db/ (databases).
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    /// Nodes of an existing cluster to join through, comma-separated.
    #[arg(long, value_name = "HOST:PORT,...", value_delimiter = ',')]
    join: Vec<String>,
    /// The timing knob in milliseconds: heartbeat = 10x, election timeout = 100x.
    #[arg(long, value_name = "MS", default_value_t = 10)]
    network_latency_ms: u64,
    /// Page size of the databases this node creates (a power of two, 512 to 65536); existing
    /// databases keep theirs, and databases replicated from the leader follow the leader's.
    #[arg(long, value_name = "BYTES", default_value_t = 4096)]
    page_size: u32,
}

fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

async fn wait_for_signal() -> std::io::Result<&'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

async fn run_node(args: RunArgs) -> ExitCode {
    init_logs();
    let data = match DataDir::open(&args.data) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let join: Vec<String> = args.join.into_iter().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect();
    let mut config = NodeConfig::new(args.address);
    config.join = join;
    config.network_latency = Duration::from_millis(args.network_latency_ms.max(1));
    // Signals are caught from here on, so a SIGTERM during startup still exits cleanly.
    let signal = tokio::spawn(wait_for_signal());
    let mut db = DbConfig::default();
    db.page_size = args.page_size;
    let node = match Node::start_sqlite(config, data, db).await {
        Ok(n) => n,
        Err(e) => {
            eprintln!("error: cannot start the node: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(id = %node.id(), address = ?node.local_addr(), "dqlited running");
    match signal.await {
        Ok(Ok(name)) => tracing::info!(signal = name, "stopping: handing leadership over"),
        Ok(Err(e)) => {
            eprintln!("error: cannot wait for signals: {e}");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("error: signal task failed: {e}");
            return ExitCode::FAILURE;
        }
    }
    match tokio::time::timeout(SHUTDOWN_BOUND, node.shutdown()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => {
            eprintln!("error: the node did not stop within {SHUTDOWN_BOUND:?}");
            ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    // Same as `sqlx`: honour `.env` unless `--no-dotenv` is given.
    sqlx_cli::maybe_apply_dotenv();

    // The only driver this tool needs; sqlx-cli itself installs none when used as a library.
    if let Err(err) = sqlx::any::install_drivers(&[sqlx_dqlite::any::DRIVER]) {
        eprintln!("error: installing the dqlite driver into sqlx's Any layer: {err}");
        return ExitCode::FAILURE;
    }

    let matches = Opt::command()
        .name("dqlited")
        .bin_name("dqlited")
        .about(ABOUT)
        .version(env!("CARGO_PKG_VERSION"))
        // Refused below; not advertised.
        .mut_subcommand("prepare", |prepare| prepare.hide(true))
        .subcommand(RunArgs::augment_args(clap::Command::new("run")))
        .get_matches();
    if let Some(("run", sub)) = matches.subcommand() {
        return match RunArgs::from_arg_matches(sub) {
            Ok(args) => run_node(args).await,
            Err(err) => err.exit(),
        };
    }
    let opt = match Opt::from_arg_matches(&matches) {
        Ok(opt) => opt,
        Err(err) => err.exit(),
    };
    if let Command::Prepare { .. } = opt.command {
        eprintln!(
            "error: `prepare` is not available for dqlite: sqlx's query! macros only know the \
             drivers built into sqlx; use sqlx::query()/query_as() with this driver"
        );
        return ExitCode::FAILURE;
    }

    match sqlx_cli::run(opt).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
