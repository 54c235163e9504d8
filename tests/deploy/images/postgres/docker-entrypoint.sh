#!/bin/sh
# What the official postgres image's entrypoint does, in short: on an empty $PGDATA, initdb with
# POSTGRES_USER/POSTGRES_PASSWORD, create POSTGRES_DB on a temporary server that listens on the
# socket only, stop it, then run the real server (listening on TCP) as the postgres user.
set -eu
if [ "$#" -gt 0 ] && [ "$1" != "postgres" ]; then exec "$@"; fi
[ "$#" -gt 0 ] && shift
: "${POSTGRES_USER:=postgres}" "${POSTGRES_DB:=$POSTGRES_USER}"
if [ -z "${POSTGRES_PASSWORD:-}" ]; then
  echo "postgres: POSTGRES_PASSWORD is not set (the official image refuses too)" >&2
  exit 1
fi
as_postgres() { runuser -u postgres -- "$@"; }
mkdir -p "$PGDATA" /var/run/postgresql
chown postgres:postgres "$PGDATA" /var/run/postgresql
chmod 700 "$PGDATA"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  echo "postgres: first start, initialising $PGDATA"
  pwfile=$(mktemp) && printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile" && chown postgres "$pwfile"
  as_postgres initdb -D "$PGDATA" --username="$POSTGRES_USER" --pwfile="$pwfile" --auth-host=scram-sha-256 \
    --auth-local=trust --encoding=UTF8 >/dev/null
  rm -f "$pwfile"
  printf "listen_addresses = '*'\n" >> "$PGDATA/postgresql.conf"
  printf "host all all all scram-sha-256\n" >> "$PGDATA/pg_hba.conf"
  # The temporary server: socket only, as in the official image.
  as_postgres pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
  if [ "$POSTGRES_DB" != "postgres" ]; then
    as_postgres psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres -q \
      -c "CREATE DATABASE \"$POSTGRES_DB\""
  fi
  # The official image's init scripts take a while on a busy machine; stand in for them.
  sleep "${STANDIN_INIT_SECONDS:-3}"
  as_postgres pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
  echo "postgres: init done"
fi
exec setpriv --reuid=postgres --regid=postgres --init-groups postgres -D "$PGDATA" "$@"
