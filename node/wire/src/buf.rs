//! Primitive field readers and writers (PROTOCOL.md section 3).
//!
//! [`Reader`] is a bounds-checked cursor over a borrowed body: every read either
//! returns the field or a [`DecodeError`], and no arithmetic can overflow.
//! Writers append to a `Vec<u8>` and keep it word-aligned.

use crate::error::{DecodeError, EncodeError};

/// Size of a protocol word in bytes.
pub const WORD: usize = 8;

/// Round `n` up to the next multiple of 8, or `None` on overflow.
pub(crate) fn round_up8(n: usize) -> Option<usize> {
    n.checked_add(WORD - 1).map(|v| v & !(WORD - 1))
}

/// A bounds-checked cursor over a message body.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Start reading at the beginning of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Start reading `buf` at byte offset `pos` (clamped to the buffer length).
    pub fn at(buf: &'a [u8], pos: usize) -> Self {
        Reader { buf, pos: pos.min(buf.len()) }
    }

    /// Current offset from the start of the buffer.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The unread bytes.
    pub fn rest(&self) -> &'a [u8] {
        // pos <= len is an invariant of every method.
        self.buf.get(self.pos..).unwrap_or(&[])
    }

    /// Error with [`DecodeError::TrailingBytes`] unless everything was read.
    pub fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(DecodeError::TrailingBytes(n)),
        }
    }

    /// Take the next `n` raw bytes.
    pub fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).ok_or(DecodeError::Truncated { what })?;
        let out = self.buf.get(self.pos..end).ok_or(DecodeError::Truncated { what })?;
        self.pos = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let b = self.bytes(N, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Ok(out)
    }

    /// Peek at the next byte without consuming it.
    pub fn peek_u8(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    /// Read a `uint8`.
    pub fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(what)?[0])
    }

    /// Read a `uint32` (little-endian).
    pub fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    /// Read a `uint64` (little-endian).
    pub fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// Read an `int64` (little-endian two's complement).
    pub fn i64(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_le_bytes(self.array(what)?))
    }

    /// Read a `double` (IEEE-754 bit pattern, little-endian).
    pub fn f64(&mut self, what: &'static str) -> Result<f64, DecodeError> {
        Ok(f64::from_bits(self.u64(what)?))
    }

    /// Skip padding so the position is a multiple of 8 (padding content is not checked).
    pub fn align(&mut self, what: &'static str) -> Result<(), DecodeError> {
        let target = round_up8(self.pos).ok_or(DecodeError::Truncated { what })?;
        let skip = target - self.pos;
        self.bytes(skip, what).map(|_| ())
    }

    /// Read a `text`: UTF-8 bytes, a NUL, zero padding to the next word boundary.
    pub fn text(&mut self, what: &'static str) -> Result<&'a str, DecodeError> {
        let rest = self.rest();
        let nul = rest.iter().position(|&b| b == 0).ok_or(DecodeError::TextWithoutNul)?;
        let padded = round_up8(nul + 1).ok_or(DecodeError::Truncated { what })?;
        let raw = self.bytes(padded, what)?;
        std::str::from_utf8(&raw[..nul]).map_err(|_| DecodeError::InvalidUtf8)
    }

    /// Read a `blob`: `uint64` length, the bytes, zero padding to a word boundary.
    pub fn blob(&mut self, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let len = self.u64(what)?;
        let len = usize::try_from(len).map_err(|_| DecodeError::Truncated { what })?;
        if len > self.remaining() {
            return Err(DecodeError::Truncated { what });
        }
        let data = self.bytes(len, what)?;
        self.align(what)?;
        Ok(data)
    }

    /// Read a `uint64` count of items, each at least `min_item_bytes` long, and check it can fit.
    pub fn count(&mut self, what: &'static str, min_item_bytes: usize) -> Result<usize, DecodeError> {
        let count = self.u64(what)?;
        self.check_count(count, what, min_item_bytes)
    }

    /// Check that `count` items of at least `min_item_bytes` each can fit in what remains.
    pub fn check_count(&self, count: u64, what: &'static str, min_item_bytes: usize) -> Result<usize, DecodeError> {
        let too_large = DecodeError::CountTooLarge { what, count };
        let n = usize::try_from(count).map_err(|_| too_large.clone())?;
        let need = n.checked_mul(min_item_bytes).ok_or(too_large.clone())?;
        if need > self.remaining() {
            return Err(too_large);
        }
        Ok(n)
    }
}

/// Append a `uint32`.
pub(crate) fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Append a `uint64`.
pub(crate) fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Append an `int64`.
pub(crate) fn put_i64(out: &mut Vec<u8>, v: i64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Append the zero padding that follows a field of `field_len` bytes.
///
/// Padding is computed from the field's own length, not from `out.len()`, so encoding
/// is correct even when the caller's buffer does not start word-aligned.
pub(crate) fn pad(out: &mut Vec<u8>, field_len: usize) {
    let rem = field_len % WORD;
    if rem != 0 {
        out.resize(out.len() + (WORD - rem), 0);
    }
}

/// Number of bytes a `text` of `len` UTF-8 bytes occupies.
pub(crate) fn text_len(s: &str) -> usize {
    // A &str is at most isize::MAX bytes, so this cannot overflow.
    (s.len() + 1).div_ceil(WORD) * WORD
}

/// Append a `text`.
pub(crate) fn put_text(out: &mut Vec<u8>, s: &str) -> Result<(), EncodeError> {
    if s.as_bytes().contains(&0) {
        return Err(EncodeError::TextContainsNul);
    }
    out.extend_from_slice(s.as_bytes());
    out.push(0);
    pad(out, s.len() + 1);
    Ok(())
}

/// Append a `blob`.
pub(crate) fn put_blob(out: &mut Vec<u8>, b: &[u8]) {
    put_u64(out, b.len() as u64);
    out.extend_from_slice(b);
    pad(out, b.len());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_encoding_is_nul_terminated_and_padded() {
        let mut out = Vec::new();
        put_text(&mut out, "").unwrap();
        assert_eq!(out, [0u8; 8]);
        out.clear();
        put_text(&mut out, "1234567").unwrap();
        assert_eq!(out, b"1234567\0");
        out.clear();
        put_text(&mut out, "12345678").unwrap();
        assert_eq!(out, b"12345678\0\0\0\0\0\0\0\0");
        assert_eq!(Reader::new(&out).text("t").unwrap(), "12345678");
        assert_eq!(put_text(&mut out, "a\0b"), Err(EncodeError::TextContainsNul));
    }

    #[test]
    fn blob_encoding_is_length_prefixed_and_padded() {
        let mut out = Vec::new();
        put_blob(&mut out, &[1, 2, 3]);
        assert_eq!(out, [3, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 0, 0, 0, 0, 0]);
        let mut r = Reader::new(&out);
        assert_eq!(r.blob("b").unwrap(), &[1, 2, 3]);
        r.finish().unwrap();
    }

    #[test]
    fn reader_rejects_short_and_bad_fields() {
        assert!(matches!(Reader::new(&[1, 2, 3]).u64("x"), Err(DecodeError::Truncated { .. })));
        assert_eq!(Reader::new(b"abc").text("t"), Err(DecodeError::TextWithoutNul));
        // NUL present but padding missing.
        assert!(matches!(Reader::new(b"abc\0").text("t"), Err(DecodeError::Truncated { .. })));
        assert_eq!(Reader::new(b"\xff\xfe\0\0\0\0\0\0").text("t"), Err(DecodeError::InvalidUtf8));
        // Blob length larger than the buffer, including u64::MAX.
        let mut huge = u64::MAX.to_le_bytes().to_vec();
        huge.extend_from_slice(&[0; 8]);
        assert!(matches!(Reader::new(&huge).blob("b"), Err(DecodeError::Truncated { .. })));
        let mut r = Reader::new(&huge);
        assert!(matches!(r.count("n", 8), Err(DecodeError::CountTooLarge { .. })));
    }
}
