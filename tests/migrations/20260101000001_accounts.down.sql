DROP INDEX accounts_created_at;
DROP TABLE accounts;
