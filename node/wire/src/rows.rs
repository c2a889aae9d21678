//! ROWS responses (PROTOCOL.md 5.1): column names, row tuples, PART/DONE marker.
//!
//! ```text
//! u64  n_columns
//! text column_name[n_columns]
//! row-tuple row[...]            zero or more
//! u64  marker                   0xffff_ffff_ffff_ffff DONE | 0xeeee_eeee_eeee_eeee PART
//! ```
//!
//! Client side, stream rows out of each ROWS message without collecting them:
//! [`Rows`] borrows the body; [`RowsCursor`] keeps only offsets, so a driver can store it
//! next to the owned message buffer across `await` points. After `PART`, the next ROWS
//! message arrives without a new request; after `DONE` the result is complete.
//!
//! Server side, [`RowsWriter`] fills one message up to a byte budget (dqlite stops adding
//! rows once the message reaches 4096 bytes), then finishes it with PART or DONE.
//! [`RowsBatch`] is the whole message decoded at once (tests, small results).

use crate::buf::{put_text, put_u64, Reader};
use crate::error::{DecodeError, EncodeError};
use crate::header::{patch_header, write_message, HEADER_LEN};
use crate::response::ResponseType;
use crate::tuple::{decode_row_into, encode_row, row_header_len};
use crate::value::ValueRef;

/// Marker word ending the last ROWS message of a result.
pub const ROWS_DONE: u64 = 0xffff_ffff_ffff_ffff;
/// Marker word ending a ROWS message that is followed by another.
pub const ROWS_PART: u64 = 0xeeee_eeee_eeee_eeee;
/// dqlite's batch budget: stop adding rows once the message (header included) reaches this.
pub const DEFAULT_ROWS_BUDGET_BYTES: usize = 4096;

/// How a ROWS message ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RowsEnd {
    /// More ROWS messages follow (without a new request).
    Part,
    /// The result set is complete.
    Done,
}

impl RowsEnd {
    /// The marker word.
    pub fn marker(self) -> u64 {
        match self {
            RowsEnd::Part => ROWS_PART,
            RowsEnd::Done => ROWS_DONE,
        }
    }
}

/// One step of [`RowsCursor::next_row`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowsStep {
    /// A row was decoded into the output vector.
    Row,
    /// The end marker was reached (and nothing trails it).
    End(RowsEnd),
}

/// Decoding position in a ROWS body, detached from the body's lifetime.
///
/// Always pass the same body to every method. Passing another body cannot panic, but
/// yields errors or garbage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowsCursor {
    columns: usize,
    names_start: usize,
    pos: usize,
    end: Option<RowsEnd>,
}

impl RowsCursor {
    /// Parse the column count and names at the start of a ROWS body.
    pub fn new(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let columns = r.count("column names", 8)?;
        let names_start = r.position();
        for _ in 0..columns {
            r.text("column name")?;
        }
        Ok(RowsCursor { columns, names_start, pos: r.position(), end: None })
    }

    /// Number of columns of every row.
    pub fn column_count(&self) -> usize {
        self.columns
    }

    /// The column names, borrowed from `body`.
    pub fn column_names<'b>(&self, body: &'b [u8]) -> Result<Vec<&'b str>, DecodeError> {
        let mut r = Reader::at(body, self.names_start);
        (0..self.columns).map(|_| r.text("column name")).collect()
    }

    /// How the message ended, once [`RowsStep::End`] was returned.
    pub fn end(&self) -> Option<RowsEnd> {
        self.end
    }

    /// Decode the next row of `body` into `out` (cleared first), or reach the end marker.
    pub fn next_row<'b>(&mut self, body: &'b [u8], out: &mut Vec<ValueRef<'b>>) -> Result<RowsStep, DecodeError> {
        out.clear();
        if let Some(end) = self.end {
            return Ok(RowsStep::End(end));
        }
        let mut r = Reader::at(body, self.pos);
        let first = r.peek_u8();
        if self.columns == 0 && first.is_none() {
            // No columns: there can be no rows; accept a missing marker as the end.
            self.end = Some(RowsEnd::Done);
            return Ok(RowsStep::End(RowsEnd::Done));
        }
        match first {
            None => return Err(DecodeError::Truncated { what: "rows end marker" }),
            Some(0xee) | Some(0xff) => {
                let marker = r.u64("rows end marker")?;
                let end = match marker {
                    ROWS_PART => RowsEnd::Part,
                    ROWS_DONE => RowsEnd::Done,
                    other => return Err(DecodeError::BadRowsMarker(other)),
                };
                r.finish()?;
                self.pos = r.position();
                self.end = Some(end);
                return Ok(RowsStep::End(end));
            }
            Some(_) if self.columns == 0 => {
                return Err(DecodeError::BadRowsMarker(r.u64("rows end marker")?));
            }
            Some(_) => {}
        }
        decode_row_into(&mut r, self.columns, out)?;
        self.pos = r.position();
        Ok(RowsStep::Row)
    }
}

/// A ROWS message body being streamed row by row (borrowing the body).
#[derive(Debug, Clone)]
pub struct Rows<'a> {
    body: &'a [u8],
    columns: Vec<&'a str>,
    cursor: RowsCursor,
}

impl<'a> Rows<'a> {
    /// Parse the column header of a ROWS body.
    pub fn new(body: &'a [u8]) -> Result<Self, DecodeError> {
        let cursor = RowsCursor::new(body)?;
        let columns = cursor.column_names(body)?;
        Ok(Rows { body, columns, cursor })
    }

    /// Column names.
    pub fn column_names(&self) -> &[&'a str] {
        &self.columns
    }

    /// Number of columns.
    pub fn column_count(&self) -> usize {
        self.columns.len()
    }

    /// Decode the next row into `out` (cleared first); `Ok(false)` at the end marker.
    pub fn next_row_into(&mut self, out: &mut Vec<ValueRef<'a>>) -> Result<bool, DecodeError> {
        Ok(self.cursor.next_row(self.body, out)? == RowsStep::Row)
    }

    /// Decode the next row; `Ok(None)` at the end marker (see [`Rows::end`]).
    pub fn next_row(&mut self) -> Result<Option<Vec<ValueRef<'a>>>, DecodeError> {
        let mut out = Vec::with_capacity(self.columns.len());
        Ok(self.next_row_into(&mut out)?.then_some(out))
    }

    /// How the message ended, once the rows are exhausted.
    pub fn end(&self) -> Option<RowsEnd> {
        self.cursor.end()
    }

    /// The detached cursor (e.g. to store next to an owned buffer).
    pub fn into_cursor(self) -> RowsCursor {
        self.cursor
    }
}

impl<'a> Iterator for Rows<'a> {
    type Item = Result<Vec<ValueRef<'a>>, DecodeError>;

    /// Yields rows, then `None` at the marker. After an error, yields `None`.
    fn next(&mut self) -> Option<Self::Item> {
        match self.next_row() {
            Ok(Some(row)) => Some(Ok(row)),
            Ok(None) => None,
            Err(e) => {
                // Stop after the first error.
                self.cursor.end = Some(RowsEnd::Done);
                Some(Err(e))
            }
        }
    }
}

/// A whole ROWS message decoded at once.
#[derive(Debug, Clone, PartialEq)]
pub struct RowsBatch<'a> {
    /// Column names.
    pub columns: Vec<&'a str>,
    /// Rows, each with one value per column.
    pub rows: Vec<Vec<ValueRef<'a>>>,
    /// PART or DONE.
    pub end: RowsEnd,
}

impl<'a> RowsBatch<'a> {
    /// Decode a whole ROWS body.
    pub fn decode(body: &'a [u8]) -> Result<Self, DecodeError> {
        let mut rows_iter = Rows::new(body)?;
        let columns = rows_iter.column_names().to_vec();
        let mut rows = Vec::new();
        while let Some(row) = rows_iter.next_row()? {
            rows.push(row);
        }
        let end = rows_iter.end().ok_or(DecodeError::Truncated { what: "rows end marker" })?;
        Ok(RowsBatch { columns, rows, end })
    }

    /// Append the body (no header), all rows regardless of size.
    pub(crate) fn encode_body(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        encode_columns(self.columns.iter().copied(), out)?;
        for row in &self.rows {
            check_width(self.columns.len(), row.len())?;
            encode_row(row, out)?;
        }
        put_u64(out, self.end.marker());
        Ok(())
    }

    /// Append the whole message (header and body).
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        write_message(out, ResponseType::Rows.code(), 0, |out| self.encode_body(out))
    }
}

fn encode_columns<'n>(names: impl ExactSizeIterator<Item = &'n str>, out: &mut Vec<u8>) -> Result<usize, EncodeError> {
    let n = names.len();
    put_u64(out, n as u64);
    for name in names {
        put_text(out, name)?;
    }
    Ok(n)
}

fn check_width(expected: usize, got: usize) -> Result<(), EncodeError> {
    if expected == got {
        Ok(())
    } else {
        Err(EncodeError::ColumnCountMismatch { expected, got })
    }
}

/// Server-side encoder of one ROWS message, filled up to a byte budget.
///
/// Call order: [`RowsWriter::begin`], then [`RowsWriter::push_row`] while
/// [`RowsWriter::is_full`] is false and the statement yields rows, then
/// [`RowsWriter::finish`] with `Part` (full, more rows pending) or `Done`.
/// Dropping the writer without `finish` removes the partial message from the buffer.
#[derive(Debug)]
pub struct RowsWriter<'o> {
    out: &'o mut Vec<u8>,
    start: usize,
    columns: usize,
    rows: usize,
    budget_bytes: usize,
    finished: bool,
}

impl<'o> RowsWriter<'o> {
    /// Start a ROWS message at the end of `out`: header placeholder, column count, names.
    /// `budget_bytes` counts the whole message, header included ([`DEFAULT_ROWS_BUDGET_BYTES`]).
    pub fn begin<'n>(out: &'o mut Vec<u8>, column_names: &[&'n str], budget_bytes: usize) -> Result<Self, EncodeError> {
        let start = out.len();
        out.extend_from_slice(&[0u8; HEADER_LEN]);
        if let Err(e) = encode_columns(column_names.iter().copied(), out) {
            out.truncate(start);
            return Err(e);
        }
        Ok(RowsWriter { out, start, columns: column_names.len(), rows: 0, budget_bytes, finished: false })
    }

    /// Append one row. Rows are always accepted (the budget is checked by the caller
    /// with [`RowsWriter::is_full`] after each row, as dqlite does).
    pub fn push_row(&mut self, values: &[ValueRef<'_>]) -> Result<(), EncodeError> {
        check_width(self.columns, values.len())?;
        encode_row(values, self.out)?;
        self.rows += 1;
        Ok(())
    }

    /// Bytes the message occupies so far (header included, marker excluded).
    pub fn message_bytes(&self) -> usize {
        self.out.len() - self.start
    }

    /// Bytes a row of these values would add.
    pub fn row_bytes(values: &[ValueRef<'_>]) -> usize {
        row_header_len(values.len()) + values.iter().map(|v| v.encoded_len()).sum::<usize>()
    }

    /// True once the message reached the budget: finish it with `Part`.
    pub fn is_full(&self) -> bool {
        self.message_bytes() >= self.budget_bytes
    }

    /// Rows written so far.
    pub fn row_count(&self) -> usize {
        self.rows
    }

    /// Write the marker and patch the header.
    pub fn finish(mut self, end: RowsEnd) -> Result<(), EncodeError> {
        put_u64(self.out, end.marker());
        patch_header(self.out, self.start, ResponseType::Rows.code(), 0)?;
        self.finished = true;
        Ok(())
    }
}

impl Drop for RowsWriter<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.out.truncate(self.start);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::header::{parse, Header};
    use crate::test_util::hex;

    #[test]
    fn worked_example_response_is_byte_exact() {
        // PROTOCOL.md 5.1: the reply to QUERY_SQL "SELECT ?" with INTEGER 1.
        let bytes = hex("05000000 07 00 0000 | 0100000000000000 | 3f00000000000000
             | 0100000000000000 | 0100000000000000 | ffffffffffffffff");
        let batch = RowsBatch { columns: vec!["?"], rows: vec![vec![ValueRef::Integer(1)]], end: RowsEnd::Done };
        let mut out = Vec::new();
        batch.encode(&mut out).unwrap();
        assert_eq!(out, bytes);
        let mut out2 = Vec::new();
        let mut w = RowsWriter::begin(&mut out2, &["?"], DEFAULT_ROWS_BUDGET_BYTES).unwrap();
        w.push_row(&[ValueRef::Integer(1)]).unwrap();
        assert!(!w.is_full());
        w.finish(RowsEnd::Done).unwrap();
        assert_eq!(out2, bytes);

        let (msg, _) = parse(&bytes, 4096).unwrap().unwrap();
        assert_eq!(RowsBatch::decode(msg.body).unwrap(), batch);
        let mut rows = Rows::new(msg.body).unwrap();
        assert_eq!(rows.column_names(), ["?"]);
        assert_eq!(rows.next_row().unwrap(), Some(vec![ValueRef::Integer(1)]));
        assert_eq!(rows.next_row().unwrap(), None);
        assert_eq!(rows.end(), Some(RowsEnd::Done));
    }

    #[test]
    fn writer_stops_at_the_budget_like_dqlite() {
        // One INTEGER column: 255 rows per batch, body 513 words (PROTOCOL.md 5.1).
        let mut out = Vec::new();
        let mut w = RowsWriter::begin(&mut out, &["?"], DEFAULT_ROWS_BUDGET_BYTES).unwrap();
        let mut i = 0;
        while !w.is_full() {
            w.push_row(&[ValueRef::Integer(i)]).unwrap();
            i += 1;
        }
        assert_eq!(w.row_count(), 255);
        w.finish(RowsEnd::Part).unwrap();
        let header = Header::decode(&out).unwrap();
        assert_eq!(header.words, 513);
        assert_eq!(header.message_type, 7);
        let (msg, _) = parse(&out, 8192).unwrap().unwrap();
        let batch = RowsBatch::decode(msg.body).unwrap();
        assert_eq!(batch.rows.len(), 255);
        assert_eq!(batch.rows[254], vec![ValueRef::Integer(254)]);
        assert_eq!(batch.end, RowsEnd::Part);
    }

    #[test]
    fn cursor_streams_across_a_detached_buffer() {
        let batch = RowsBatch {
            columns: vec!["a", "b"],
            rows: vec![
                vec![ValueRef::Text("x"), ValueRef::Null],
                vec![ValueRef::Blob(b"12345678"), ValueRef::UnixTime(-1)],
            ],
            end: RowsEnd::Part,
        };
        let mut bytes = Vec::new();
        batch.encode(&mut bytes).unwrap();
        let owned: Vec<u8> = bytes[HEADER_LEN..].to_vec();
        let mut cursor = RowsCursor::new(&owned).unwrap();
        assert_eq!(cursor.column_count(), 2);
        assert_eq!(cursor.column_names(&owned).unwrap(), ["a", "b"]);
        let mut row = Vec::new();
        let mut got = Vec::new();
        while cursor.next_row(&owned, &mut row).unwrap() == RowsStep::Row {
            got.push(row.clone());
        }
        assert_eq!(got, batch.rows);
        assert_eq!(cursor.end(), Some(RowsEnd::Part));
        assert_eq!(cursor.next_row(&owned, &mut row).unwrap(), RowsStep::End(RowsEnd::Part));
    }

    #[test]
    fn malformed_rows_are_errors() {
        let ok = hex("0100000000000000 3f00000000000000 0100000000000000 0100000000000000 ffffffffffffffff");
        assert!(RowsBatch::decode(&ok).is_ok());
        // Missing marker.
        assert!(matches!(RowsBatch::decode(&ok[..32]), Err(DecodeError::Truncated { .. })));
        // Trailing bytes after the marker.
        let mut trailing = ok.clone();
        trailing.extend_from_slice(&[0; 8]);
        assert_eq!(RowsBatch::decode(&trailing), Err(DecodeError::TrailingBytes(8)));
        // A marker that is neither PART nor DONE.
        let mut bad_marker = ok[..32].to_vec();
        bad_marker.extend_from_slice(&[0xee, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(RowsBatch::decode(&bad_marker), Err(DecodeError::BadRowsMarker(0xee)));
        // Unknown type nibble.
        let mut bad_type = ok.clone();
        bad_type[16] = 0x07;
        assert_eq!(RowsBatch::decode(&bad_type), Err(DecodeError::UnknownValueType(7)));
        // Absurd column count.
        let huge = hex("ffffffffffffff7f 0000000000000000");
        assert!(matches!(RowsBatch::decode(&huge), Err(DecodeError::CountTooLarge { .. })));
        // Zero columns: only a marker may follow.
        assert_eq!(RowsBatch::decode(&hex("0000000000000000 0100000000000000")), Err(DecodeError::BadRowsMarker(1)));
        assert_eq!(RowsBatch::decode(&hex("0000000000000000 ffffffffffffffff")).unwrap().end, RowsEnd::Done);
        assert_eq!(RowsBatch::decode(&hex("0000000000000000")).unwrap().end, RowsEnd::Done);
    }

    #[test]
    fn writer_checks_width_and_cleans_up_when_dropped() {
        let mut out = vec![9];
        {
            let mut w = RowsWriter::begin(&mut out, &["a", "b"], 4096).unwrap();
            assert_eq!(w.push_row(&[ValueRef::Null]), Err(EncodeError::ColumnCountMismatch { expected: 2, got: 1 }));
            assert_eq!(RowsWriter::row_bytes(&[ValueRef::Null, ValueRef::Text("12345678")]), 8 + 8 + 16);
        }
        assert_eq!(out, [9]);
    }
}
