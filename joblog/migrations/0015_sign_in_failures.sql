-- Failed sign-ins, shared by every web process (JOBLOG_WEB_PROCESSES): the per-address limit
-- (JOBLOG_WEB_LOGIN_FAILURES a minute) holds for the web as a whole, not once per process.
--
-- UNLOGGED: no WAL for a guess, and after a crash of Postgres the table comes back empty, which only
-- forgets the last minute's failures. A row lives as long as the limit's window: the web deletes an
-- address's rows when it signs in, and every row past the window about once a window, so the table
-- holds at most (addresses failing now) x JOBLOG_WEB_LOGIN_FAILURES rows; an address at its limit
-- adds none (it gets 429 before any check).
CREATE UNLOGGED TABLE sign_in_failures (
    address text NOT NULL,
    failed_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE INDEX sign_in_failures_by_address ON sign_in_failures (address, failed_at);
