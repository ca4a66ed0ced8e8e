-- The key API nodes sign feed cursors with: made once here, from Postgres's strong random source
-- (gen_random_uuid), so that every node of a deployment shares it with nothing to configure.
-- Rotating it (UPDATE, then restart the API nodes) turns cursors already handed out into 400s.
CREATE TABLE api_keys (
    name text  PRIMARY KEY,
    key  bytea NOT NULL
);
INSERT INTO api_keys (name, key)
VALUES ('cursor', decode(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex'));
