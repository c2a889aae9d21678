//! `ConnectOptions` for dqlite.

use std::future::Future;
use std::time::Duration;

use log::LevelFilter;
use sqlx_core::connection::ConnectOptions;
use sqlx_core::{Error, Url};

use super::DqliteConnectOptions;
use crate::DqliteConnection;

impl ConnectOptions for DqliteConnectOptions {
    type Connection = DqliteConnection;

    fn from_url(url: &Url) -> Result<Self, Error> {
        Self::parse_from_url(url)
    }

    fn to_url_lossy(&self) -> Url {
        self.build_url()
    }

    fn connect(&self) -> impl Future<Output = Result<DqliteConnection, Error>> + Send + '_ {
        DqliteConnection::establish(self)
    }

    fn log_statements(mut self, level: LevelFilter) -> Self {
        self.log_settings.log_statements(level);
        self
    }

    fn log_slow_statements(mut self, level: LevelFilter, duration: Duration) -> Self {
        self.log_settings.log_slow_statements(level, duration);
        self
    }
}
