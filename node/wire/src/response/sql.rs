//! Database and statement responses.
//!
//! ```text
//! DB      u32 id, u32 unused
//! STMT    u32 db, u32 id, u64 params[, u64 tail_offset if schema 1]
//! RESULT  u64 last_insert_id, u64 rows_affected
//! EMPTY   u64 0
//! ```

use super::{Response, ResponseType};
use crate::buf::{put_u32, put_u64, Reader};
use crate::error::{DecodeError, EncodeError};
use crate::ids::{DbId, StmtId};

pub(super) fn encode(resp: &Response<'_>, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    match resp {
        Response::Db { id } => {
            put_u32(out, id.0);
            put_u32(out, 0);
        }
        Response::Stmt { db, id, params, tail_offset } => {
            put_u32(out, db.0);
            put_u32(out, id.0);
            put_u64(out, *params);
            if let Some(tail) = tail_offset {
                put_u64(out, *tail);
            }
        }
        Response::ExecResult { last_insert_id, rows_affected } => {
            put_u64(out, *last_insert_id);
            put_u64(out, *rows_affected);
        }
        Response::Empty => put_u64(out, 0),
        // Other families are dispatched elsewhere by `Response::encode`.
        _ => {}
    }
    Ok(())
}

pub(super) fn decode(ty: ResponseType, schema: u8, body: &[u8]) -> Result<Response<'_>, DecodeError> {
    let mut r = Reader::new(body);
    let resp = match ty {
        ResponseType::Db => {
            let id = DbId(r.u32("database id")?);
            r.u32("database unused field")?;
            Response::Db { id }
        }
        ResponseType::Stmt => Response::Stmt {
            db: DbId(r.u32("database id")?),
            id: StmtId(r.u32("statement id")?),
            params: r.u64("statement params")?,
            tail_offset: if schema == 1 { Some(r.u64("statement tail offset")?) } else { None },
        },
        ResponseType::Result => {
            Response::ExecResult { last_insert_id: r.u64("last insert id")?, rows_affected: r.u64("rows affected")? }
        }
        ResponseType::Empty => {
            r.u64("empty unused field")?;
            Response::Empty
        }
        other => return Err(DecodeError::UnknownResponseType(other.code())),
    };
    r.finish()?;
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sql_responses_are_byte_exact() {
        assert_eq!(Response::Db { id: DbId(0) }.to_bytes().unwrap(), [1, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            Response::Stmt { db: DbId(0), id: StmtId(2), params: 3, tail_offset: None }.to_bytes().unwrap(),
            [2, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            Response::Stmt { db: DbId(0), id: StmtId(2), params: 3, tail_offset: Some(9) }.to_bytes().unwrap(),
            [3, 0, 0, 0, 5, 1, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            Response::ExecResult { last_insert_id: 5, rows_affected: 1 }.to_bytes().unwrap(),
            [2, 0, 0, 0, 6, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(Response::Empty.to_bytes().unwrap(), [1, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    }
}
