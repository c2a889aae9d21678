-- Two statements in one migration: dqlite runs the batch with EXEC_SQL.
CREATE TABLE accounts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    email TEXT NOT NULL UNIQUE,
    created_at DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP
);
CREATE INDEX accounts_created_at ON accounts (created_at);
