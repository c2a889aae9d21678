CREATE TABLE orders (
    id INTEGER PRIMARY KEY,
    account_id INTEGER NOT NULL REFERENCES accounts (id),
    total_cents INTEGER NOT NULL CHECK (total_cents >= 0),
    paid BOOLEAN NOT NULL DEFAULT FALSE
);
INSERT INTO accounts (email) VALUES ('seed@example.com');
INSERT INTO orders (account_id, total_cents)
    SELECT id, 1250 FROM accounts WHERE email = 'seed@example.com';
