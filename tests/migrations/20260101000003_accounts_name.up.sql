ALTER TABLE accounts ADD COLUMN display_name TEXT;
UPDATE accounts SET display_name = 'Seed' WHERE email = 'seed@example.com';
