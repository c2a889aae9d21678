-- no-transaction
-- A migration outside a transaction whose statements return rows.
PRAGMA user_version = 7;
PRAGMA user_version;
INSERT INTO applied_once VALUES (2);
