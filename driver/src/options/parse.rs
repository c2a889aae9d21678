//! `dqlite://` URL parsing and printing.

use std::str::FromStr;
use std::time::Duration;

use sqlx_core::percent_encoding::{percent_decode_str, utf8_percent_encode, NON_ALPHANUMERIC};
use sqlx_core::{Error, Url};

use super::{DqliteConnectOptions, NodeAddress, DEFAULT_PORT};

/// URL schemes this driver accepts.
pub(crate) const SCHEMES: &[&str] = &["dqlite"];

fn config_err(msg: impl Into<String>) -> Error {
    Error::Configuration(msg.into().into())
}

/// Parse `250ms`, `5s`, `1m` or a bare number of seconds.
pub(crate) fn parse_duration(key: &str, value: &str) -> Result<Duration, Error> {
    let v = value.trim();
    let (digits, mult_ms) = if let Some(d) = v.strip_suffix("ms") {
        (d, 1u64)
    } else if let Some(d) = v.strip_suffix('s') {
        (d, 1000)
    } else if let Some(d) = v.strip_suffix('m') {
        (d, 60_000)
    } else {
        (v, 1000)
    };
    let n: u64 = digits
        .trim()
        .parse()
        .map_err(|_| config_err(format!("invalid duration {value:?} for `{key}` (expected e.g. 250ms, 5s, 1m)")))?;
    n.checked_mul(mult_ms)
        .map(Duration::from_millis)
        .ok_or_else(|| config_err(format!("duration {value:?} for `{key}` is too large")))
}

/// Parse one `host:port` (IPv6 in brackets) from the `peers` list.
pub(crate) fn parse_host_port(s: &str) -> Result<NodeAddress, Error> {
    let s = s.trim();
    let bad = || config_err(format!("invalid peer address {s:?} (expected HOST:PORT)"));
    if s.is_empty() {
        return Err(bad());
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let end = rest.find(']').ok_or_else(bad)?;
        let host = &rest[..end];
        let after = &rest[end + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse::<u16>().map_err(|_| bad())?,
            None if after.is_empty() => DEFAULT_PORT,
            None => return Err(bad()),
        };
        (host, port)
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (h, p.parse::<u16>().map_err(|_| bad())?),
            Some(_) => return Err(bad()),
            None => (s, DEFAULT_PORT),
        }
    };
    if host.is_empty() {
        return Err(bad());
    }
    Ok(NodeAddress::new(host, port))
}

impl DqliteConnectOptions {
    pub(crate) fn parse_from_url(url: &Url) -> Result<Self, Error> {
        if !SCHEMES.contains(&url.scheme()) {
            return Err(config_err(format!(
                "unsupported URL scheme {:?} for the dqlite driver (expected dqlite://)",
                url.scheme()
            )));
        }
        let mut opts = DqliteConnectOptions::new();

        let host = url.host_str().filter(|h| !h.is_empty());
        let embedded = crate::embedded::EmbeddedSpec::from_url(url, host.is_some())?;
        match host {
            Some(host) => opts.host = NodeAddress::new(host, url.port().unwrap_or(DEFAULT_PORT)),
            None if embedded.is_some() => {}
            None => {
                return Err(config_err(
                    "dqlite URL has no host (expected dqlite://HOST:PORT/DATABASE, or \
                     dqlite:///DATABASE?data=DIR for an embedded node)",
                ))
            }
        }
        opts.embedded = embedded;

        if !url.username().is_empty() || url.password().is_some() {
            return Err(config_err("dqlite URLs do not take a user name or password (dqlite has no authentication)"));
        }

        let path = url.path().trim_start_matches('/');
        let database = percent_decode_str(path)
            .decode_utf8()
            .map_err(|e| config_err(format!("database name is not valid UTF-8: {e}")))?;
        if database.is_empty() {
            return Err(config_err("dqlite URL names no database (expected dqlite://HOST:PORT/DATABASE)"));
        }
        if database.contains('\0') {
            return Err(config_err("database name contains a NUL byte"));
        }
        opts.database = database.into_owned();

        for (key, value) in url.query_pairs() {
            match &*key {
                "peers" => {
                    for p in value.split(',').filter(|p| !p.trim().is_empty()) {
                        opts.peers.push(parse_host_port(p)?);
                    }
                }
                "connect_timeout" => opts.connect_timeout = parse_duration(&key, &value)?,
                "leader_timeout" => opts.leader_timeout = parse_duration(&key, &value)?,
                "statement_cache_capacity" => {
                    opts.statement_cache_capacity = value.parse().map_err(|_| {
                        config_err(format!("invalid statement_cache_capacity {value:?} (expected a number)"))
                    })?
                }
                "request_timeout" => opts.request_timeout = parse_duration(&key, &value)?,
                "busy_timeout" => opts.busy_timeout = parse_duration(&key, &value)?,
                "read" => {
                    opts.read_mode = match &*value {
                        "leader" => super::ReadMode::Leader,
                        "linearizable" => super::ReadMode::Linearizable,
                        "follower" => super::ReadMode::Follower,
                        other => {
                            return Err(config_err(format!(
                                "invalid read={other:?} (expected `leader`, `linearizable` or `follower`)"
                            )))
                        }
                    }
                }
                "max_staleness" => opts.max_staleness = parse_duration(&key, &value)?,
                // Embedded node options, taken by `EmbeddedSpec::from_url` above.
                "data" | "join" => {}
                "client_id" => {
                    opts.client_id = value
                        .parse()
                        .map_err(|_| config_err(format!("invalid client_id {value:?} (expected a number)")))?
                }
                other => {
                    return Err(config_err(format!(
                        "unknown dqlite URL parameter `{other}` (known: peers, connect_timeout, \
                         leader_timeout, statement_cache_capacity, request_timeout, busy_timeout, read, \
                         max_staleness, client_id, data, join)"
                    )))
                }
            }
        }
        Ok(opts)
    }

    pub(crate) fn build_url(&self) -> Url {
        match Url::parse(&self.url_string(&self.host.to_string())) {
            Ok(url) => url,
            // Only a host set through the builder can be invalid (from_url rejects them):
            // percent-encode it, which an opaque host accepts. Lossy, as the name says.
            Err(_) => {
                let host = utf8_percent_encode(&self.host.host, NON_ALPHANUMERIC).to_string();
                let url = self.url_string(&format!("{host}:{}", self.host.port));
                Url::parse(&url).unwrap_or_else(|e| unreachable!("percent-encoded dqlite URL {url:?} must parse: {e}"))
            }
        }
    }

    fn url_string(&self, host: &str) -> String {
        let db = utf8_percent_encode(&self.database, NON_ALPHANUMERIC).to_string();
        let no_socket = self.embedded.as_ref().is_some_and(|e| !e.listen);
        let host = if no_socket { "" } else { host };
        let mut s = format!("dqlite://{host}/{db}");
        let mut sep = '?';
        let mut push = |k: &str, v: &str| {
            s.push(sep);
            sep = '&';
            s.push_str(k);
            s.push('=');
            s.push_str(v);
        };
        if !self.peers.is_empty() {
            let peers: Vec<String> = self.peers.iter().map(ToString::to_string).collect();
            push("peers", &peers.join(","));
        }
        push("connect_timeout", &format!("{}ms", self.connect_timeout.as_millis()));
        push("leader_timeout", &format!("{}ms", self.leader_timeout.as_millis()));
        push("statement_cache_capacity", &self.statement_cache_capacity.to_string());
        push("request_timeout", &format!("{}ms", self.request_timeout.as_millis()));
        push("busy_timeout", &format!("{}ms", self.busy_timeout.as_millis()));
        if self.read_mode != super::ReadMode::Leader {
            push("read", self.read_mode.as_str());
        }
        if self.read_mode == super::ReadMode::Follower {
            push("max_staleness", &format!("{}ms", self.max_staleness.as_millis()));
        }
        push("client_id", &self.client_id.to_string());
        if let Some(e) = &self.embedded {
            e.push_url_options(&mut push);
        }
        s
    }
}

impl FromStr for DqliteConnectOptions {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let url: Url = s.parse().map_err(|e| config_err(format!("invalid dqlite URL: {e}")))?;
        Self::parse_from_url(&url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx_core::connection::ConnectOptions;

    fn same(a: &DqliteConnectOptions, b: &DqliteConnectOptions) -> bool {
        format!("{a:?}") == format!("{b:?}")
    }

    #[test]
    fn parses_full_url() {
        let o: DqliteConnectOptions = "dqlite://127.0.0.1:9001/app.db?peers=127.0.0.2:9002,[::1]:9003&connect_timeout=250ms&leader_timeout=1m&statement_cache_capacity=7&client_id=42"
            .parse()
            .unwrap();
        assert_eq!(o.database, "app.db");
        assert_eq!(o.host, NodeAddress::new("127.0.0.1", 9001));
        assert_eq!(o.peers, vec![NodeAddress::new("127.0.0.2", 9002), NodeAddress::new("::1", 9003)]);
        assert_eq!(o.connect_timeout, Duration::from_millis(250));
        assert_eq!(o.leader_timeout, Duration::from_secs(60));
        assert_eq!(o.statement_cache_capacity, 7);
        assert_eq!(o.client_id, 42);
        assert_eq!(o.request_timeout, Duration::ZERO);
    }

    #[test]
    fn defaults_port_and_options() {
        let o: DqliteConnectOptions = "dqlite://node1/db".parse().unwrap();
        assert_eq!(o.host, NodeAddress::new("node1", DEFAULT_PORT));
        assert_eq!(o.connect_timeout, super::super::DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(o.leader_timeout, super::super::DEFAULT_LEADER_TIMEOUT);
        assert!(o.peers.is_empty());
    }

    #[test]
    fn url_round_trips() {
        for s in [
            "dqlite://127.0.0.1:9001/app.db",
            "dqlite://127.0.0.1:9001/my%20db?peers=127.0.0.2:9002,127.0.0.3:9003",
            "dqlite://[::1]:7000/x?peers=[::2]:7001&connect_timeout=3s&leader_timeout=1500ms&statement_cache_capacity=0&request_timeout=2s&busy_timeout=0&client_id=9",
        ] {
            let a: DqliteConnectOptions = s.parse().unwrap();
            let url = a.to_url_lossy();
            let b = DqliteConnectOptions::from_url(&url).unwrap();
            assert!(same(&a, &b), "{s}: {a:?} != {b:?} (via {url})");
            // And the printed URL is stable.
            assert_eq!(b.to_url_lossy(), url);
        }
        let a: DqliteConnectOptions = "dqlite://h:1/my%20db".parse().unwrap();
        assert_eq!(a.database, "my db");
    }

    #[test]
    fn invalid_builder_host_still_prints_a_url() {
        let o = DqliteConnectOptions::new().host("bad host", 7).database("d");
        let url = o.to_url_lossy();
        assert_eq!(url.scheme(), "dqlite");
        assert_eq!(url.port(), Some(7));
        assert!(url.as_str().contains("bad%20host"), "{url}");
    }

    #[test]
    fn builder_matches_url() {
        let built = DqliteConnectOptions::new()
            .host("10.0.0.1", 9001)
            .database("app.db")
            .peers([("10.0.0.2", 9001), ("10.0.0.3", 9001)])
            .connect_timeout(Duration::from_secs(2));
        let parsed: DqliteConnectOptions =
            "dqlite://10.0.0.1:9001/app.db?peers=10.0.0.2:9001,10.0.0.3:9001&connect_timeout=2s".parse().unwrap();
        assert!(same(&built, &parsed));
    }

    #[test]
    fn rejects_bad_urls() {
        for s in [
            "sqlite://h/db",
            "dqlite://h:1/",
            "dqlite://h:1",
            "dqlite://h:1/db?bogus=1",
            "dqlite://h:1/db?connect_timeout=soon",
            "dqlite://h:1/db?peers=:9",
            "dqlite://h:1/db?peers=a:b",
            "dqlite://h:1/db?statement_cache_capacity=-1",
            "dqlite://user:pw@h:1/db",
            "not a url",
        ] {
            let r = s.parse::<DqliteConnectOptions>();
            assert!(matches!(r, Err(Error::Configuration(_))), "{s} should be a configuration error, got {r:?}");
        }
    }

    #[test]
    fn seeds_deduplicate() {
        let o: DqliteConnectOptions = "dqlite://a:1/db?peers=a:1,b:2,b:2".parse().unwrap();
        assert_eq!(o.get_seeds(), vec![NodeAddress::new("a", 1), NodeAddress::new("b", 2)]);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("k", "5").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("k", "5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("k", "5ms").unwrap(), Duration::from_millis(5));
        assert_eq!(parse_duration("k", "2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("k", "").is_err());
        assert!(parse_duration("k", "1h").is_err());
        assert!(parse_duration("k", "99999999999999999999m").is_err());
    }
}
