-- Every bump of projection_version is announced to LISTEN joblog_projection, with the new
-- version as the payload, when the bumping transaction commits (in commit order, so in
-- version order). The web keeps the version it was told and serves cached pages without a
-- database round trip per request (services/web/cache.py, ProjectionVersion).
CREATE FUNCTION joblog_projection_version_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('joblog_projection', NEW.version::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER projection_version_notify AFTER UPDATE OF version ON projection_version
    FOR EACH ROW EXECUTE FUNCTION joblog_projection_version_notify();
