//! Splitting SQL text into statements, and finding each statement's parameters.
//!
//! sqlx-sqlite runs a string of several statements one after another (SQLite's prepare hands
//! back the tail), binding the arguments across them. dqlite cannot: PREPARE keeps only the
//! first statement (1.11, silently), EXEC_SQL binds arguments to the first statement only, and
//! QUERY_SQL of a batch runs only its first statement. So the driver splits the text itself,
//! the way SQLite's tokenizer would (`sqlite3_complete`):
//!
//! * `;` ends a statement, except inside `'…'`, `"…"`, `` `…` ``, `[…]`, `-- …` and `/* … */`;
//! * inside `CREATE [TEMP|TEMPORARY] TRIGGER … BEGIN … END` only the `;` right after `END`
//!   ends the statement;
//! * statements holding only whitespace and comments are dropped (so `""`, `";"` and a file of
//!   comments are no statements at all).
//!
//! Parameters are numbered as SQLite numbers them: a bare `?` gets one more than the largest
//! index so far, `?NNN` gets `NNN`, a named `:a`/`@a`/`$a` gets the index of its first
//! occurrence. The driver binds numbered and `$NNN` parameters to that argument, and every
//! other index to the next unused argument, as sqlx-sqlite does.

/// One parameter of a statement, by the index SQLite gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Param {
    /// Taken from the next unused argument (`?`, or a name that is not a number).
    Next,
    /// Taken from argument `n` (1-based) of the whole query (`?NNN` or `$NNN`).
    Absolute(usize),
    /// A named parameter (`:a`, `@a`, `$a`): not supported by sqlx's positional arguments.
    Named(String),
}

/// One statement of a string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Piece<'a> {
    /// The statement's text, without the `;` that ends it.
    pub sql: &'a str,
    /// Its parameters by index (entry `i` is parameter `i + 1`); an index no token names is
    /// [`Param::Next`] (SQLite leaves it unbound; sqlx-sqlite binds the next argument).
    pub params: Vec<Param>,
}

/// Split `sql` into its non-empty statements.
pub(crate) fn split(sql: &str) -> Vec<Piece<'_>> {
    let bytes = sql.as_bytes();
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut i = 0;
    let mut state = Statement::default();
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'\'' | b'"' | b'`' => {
                i = skip_quoted(bytes, i, b);
                state.token(Token::Other);
            }
            b'[' => {
                i = bytes[i..].iter().position(|&c| c == b']').map_or(bytes.len(), |p| i + p + 1);
                state.token(Token::Other);
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                i = bytes[i..].iter().position(|&c| c == b'\n').map_or(bytes.len(), |p| i + p + 1);
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i = sql[i + 2..].find("*/").map_or(bytes.len(), |p| i + 2 + p + 2);
            }
            b';' => {
                i += 1;
                if state.semicolon_ends() {
                    if state.significant {
                        pieces.push(Piece { sql: &sql[start..i - 1], params: state.params() });
                    }
                    state = Statement::default();
                    start = i;
                } else {
                    state.token(Token::Other);
                }
            }
            b'?' => {
                let digits = bytes[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
                let number = sql[i + 1..i + 1 + digits].parse::<usize>().ok();
                state.param(match number {
                    Some(n) if n > 0 => ParamToken::Numbered(n),
                    _ => ParamToken::Bare,
                });
                i += 1 + digits;
                state.token(Token::Other);
            }
            b':' | b'@' | b'$' if bytes.get(i + 1).is_some_and(|&c| is_ident(c)) => {
                let len = bytes[i + 1..].iter().take_while(|&&c| is_ident(c)).count();
                state.param(ParamToken::Named(sql[i..i + 1 + len].to_owned()));
                i += 1 + len;
                state.token(Token::Other);
            }
            c if c.is_ascii_whitespace() => i += 1,
            c if is_ident(c) && !c.is_ascii_digit() => {
                let len = bytes[i..].iter().take_while(|&&c| is_ident(c)).count();
                state.token(Token::Word(&sql[i..i + len]));
                i += len;
            }
            _ => {
                // Numbers, operators, punctuation (all ASCII: bytes >= 0x80 are identifier
                // bytes): one byte at a time is enough.
                i += 1;
                state.token(Token::Other);
            }
        }
    }
    if state.significant {
        pieces.push(Piece { sql: &sql[start..], params: state.params() });
    }
    pieces
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

/// Index after the quoted run opened at `i` (a doubled quote is an escaped quote).
fn skip_quoted(bytes: &[u8], mut i: usize, quote: u8) -> usize {
    i += 1;
    while i < bytes.len() {
        if bytes[i] == quote {
            if bytes.get(i + 1) == Some(&quote) {
                i += 2;
                continue;
            }
            return i + 1;
        }
        i += 1;
    }
    bytes.len()
}

#[derive(Debug, Clone, Copy)]
enum Token<'a> {
    Word(&'a str),
    Other,
}

#[derive(Debug)]
enum ParamToken {
    Bare,
    Numbered(usize),
    Named(String),
}

/// Progress through `CREATE [TEMP|TEMPORARY] TRIGGER` at the start of a statement.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Leading {
    #[default]
    Start,
    Create,
    Temp,
    /// Matched, or cannot match any more.
    Done,
}

/// What the splitter knows about the statement it is in.
#[derive(Debug, Default)]
struct Statement {
    /// Some token other than whitespace, comments and `;` was seen.
    significant: bool,
    /// How far the leading words match `CREATE [TEMP|TEMPORARY] TRIGGER`.
    leading: Leading,
    /// Inside a `CREATE TRIGGER`.
    trigger: bool,
    /// The last significant token was the word `END`.
    after_end: bool,
    /// Parameters by index (0-based).
    by_index: Vec<Option<Param>>,
    /// Named parameters seen, with their index.
    names: Vec<(String, usize)>,
}

impl Statement {
    fn token(&mut self, token: Token<'_>) {
        self.significant = true;
        self.after_end = false;
        let word = match token {
            Token::Word(w) => Some(w),
            Token::Other => None,
        };
        if let Some(w) = word {
            self.after_end = w.eq_ignore_ascii_case("end");
        }
        let is = |k: &str| word.is_some_and(|w| w.eq_ignore_ascii_case(k));
        self.leading = match self.leading {
            Leading::Start if is("create") => Leading::Create,
            Leading::Create if is("temp") || is("temporary") => Leading::Temp,
            Leading::Create | Leading::Temp if is("trigger") => {
                self.trigger = true;
                Leading::Done
            }
            _ => Leading::Done,
        };
    }

    fn semicolon_ends(&self) -> bool {
        !self.trigger || self.after_end
    }

    fn param(&mut self, token: ParamToken) {
        let next = self.by_index.len() + 1;
        let (index, param) = match token {
            ParamToken::Bare => (next, Param::Next),
            ParamToken::Numbered(n) => (n, Param::Absolute(n)),
            ParamToken::Named(name) => {
                if let Some(&(_, index)) = self.names.iter().find(|(n, _)| *n == name) {
                    (index, self.by_index[index - 1].clone().unwrap_or(Param::Next))
                } else {
                    self.names.push((name.clone(), next));
                    // `$NNN` is bound by number (as sqlx-sqlite does).
                    let number = name.strip_prefix('$').and_then(|n| n.parse::<usize>().ok()).filter(|&n| n > 0);
                    (next, number.map_or(Param::Named(name), Param::Absolute))
                }
            }
        };
        if self.by_index.len() < index {
            self.by_index.resize(index, None);
        }
        if self.by_index[index - 1].is_none() {
            self.by_index[index - 1] = Some(param);
        }
    }

    fn params(&self) -> Vec<Param> {
        self.by_index.iter().map(|p| p.clone().unwrap_or(Param::Next)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqls(sql: &str) -> Vec<&str> {
        split(sql).into_iter().map(|p| p.sql.trim()).collect()
    }

    #[test]
    fn empty_strings_have_no_statements() {
        for sql in ["", " ", ";", " ; ;; ", "-- only a comment", "/* c */", "-- a\n/* b */ ; -- c\n"] {
            assert!(split(sql).is_empty(), "{sql:?}");
        }
    }

    #[test]
    fn semicolons_split_outside_literals_and_comments() {
        assert_eq!(sqls("SELECT 1; SELECT 2"), ["SELECT 1", "SELECT 2"]);
        assert_eq!(sqls("SELECT 1;"), ["SELECT 1"]);
        assert_eq!(sqls("SELECT ';', 'it''s;'; SELECT 2"), ["SELECT ';', 'it''s;'", "SELECT 2"]);
        assert_eq!(sqls(r#"SELECT "a;b", `c;d`, [e;f]; SELECT 2"#), [r#"SELECT "a;b", `c;d`, [e;f]"#, "SELECT 2"]);
        assert_eq!(sqls("SELECT 1 -- x; y\n; SELECT 2 /* ; */"), ["SELECT 1 -- x; y", "SELECT 2 /* ; */"]);
        assert_eq!(sqls("SELECT 'unterminated; still"), ["SELECT 'unterminated; still"]);
        assert_eq!(sqls("SELECT 'é;'; SELECT 'ü'"), ["SELECT 'é;'", "SELECT 'ü'"]);
    }

    #[test]
    fn triggers_end_at_end() {
        let sql = "CREATE TABLE t (a); CREATE TEMP TRIGGER tr AFTER INSERT ON t BEGIN \
                   INSERT INTO log VALUES ('a;'); UPDATE t SET a = CASE WHEN a THEN 1 ELSE 2 END WHERE 0; \
                   END; INSERT INTO t VALUES (1)";
        let got = sqls(sql);
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(got[1].starts_with("CREATE TEMP TRIGGER") && got[1].ends_with("END"), "{got:?}");
        assert_eq!(sqls("create trigger x before delete on t begin select 1; end ; select 2").len(), 2);
        // Not a trigger: `END` does not matter.
        assert_eq!(sqls("SELECT CASE WHEN 1 THEN 2 END; SELECT 3").len(), 2);
        assert_eq!(sqls("CREATE TABLE trigger_log (a); SELECT 1").len(), 2);
    }

    #[test]
    fn parameters_are_numbered_as_sqlite_numbers_them() {
        let p = split("SELECT ?, ?, ?5, ?, :a, @b, :a, $3, $x");
        assert_eq!(p.len(), 1);
        use Param::*;
        assert_eq!(
            p[0].params,
            [
                Next,
                Next,
                Next,
                Next,
                Absolute(5),
                Next,
                Named(":a".into()),
                Named("@b".into()),
                Absolute(3),
                Named("$x".into())
            ]
        );
        assert_eq!(split("SELECT ?2")[0].params, [Next, Absolute(2)]);
        assert!(split("SELECT '?', \"?\", [?] -- ?")[0].params.is_empty());
        let p = split("INSERT INTO t VALUES (?); INSERT INTO t VALUES (?, ?)");
        assert_eq!((p[0].params.len(), p[1].params.len()), (1, 2));
    }
}
