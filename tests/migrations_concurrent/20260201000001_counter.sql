-- Applied exactly once even when four instances migrate at the same moment.
CREATE TABLE applied_once (version INTEGER NOT NULL);
INSERT INTO applied_once VALUES (1);
-- Keep the lock busy for a moment so the other instances really wait.
CREATE TABLE filler AS
  WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 20000)
  SELECT x, hex(randomblob(16)) AS pad FROM c;
