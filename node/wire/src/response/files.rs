//! FILES (type 9), the reply to DUMP.
//!
//! ```text
//! u64 n
//! n × (text name, u64 size, size raw bytes, zero padding to a word)
//! ```
//! There is no second length prefix. dqlite's sizes are multiples of the page size,
//! so the padding is normally empty; the codec pads and skips it in case it is not.

use super::{File, Response};
use crate::buf::{pad, put_text, put_u64, Reader};
use crate::error::{DecodeError, EncodeError};

pub(super) fn encode(files: &[File<'_>], out: &mut Vec<u8>) -> Result<(), EncodeError> {
    put_u64(out, files.len() as u64);
    for file in files {
        put_text(out, file.name)?;
        put_u64(out, file.data.len() as u64);
        out.extend_from_slice(file.data);
        pad(out, file.data.len());
    }
    Ok(())
}

pub(super) fn decode(body: &[u8]) -> Result<Response<'_>, DecodeError> {
    let mut r = Reader::new(body);
    let n = r.count("files", 16)?;
    let mut files = Vec::with_capacity(n);
    for _ in 0..n {
        let name = r.text("file name")?;
        let size = r.u64("file size")?;
        let size = usize::try_from(size).map_err(|_| DecodeError::Truncated { what: "file data" })?;
        let data = r.bytes(size, "file data")?;
        r.align("file padding")?;
        files.push(File { name, data });
    }
    r.finish()?;
    Ok(Response::Files { files })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::header::Header;
    use crate::response::DecodeContext;

    #[test]
    fn files_are_byte_exact() {
        let page = [0x5a; 8];
        let resp =
            Response::Files { files: vec![File { name: "db", data: &page }, File { name: "db-wal", data: &[] }] };
        let bytes = resp.to_bytes().unwrap();
        assert_eq!(
            bytes,
            [
                &[6, 0, 0, 0, 9, 0, 0, 0][..],
                &[2, 0, 0, 0, 0, 0, 0, 0],
                b"db\0\0\0\0\0\0",
                &[8, 0, 0, 0, 0, 0, 0, 0],
                &page,
                b"db-wal\0\0",
                &[0; 8],
            ]
            .concat()
        );
        let h = Header::decode(&bytes).unwrap();
        assert_eq!(Response::decode(&h, &bytes[8..], &DecodeContext::default()).unwrap(), resp);
    }

    #[test]
    fn oversized_file_is_an_error() {
        let mut body = Vec::new();
        put_u64(&mut body, 1);
        put_text(&mut body, "db").unwrap();
        put_u64(&mut body, u64::MAX);
        assert!(matches!(decode(&body), Err(DecodeError::Truncated { .. })));
    }
}
