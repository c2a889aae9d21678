//! FAILURE (type 0): `u64 code`, `text message`.

use super::Response;
use crate::buf::{put_text, put_u64, Reader};
use crate::error::{DecodeError, EncodeError};

pub(super) fn encode(code: u64, message: &str, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    put_u64(out, code);
    put_text(out, message)
}

pub(super) fn decode(body: &[u8]) -> Result<Response<'_>, DecodeError> {
    let mut r = Reader::new(body);
    let resp = Response::Failure { code: r.u64("failure code")?, message: r.text("failure message")? };
    r.finish()?;
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codes;
    use crate::header::Header;
    use crate::response::DecodeContext;

    #[test]
    fn failure_is_byte_exact() {
        let resp = Response::Failure { code: codes::SQLITE_IOERR_NOT_LEADER, message: "not leader" };
        let bytes = resp.to_bytes().unwrap();
        assert_eq!(
            bytes,
            [&[3, 0, 0, 0, 0, 0, 0, 0][..], &[0x0a, 0x28, 0, 0, 0, 0, 0, 0], b"not leader\0\0\0\0\0\0"].concat()
        );
        let h = Header::decode(&bytes).unwrap();
        assert_eq!(Response::decode(&h, &bytes[8..], &DecodeContext::default()).unwrap(), resp);
        assert!(codes::is_not_leader(10250) && codes::is_not_leader(8202));
        assert!(codes::is_leadership_lost(10506) && codes::is_leadership_lost(8458));
        assert!(!codes::is_not_leader(10506));
    }
}
