//! Bodies of the database and SQL requests: OPEN, PREPARE, EXEC, QUERY, FINALIZE,
//! EXEC_SQL, QUERY_SQL, INTERRUPT, DUMP.
//!
//! ```text
//! OPEN      text name, u64 flags, text vfs
//! PREPARE   u64 db, text sql
//! EXEC      u32 db, u32 stmt, params(32)-tuple      (schema 0 or 1)
//! QUERY     u32 db, u32 stmt, params(32)-tuple      (schema 0 or 1)
//! FINALIZE  u32 db, u32 stmt
//! EXEC_SQL  u64 db, text sql, params(32)-tuple      (schema 0 or 1)
//! QUERY_SQL u64 db, text sql, params(32)-tuple      (schema 0 or 1)
//! INTERRUPT u64 db
//! DUMP      text name
//! ```
//! Note that `db` is a `u64` in PREPARE/EXEC_SQL/QUERY_SQL/INTERRUPT but a `u32` in
//! EXEC/QUERY/FINALIZE; a `u64` db id above `u32::MAX` decodes as an error.

use super::{Request, RequestType};
use crate::buf::{put_text, put_u32, put_u64, Reader};
use crate::error::{DecodeError, EncodeError};
use crate::ids::{DbId, StmtId};
use crate::tuple::{decode_params, encode_params, Params, Schema};

/// Encode the body of a request of this family (every request not in `cluster`).
pub(super) fn encode_body(req: &Request<'_>, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    match req {
        Request::Open { name, flags, vfs } => {
            put_text(out, name)?;
            put_u64(out, *flags);
            put_text(out, vfs)?;
        }
        Request::Prepare { db, sql, .. } => {
            put_u64(out, u64::from(db.0));
            put_text(out, sql)?;
        }
        Request::Exec { db, stmt, params, schema } | Request::Query { db, stmt, params, schema } => {
            put_u32(out, db.0);
            put_u32(out, stmt.0);
            encode_params(params, *schema, out)?;
        }
        Request::Finalize { db, stmt } => {
            put_u32(out, db.0);
            put_u32(out, stmt.0);
        }
        Request::ExecSql { db, sql, params, schema } | Request::QuerySql { db, sql, params, schema } => {
            put_u64(out, u64::from(db.0));
            put_text(out, sql)?;
            encode_params(params, *schema, out)?;
        }
        Request::Interrupt { db } => put_u64(out, u64::from(db.0)),
        Request::Dump { name } => put_text(out, name)?,
        // The cluster family is encoded before this function is reached.
        _ => {}
    }
    Ok(())
}

fn db64(r: &mut Reader<'_>) -> Result<DbId, DecodeError> {
    let v = r.u64("database id")?;
    u32::try_from(v).map(DbId).map_err(|_| DecodeError::OutOfRange { what: "database id", value: v })
}

/// Decode the body of a request of this family.
pub(super) fn decode_body(ty: RequestType, schema: Schema, body: &[u8]) -> Result<Request<'_>, DecodeError> {
    let mut r = Reader::new(body);
    let req = match ty {
        RequestType::Open => {
            Request::Open { name: r.text("database name")?, flags: r.u64("open flags")?, vfs: r.text("vfs name")? }
        }
        RequestType::Prepare => Request::Prepare { db: db64(&mut r)?, sql: r.text("sql")?, schema },
        RequestType::Exec | RequestType::Query => {
            let db = DbId(r.u32("database id")?);
            let stmt = StmtId(r.u32("statement id")?);
            let params = Params::from_vec(decode_params(&mut r, schema)?);
            if ty == RequestType::Exec {
                Request::Exec { db, stmt, params, schema }
            } else {
                Request::Query { db, stmt, params, schema }
            }
        }
        RequestType::Finalize => {
            Request::Finalize { db: DbId(r.u32("database id")?), stmt: StmtId(r.u32("statement id")?) }
        }
        RequestType::ExecSql | RequestType::QuerySql => {
            let db = db64(&mut r)?;
            let sql = r.text("sql")?;
            let params = Params::from_vec(decode_params(&mut r, schema)?);
            if ty == RequestType::ExecSql {
                Request::ExecSql { db, sql, params, schema }
            } else {
                Request::QuerySql { db, sql, params, schema }
            }
        }
        RequestType::Interrupt => Request::Interrupt { db: db64(&mut r)? },
        RequestType::Dump => Request::Dump { name: r.text("database name")? },
        // Every other type is decoded by the cluster family first.
        other => return Err(DecodeError::UnknownRequestType(other.code())),
    };
    r.finish()?;
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::header::Header;
    use crate::test_util::hex;
    use crate::value::Value;

    #[test]
    fn query_sql_matches_the_worked_example() {
        // PROTOCOL.md 5.1: QUERY_SQL db=0 "SELECT ?" params=(INTEGER 1).
        let expected = hex("05000000 09 00 0000 | 0000000000000000 | 53454c454354203f 0000000000000000
             | 0101000000000000 | 0100000000000000");
        let params = [Value::Integer(1)];
        let req = Request::QuerySql {
            db: DbId(0),
            sql: "SELECT ?",
            params: Params::from_values(&params),
            schema: Schema::V0,
        };
        assert_eq!(req.to_bytes().unwrap(), expected);
        let header = Header::decode(&expected).unwrap();
        assert_eq!(Request::decode(&header, &expected[8..]).unwrap(), req);
    }

    #[test]
    fn open_prepare_exec_finalize_are_byte_exact() {
        let open = Request::Open { name: "db", flags: 0, vfs: "volatile" };
        assert_eq!(
            open.to_bytes().unwrap(),
            [&[4, 0, 0, 0, 3, 0, 0, 0][..], b"db\0\0\0\0\0\0", &[0; 8], b"volatile\0\0\0\0\0\0\0\0"].concat()
        );
        let prepare = Request::Prepare { db: DbId(0), sql: "SELECT 1", schema: Schema::V1 };
        assert_eq!(
            prepare.to_bytes().unwrap(),
            [&[3, 0, 0, 0, 4, 1, 0, 0][..], &[0; 8], b"SELECT 1", &[0; 8]].concat()
        );
        let values = [Value::Text("a".into())];
        let exec =
            Request::Exec { db: DbId(0), stmt: StmtId(2), params: Params::from_values(&values), schema: Schema::V1 };
        assert_eq!(
            exec.to_bytes().unwrap(),
            [&[3, 0, 0, 0, 5, 1, 0, 0][..], &[0, 0, 0, 0, 2, 0, 0, 0], &[1, 0, 0, 0, 3, 0, 0, 0], b"a\0\0\0\0\0\0\0"]
                .concat()
        );
        let exec0 = Request::Exec { db: DbId(0), stmt: StmtId(2), params: Params::none(), schema: Schema::V0 };
        assert_eq!(exec0.to_bytes().unwrap(), [1, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0]);
        let fin = Request::Finalize { db: DbId(0), stmt: StmtId(1) };
        assert_eq!(fin.to_bytes().unwrap(), [1, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]);
        let dump = Request::Dump { name: "db.bin" };
        assert_eq!(dump.to_bytes().unwrap(), [&[1, 0, 0, 0, 15, 0, 0, 0][..], b"db.bin\0\0"].concat());
        let int = Request::Interrupt { db: DbId(0) };
        assert_eq!(int.to_bytes().unwrap(), [1, 0, 0, 0, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn too_many_params_and_nul_in_sql_are_encode_errors() {
        let values = vec![Value::Null; 300];
        let req = Request::ExecSql { db: DbId(0), sql: "x", params: Params::from_values(&values), schema: Schema::V0 };
        let mut out = vec![1, 2, 3];
        assert_eq!(req.encode(&mut out), Err(EncodeError::TooManyParams { count: 300, max: 255 }));
        assert_eq!(out, [1, 2, 3], "nothing appended on error");
        let req = Request::ExecSql { db: DbId(0), sql: "a\0b", params: Params::none(), schema: Schema::V0 };
        assert_eq!(req.to_bytes(), Err(EncodeError::TextContainsNul));
    }

    #[test]
    fn db_id_above_u32_is_an_error() {
        let h = Header::new(10, 0, 1);
        assert!(matches!(Request::decode(&h, &(1u64 << 32).to_le_bytes()), Err(DecodeError::OutOfRange { .. })));
    }
}
