//! The handshake word a client sends right after connecting (PROTOCOL.md section 1).
//!
//! There is no reply. Any other word makes a dqlite server close the connection.

use crate::error::DecodeError;

/// Length of the handshake in bytes (one word).
pub const HANDSHAKE_LEN: usize = 8;

/// The protocol version announced by the handshake word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ProtocolVersion {
    /// Version 1 (`01 00 00 00 00 00 00 00`), the current protocol.
    #[default]
    V1,
    /// The pre-1.0 protocol (`0x86104dd760433fe5`); only the LEADER reply differs.
    Legacy,
}

impl ProtocolVersion {
    /// Word value of version 1.
    pub const V1_WORD: u64 = 1;
    /// Word value of the legacy version.
    pub const LEGACY_WORD: u64 = 0x8610_4dd7_6043_3fe5;

    /// The handshake word.
    pub fn word(self) -> u64 {
        match self {
            ProtocolVersion::V1 => Self::V1_WORD,
            ProtocolVersion::Legacy => Self::LEGACY_WORD,
        }
    }

    /// The 8 handshake bytes to send.
    pub fn encode(self) -> [u8; HANDSHAKE_LEN] {
        self.word().to_le_bytes()
    }

    /// Decode the handshake at the start of `buf`.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let b: [u8; HANDSHAKE_LEN] = buf
            .get(..HANDSHAKE_LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or(DecodeError::Truncated { what: "handshake" })?;
        match u64::from_le_bytes(b) {
            Self::V1_WORD => Ok(ProtocolVersion::V1),
            Self::LEGACY_WORD => Ok(ProtocolVersion::Legacy),
            other => Err(DecodeError::UnknownProtocolVersion(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_bytes_are_exact() {
        assert_eq!(ProtocolVersion::V1.encode(), [1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(ProtocolVersion::Legacy.encode(), [0xe5, 0x3f, 0x43, 0x60, 0xd7, 0x4d, 0x10, 0x86]);
        for v in [ProtocolVersion::V1, ProtocolVersion::Legacy] {
            assert_eq!(ProtocolVersion::decode(&v.encode()), Ok(v));
        }
        assert_eq!(ProtocolVersion::decode(&[2, 0, 0, 0, 0, 0, 0, 0]), Err(DecodeError::UnknownProtocolVersion(2)));
        assert!(ProtocolVersion::decode(&[1, 0]).is_err());
    }
}
