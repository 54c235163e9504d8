#!/usr/bin/env bash
# Base images for deploy/ on a machine that reaches no container registry.
#
# For each official image deploy/ names (python:3.12-slim, nats:2.10-alpine, postgres:17-alpine):
# when the engine has it, use it; otherwise build a stand-in from Debian's packages under its own
# local/... tag (never the official name): debootstrap a minimal Debian into a cached folder,
# `docker import` it, then the small Dockerfiles beside this script. README.md here says how
# faithful each stand-in is.
#
# Writes the image variables for docker compose to the file given as $1 (KEY=VALUE lines).
# Cached: the debootstrapped tree in $STANDIN_CACHE; the images stay in the engine and are rebuilt
# only when this folder changes (their label records its hash).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:?usage: build-standins.sh OUTPUT_ENV_FILE}"
suite="${STANDIN_SUITE:-trixie}"            # the Debian suite with postgresql-17
mirror="${STANDIN_MIRROR:-http://deb.debian.org/debian}"
cache="${STANDIN_CACHE:-/var/cache/joblog-standins}"
cert="${PIP_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}"
recipe="$(cd "$here" && cat build-standins.sh */Dockerfile postgres/docker-entrypoint.sh | sha256sum | cut -c1-12)"

say() { echo "standins: $*" >&2; }
have() { docker image inspect "$1" >/dev/null 2>&1; }
current() { [ "$(docker image inspect -f '{{ index .Config.Labels "joblog.standin.recipe" }}' "$1" 2>/dev/null)" = "$recipe" ]; }

# The index the host's pip uses (pip.conf or PIP_INDEX_URL), so the builds reach the same registry.
index="${PIP_INDEX_URL:-$(python3 -m pip config get global.index-url 2>/dev/null || true)}"
case "$index" in http*) ;; *) index="" ;; esac

base="local/debian:$suite"
ensure_base() {
  if current "$base"; then return; fi
  local tree="$cache/rootfs-$suite"
  if [ ! -f "$tree/.complete" ]; then
    command -v debootstrap >/dev/null || { say "debootstrap is not installed (apt-get install debootstrap)"; exit 1; }
    say "debootstrap $suite into $tree (once; cached)"
    rm -rf "$tree" && mkdir -p "$cache"
    debootstrap --variant=minbase "$suite" "$tree" "$mirror" >"$cache/debootstrap.log" 2>&1 \
      || { say "debootstrap failed, see $cache/debootstrap.log:"; tail -n 20 "$cache/debootstrap.log" >&2; exit 1; }
    rm -rf "$tree"/var/cache/apt/archives/*.deb "$tree"/var/lib/apt/lists/*
    touch "$tree/.complete"
  fi
  say "docker import $base"
  tar --exclude=./.complete -C "$tree" -c . \
    | docker import -c "LABEL joblog.standin.recipe=$recipe" -c 'CMD ["bash"]' - "$base" >/dev/null
}

export BASE_IMAGE="$base" RECIPE="$recipe" PIP_INDEX_URL="$index" PIP_CERT_FILE="$cert"
export STANDIN_PYTHON="local/python:3-$suite" STANDIN_NATS="local/nats:2.10-$suite" STANDIN_POSTGRES="local/postgres:17-$suite"
build() {  # build SERVICE TAG: docker compose build, retried (the package mirrors can be slow)
  local service="$1" tag="$2" tries=0
  if current "$tag"; then say "$tag is current"; return; fi
  say "building $tag"
  until docker compose -f "$here/compose.yml" build -q "$service" >"$cache/build-$service.log" 2>&1; do
    tries=$((tries + 1))
    if [ "$tries" -ge 3 ]; then say "building $tag failed 3 times; the last output:"; tail -n 30 "$cache/build-$service.log" >&2; exit 1; fi
    say "building $tag failed; retrying ($tries/3)"; sleep 5
  done
}

declare -A chosen
pick() {  # pick VARIABLE OFFICIAL
  if have "$2"; then chosen[$1]="$2"; say "$1=$2 (the official image is here)"; else chosen[$1]=""; fi
}
pick PYTHON_IMAGE python:3.12-slim
pick NATS_IMAGE nats:2.10-alpine
pick POSTGRES_IMAGE postgres:17-alpine
if [ -z "${chosen[PYTHON_IMAGE]}" ] || [ -z "${chosen[NATS_IMAGE]}" ] || [ -z "${chosen[POSTGRES_IMAGE]}" ]; then
  ensure_base
  build python "$STANDIN_PYTHON"   # the nats stand-in is built from it, so always
  [ -n "${chosen[PYTHON_IMAGE]}" ] || chosen[PYTHON_IMAGE]="$STANDIN_PYTHON"
  if [ -z "${chosen[NATS_IMAGE]}" ]; then build nats "$STANDIN_NATS"; chosen[NATS_IMAGE]="$STANDIN_NATS"; fi
  if [ -z "${chosen[POSTGRES_IMAGE]}" ]; then build postgres "$STANDIN_POSTGRES"; chosen[POSTGRES_IMAGE]="$STANDIN_POSTGRES"; fi
fi
{
  for key in PYTHON_IMAGE NATS_IMAGE POSTGRES_IMAGE; do echo "$key=${chosen[$key]}"; done
  [ -z "$index" ] || echo "PIP_INDEX_URL=$index"
} > "$out"
say "images: $(tr '\n' ' ' < "$out")"
