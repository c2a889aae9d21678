//! The framing of a snapshot image: the state machine's bytes followed by a 24-byte trailer that
//! carries their length and CRC32C (layout in `docs/runtime.md`). The image travels unchanged in
//! `InstallSnapshot` chunks; the receiver checks the trailer before anything is installed.

use std::io::{self, Read, Write};

/// The trailer's magic bytes.
pub const SNAPSHOT_TRAILER_MAGIC: [u8; 8] = *b"DQRSNAP\0";
/// The framing version written in the trailer.
pub const SNAPSHOT_FRAME_VERSION: u32 = 1;
/// Length of the trailer in bytes.
pub const SNAPSHOT_TRAILER_LEN: usize = 24;

/// Why an image failed its end-to-end check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// Shorter than a trailer.
    #[error("snapshot image of {0} bytes is shorter than its trailer")]
    TooShort(u64),
    /// The trailer's magic bytes are wrong.
    #[error("snapshot trailer magic mismatch")]
    BadMagic,
    /// A framing version this build does not know.
    #[error("unknown snapshot framing version {0}")]
    UnknownVersion(u32),
    /// The trailer's length does not match the payload received.
    #[error("snapshot payload is {got} bytes, trailer says {expected}")]
    BadLength {
        /// From the trailer.
        expected: u64,
        /// Received.
        got: u64,
    },
    /// The payload's CRC32C does not match the trailer.
    #[error("snapshot payload CRC32C mismatch (trailer {expected:#010x}, computed {got:#010x})")]
    BadChecksum {
        /// From the trailer.
        expected: u32,
        /// Computed.
        got: u32,
    },
}

/// Encodes the trailer for a payload of `len` bytes with CRC32C `crc`.
pub fn trailer(len: u64, crc: u32) -> [u8; SNAPSHOT_TRAILER_LEN] {
    let mut t = [0u8; SNAPSHOT_TRAILER_LEN];
    t[..8].copy_from_slice(&SNAPSHOT_TRAILER_MAGIC);
    t[8..12].copy_from_slice(&SNAPSHOT_FRAME_VERSION.to_le_bytes());
    t[12..16].copy_from_slice(&crc.to_le_bytes());
    t[16..24].copy_from_slice(&len.to_le_bytes());
    t
}

/// A writer that frames what the state machine writes: call [`FramedWriter::finish`] at the end.
#[derive(Debug)]
pub struct FramedWriter<W: Write> {
    inner: W,
    len: u64,
    crc: u32,
}

impl<W: Write> FramedWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        FramedWriter { inner, len: 0, crc: 0 }
    }

    /// Writes the trailer and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.inner.write_all(&trailer(self.len, self.crc))?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for FramedWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Checks a whole image; returns the payload's length.
pub fn verify(image: &[u8]) -> Result<usize, FrameError> {
    let mut c = StreamCheck::default();
    c.update(image);
    c.finish().map(|n| n as usize)
}

/// The buffer [`verify_reader`] reads an image through.
pub const VERIFY_BUFFER: usize = 256 * 1024;

/// Checks an image read from `r` in pieces of at most [`VERIFY_BUFFER`] bytes (memory does not
/// grow with the image); returns the payload's length. The outer error is a failed read.
pub fn verify_reader(r: &mut dyn Read) -> io::Result<Result<u64, FrameError>> {
    let mut c = StreamCheck::default();
    let mut buf = vec![0u8; VERIFY_BUFFER];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return Ok(c.finish()),
            Ok(n) => c.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Checks an image that arrives in pieces (the last [`SNAPSHOT_TRAILER_LEN`] bytes are held back
/// until the end, since only then is it known that they are the trailer).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamCheck {
    crc: u32,
    payload: u64,
    tail: Vec<u8>,
}

impl StreamCheck {
    /// Bytes seen so far (payload and held-back tail).
    pub fn received(&self) -> u64 {
        self.payload + self.tail.len() as u64
    }

    /// Feeds the next bytes.
    pub fn update(&mut self, data: &[u8]) {
        let total = self.tail.len() + data.len();
        if total <= SNAPSHOT_TRAILER_LEN {
            self.tail.extend_from_slice(data);
            return;
        }
        let release = total - SNAPSHOT_TRAILER_LEN;
        // Release `release` bytes: first from the held tail, then from `data`.
        let from_tail = release.min(self.tail.len());
        self.crc = crc32c::crc32c_append(self.crc, &self.tail[..from_tail]);
        let from_data = release - from_tail;
        self.crc = crc32c::crc32c_append(self.crc, &data[..from_data]);
        self.payload += release as u64;
        let mut tail = self.tail[from_tail..].to_vec();
        tail.extend_from_slice(&data[from_data..]);
        self.tail = tail;
    }

    /// Checks the trailer; returns the payload's length.
    pub fn finish(&self) -> Result<u64, FrameError> {
        if self.tail.len() < SNAPSHOT_TRAILER_LEN {
            return Err(FrameError::TooShort(self.received()));
        }
        let t = &self.tail;
        if t[..8] != SNAPSHOT_TRAILER_MAGIC {
            return Err(FrameError::BadMagic);
        }
        let u32at = |o: usize| u32::from_le_bytes([t[o], t[o + 1], t[o + 2], t[o + 3]]);
        let version = u32at(8);
        if version != SNAPSHOT_FRAME_VERSION {
            return Err(FrameError::UnknownVersion(version));
        }
        let crc = u32at(12);
        let mut l = [0u8; 8];
        l.copy_from_slice(&t[16..24]);
        let len = u64::from_le_bytes(l);
        if len != self.payload {
            return Err(FrameError::BadLength { expected: len, got: self.payload });
        }
        if crc != self.crc {
            return Err(FrameError::BadChecksum { expected: crc, got: self.crc });
        }
        Ok(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(payload: &[u8]) -> Vec<u8> {
        let mut w = FramedWriter::new(Vec::new());
        w.write_all(payload).unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn round_trip_in_any_split() {
        let payload: Vec<u8> = (0..100u8).collect();
        let img = image(&payload);
        assert_eq!(img.len(), 100 + SNAPSHOT_TRAILER_LEN);
        assert_eq!(verify(&img), Ok(100));
        for split in [1usize, 3, 7, 24, 25, 50] {
            let mut c = StreamCheck::default();
            for piece in img.chunks(split) {
                c.update(piece);
            }
            assert_eq!(c.finish(), Ok(100), "split {split}");
            assert_eq!(c.received(), img.len() as u64);
        }
        assert_eq!(verify(&image(&[])), Ok(0));
    }

    #[test]
    fn every_flipped_bit_is_caught() {
        let img = image(b"hello snapshot");
        for byte in 0..img.len() {
            for bit in 0..8 {
                let mut bad = img.clone();
                bad[byte] ^= 1 << bit;
                assert!(verify(&bad).is_err(), "flip {byte}:{bit} passed");
            }
        }
        assert_eq!(verify(&img[..10]), Err(FrameError::TooShort(10)));
        assert!(matches!(verify(&img[1..]), Err(FrameError::BadLength { .. } | FrameError::BadChecksum { .. })));
    }

    #[test]
    fn a_reader_is_checked_in_bounded_pieces() {
        let payload: Vec<u8> = (0..(3 * VERIFY_BUFFER + 17)).map(|i| (i * 7) as u8).collect();
        let img = image(&payload);
        assert_eq!(verify_reader(&mut &img[..]).unwrap(), Ok(payload.len() as u64));
        let mut bad = img.clone();
        bad[VERIFY_BUFFER + 3] ^= 1;
        assert!(matches!(verify_reader(&mut &bad[..]).unwrap(), Err(FrameError::BadChecksum { .. })));
        assert_eq!(verify_reader(&mut &img[..5]).unwrap(), Err(FrameError::TooShort(5)));
    }
}
