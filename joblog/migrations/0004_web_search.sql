-- The index's search by name prefix (LIKE '2026112%') must use an index whatever the
-- database's collation: text_pattern_ops supports left-anchored LIKE under any locale.
CREATE INDEX IF NOT EXISTS job_logs_name_prefix ON job_logs (name text_pattern_ops);
