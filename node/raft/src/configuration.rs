//! Cluster configurations: who is in the cluster and with which [`Role`], and the byte
//! encoding carried by [`EntryKind::Configuration`](crate::EntryKind::Configuration) entries.
//!
//! Encoding (all integers little-endian):
//!
//! ```text
//! +---------+-------------+-------------------------------------------------+
//! | version | count (u32) | count x [ id u64 | role u8 | len u32 | address ] |
//! |  u8 = 1 |             |                                                 |
//! +---------+-------------+-------------------------------------------------+
//! ```

use crate::types::{NodeId, Role};

/// The encoding version written by [`Configuration::encode`].
pub const CONFIGURATION_FORMAT_VERSION: u8 = 1;

/// One member of a configuration.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Server {
    /// The member's id (never 0).
    pub id: NodeId,
    /// Where peers reach it. Opaque to the core.
    pub address: String,
    /// What it does.
    pub role: Role,
}

/// A cluster configuration: a set of servers with distinct ids, kept sorted by id.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Configuration {
    servers: Vec<Server>,
}

/// Why a configuration payload could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigurationDecodeError {
    /// The payload ended before the structure did.
    #[error("configuration payload truncated")]
    Truncated,
    /// Unknown format version byte.
    #[error("unknown configuration format version {0}")]
    UnknownVersion(u8),
    /// Unknown role byte.
    #[error("unknown role byte {0}")]
    UnknownRole(u8),
    /// An address is not UTF-8.
    #[error("server address is not UTF-8")]
    AddressNotUtf8,
    /// Two servers share an id, or an id is 0.
    #[error("invalid or duplicate server id {0}")]
    BadId(NodeId),
    /// Bytes were left after the last server.
    #[error("{0} trailing bytes after configuration")]
    TrailingBytes(usize),
}

impl Configuration {
    /// An empty configuration.
    pub fn new() -> Configuration {
        Configuration::default()
    }

    /// A configuration in which every given id is a voter with an empty address (handy in tests).
    pub fn with_voters(ids: impl IntoIterator<Item = NodeId>) -> Configuration {
        let mut c = Configuration::new();
        for id in ids {
            c.upsert(Server { id, address: String::new(), role: Role::Voter });
        }
        c
    }

    /// The servers, sorted by id.
    pub fn servers(&self) -> &[Server] {
        &self.servers
    }

    /// The server with this id.
    pub fn get(&self, id: NodeId) -> Option<&Server> {
        self.servers.binary_search_by_key(&id, |s| s.id).ok().map(|i| &self.servers[i])
    }

    /// The role of `id`, `None` if not a member.
    pub fn role(&self, id: NodeId) -> Option<Role> {
        self.get(id).map(|s| s.role)
    }

    /// True if `id` is a voter.
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.role(id) == Some(Role::Voter)
    }

    /// Ids of the voters, ascending.
    pub fn voters(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.servers.iter().filter(|s| s.role == Role::Voter).map(|s| s.id)
    }

    /// Number of voters.
    pub fn voter_count(&self) -> usize {
        self.voters().count()
    }

    /// Ids of voters and standbys (the servers that receive the log), ascending.
    pub fn replicas(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.servers.iter().filter(|s| s.role != Role::Spare).map(|s| s.id)
    }

    /// Inserts or replaces a server.
    pub fn upsert(&mut self, server: Server) {
        match self.servers.binary_search_by_key(&server.id, |s| s.id) {
            Ok(i) => self.servers[i] = server,
            Err(i) => self.servers.insert(i, server),
        }
    }

    /// Removes a server, returning it.
    pub fn remove(&mut self, id: NodeId) -> Option<Server> {
        match self.servers.binary_search_by_key(&id, |s| s.id) {
            Ok(i) => Some(self.servers.remove(i)),
            Err(_) => None,
        }
    }

    /// True if the ids in `votes` that are voters form a majority of the voters.
    pub fn is_quorum<'a>(&self, votes: impl IntoIterator<Item = &'a NodeId>) -> bool {
        let n = votes.into_iter().filter(|id| self.is_voter(**id)).count();
        let total = self.voter_count();
        total > 0 && n > total / 2
    }

    /// The byte encoding (see the module docs).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(5 + self.servers.len() * 24);
        out.push(CONFIGURATION_FORMAT_VERSION);
        out.extend_from_slice(&(self.servers.len() as u32).to_le_bytes());
        for s in &self.servers {
            out.extend_from_slice(&s.id.0.to_le_bytes());
            out.push(s.role as u8);
            out.extend_from_slice(&(s.address.len() as u32).to_le_bytes());
            out.extend_from_slice(s.address.as_bytes());
        }
        out
    }

    /// Decodes [`Configuration::encode`]'s output. Never panics.
    pub fn decode(mut buf: &[u8]) -> Result<Configuration, ConfigurationDecodeError> {
        fn take<'a>(buf: &mut &'a [u8], n: usize) -> Result<&'a [u8], ConfigurationDecodeError> {
            if buf.len() < n {
                return Err(ConfigurationDecodeError::Truncated);
            }
            let (a, b) = buf.split_at(n);
            *buf = b;
            Ok(a)
        }
        fn u32le(buf: &mut &[u8]) -> Result<u32, ConfigurationDecodeError> {
            let b = take(buf, 4)?;
            Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        }
        let version = take(&mut buf, 1)?[0];
        if version != CONFIGURATION_FORMAT_VERSION {
            return Err(ConfigurationDecodeError::UnknownVersion(version));
        }
        let count = u32le(&mut buf)?;
        let mut conf = Configuration::new();
        for _ in 0..count {
            let idb = take(&mut buf, 8)?;
            let mut a = [0u8; 8];
            a.copy_from_slice(idb);
            let id = NodeId(u64::from_le_bytes(a));
            let rb = take(&mut buf, 1)?[0];
            let role = Role::from_u8(rb).ok_or(ConfigurationDecodeError::UnknownRole(rb))?;
            let len = u32le(&mut buf)? as usize;
            let addr = take(&mut buf, len)?;
            let address = std::str::from_utf8(addr).map_err(|_| ConfigurationDecodeError::AddressNotUtf8)?.to_owned();
            if id == NodeId::ZERO || conf.get(id).is_some() {
                return Err(ConfigurationDecodeError::BadId(id));
            }
            conf.upsert(Server { id, address, role });
        }
        if !buf.is_empty() {
            return Err(ConfigurationDecodeError::TrailingBytes(buf.len()));
        }
        Ok(conf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_roundtrip_and_errors() {
        let mut c = Configuration::with_voters([NodeId(3), NodeId(1)]);
        c.upsert(Server { id: NodeId(7), address: "10.0.0.7:9001".into(), role: Role::Standby });
        let b = c.encode();
        assert_eq!(Configuration::decode(&b).unwrap(), c);
        assert_eq!(c.voters().collect::<Vec<_>>(), vec![NodeId(1), NodeId(3)]);
        assert_eq!(c.servers().iter().map(|s| s.id).collect::<Vec<_>>(), vec![NodeId(1), NodeId(3), NodeId(7)]);
        assert_eq!(c.replicas().count(), 3);
        assert_eq!(c.role(NodeId(7)), Some(Role::Standby));
        for n in 0..b.len() {
            assert!(Configuration::decode(&b[..n]).is_err(), "prefix {n} decoded");
        }
        let mut t = b.clone();
        t.push(0);
        assert_eq!(Configuration::decode(&t), Err(ConfigurationDecodeError::TrailingBytes(1)));
        let mut v = b.clone();
        v[0] = 9;
        assert_eq!(Configuration::decode(&v), Err(ConfigurationDecodeError::UnknownVersion(9)));
    }

    #[test]
    fn decode_rejects_zero_and_duplicate_ids() {
        let one = |id: u64| {
            let mut v = id.to_le_bytes().to_vec();
            v.push(0);
            v.extend_from_slice(&0u32.to_le_bytes());
            v
        };
        let mut dup = vec![CONFIGURATION_FORMAT_VERSION];
        dup.extend_from_slice(&2u32.to_le_bytes());
        dup.extend(one(5));
        dup.extend(one(5));
        assert_eq!(Configuration::decode(&dup), Err(ConfigurationDecodeError::BadId(NodeId(5))));
        let mut zero = vec![CONFIGURATION_FORMAT_VERSION];
        zero.extend_from_slice(&1u32.to_le_bytes());
        zero.extend(one(0));
        assert_eq!(Configuration::decode(&zero), Err(ConfigurationDecodeError::BadId(NodeId(0))));
    }

    #[test]
    fn quorum_counts_only_voters() {
        let mut c = Configuration::with_voters([NodeId(1), NodeId(2), NodeId(3)]);
        c.upsert(Server { id: NodeId(4), address: String::new(), role: Role::Standby });
        assert!(!c.is_quorum(&[NodeId(1), NodeId(4)]));
        assert!(c.is_quorum(&[NodeId(1), NodeId(2)]));
        assert!(!Configuration::new().is_quorum(&[NodeId(1)]));
    }
}
