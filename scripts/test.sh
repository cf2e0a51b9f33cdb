#!/usr/bin/env bash
# Installs what the tests need on a fresh machine, then runs them.
#   scripts/test.sh              all tests
#   scripts/test.sh -- NAME      extra arguments go to `cargo test`
# Needs: cargo, python3 (with venv), node >= 20 with npm. Installs: a Python venv
# at .ci/venv with requests-oauthlib (the independent OAuth client of the
# integration tests); Debian's chromium and tests/browser/node_modules
# (playwright-core) for the real-browser tests.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages, refreshing the package lists once if they are stale.
apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=300 install -y -q "$@" >/dev/null ||
    { apt-get -o DPkg::Lock::Timeout=300 update -q >/dev/null &&
      apt-get -o DPkg::Lock::Timeout=300 install -y -q "$@" >/dev/null; }
}

venv=.ci/venv
if ! "$venv/bin/python3" -c 'import requests_oauthlib, moto' 2>/dev/null; then
  echo "== creating $venv with requests-oauthlib and moto"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/support/requirements.txt
fi
if ! ruby -roauth -e "exit 0" 2>/dev/null; then
  echo "== installing ruby and ruby-oauth (Debian packages)"
  apt_install ruby ruby-oauth
fi

# The real-browser tests (tests/api/browser.rs): Debian's Chromium, driven by
# playwright-core from npm, which never downloads a browser of its own.
if [ ! -x /usr/bin/chromium ]; then
  echo "== installing chromium (Debian package)"
  # Debian's /usr/bin/chromium wrapper may print a harmless "[: ...: unexpected operator".
  apt_install chromium
fi
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
# Installed again whenever the lock file changed since the last install.
if ! cmp -s tests/browser/package-lock.json tests/browser/node_modules/.installed-lock.json; then
  if ! command -v npm >/dev/null; then
    echo "npm (with node >= 20) is needed for the browser tests" >&2
    exit 1
  fi
  echo "== installing playwright-core, the upload libraries (Resumable.js, flow.js, Uppy) and esbuild in tests/browser (npm ci)"
  (cd tests/browser && npm ci --no-audit --no-fund && cp package-lock.json node_modules/.installed-lock.json)
fi

export UPLOAD_RECEIVER_TEST_PYTHON="$PWD/$venv/bin/python3"

# A Redis server of the tests' own on a free port (never the machine's shared
# one), stopped when this script ends.
command -v redis-server >/dev/null || { echo "== installing redis-server"; apt_install redis-server; }
# nginx for the tests of two receivers behind a load balancer.
[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null || { echo "== installing nginx"; apt_install nginx-light; }
scratch=$(mktemp -d)
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
cleanup() {
  for pid in "$scratch"/*.pid; do
    if [ -f "$pid" ]; then kill "$(cat "$pid")" 2>/dev/null || true; fi
  done
  rm -rf "$scratch"
}
trap cleanup EXIT
redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
  --pidfile "$scratch/redis.pid" --dir "$scratch" --logfile "$scratch/redis.log"
for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
redis-cli -p "$redis_port" ping >/dev/null || { echo "redis-server did not start" >&2; cat "$scratch/redis.log" >&2; exit 1; }
export UPLOAD_RECEIVER_TEST_REDIS_URL="redis://127.0.0.1:$redis_port/"

# An S3-compatible server (moto, in the venv above) on a free port; tests
# create a bucket each. Credentials come through the standard AWS chain.
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
s3_port=$(free_port)
"$venv/bin/moto_server" -H 127.0.0.1 -p "$s3_port" >"$scratch/moto.log" 2>&1 &
echo $! >"$scratch/moto.pid"
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$s3_port/" >/dev/null 2>&1 && break; sleep 0.1; done
curl -sf "http://127.0.0.1:$s3_port/" >/dev/null || { echo "moto_server did not start" >&2; cat "$scratch/moto.log" >&2; exit 1; }
export UPLOAD_RECEIVER_TEST_S3_ENDPOINT="http://127.0.0.1:$s3_port"

echo "== cargo test (embedded default)"
cargo test --all-targets "$@"
echo "== the API tests again, on Redis + S3"
UPLOAD_RECEIVER_TEST_BACKEND=redis-s3 cargo test --test api "$@"
