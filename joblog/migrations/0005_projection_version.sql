-- A counter the projection bumps in every transaction that changes job_logs / job_log_details.
-- It commits with the change, so a reader who reads it before the rows can cache what it
-- renders under that version: the web serves cached pages until the projection moves.
CREATE TABLE projection_version (
    id       boolean PRIMARY KEY DEFAULT true CHECK (id),
    version  bigint NOT NULL DEFAULT 0
);
INSERT INTO projection_version (id, version) VALUES (true, 0);
