CREATE TABLE audit (msg TEXT);
CREATE TRIGGER applied_once_audit AFTER INSERT ON applied_once BEGIN
    INSERT INTO audit VALUES ('version; ' || new.version);
END;
INSERT INTO applied_once VALUES (3);
