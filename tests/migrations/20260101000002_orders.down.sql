DROP TABLE orders;
DELETE FROM accounts WHERE email = 'seed@example.com';
