//! `dqlited`: sqlx-cli's `migrate` and `database` commands for `dqlite://` URLs.
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

use clap::{CommandFactory, FromArgMatches};
use sqlx_cli::opt::Command;
use sqlx_cli::Opt;

const ABOUT: &str =
    "Migrations and database management for dqlite:// URLs (sqlx-cli with the dqlite driver)";

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
        .get_matches();
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
