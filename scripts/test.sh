#!/usr/bin/env bash
# Installs what the tests need on a fresh machine, then runs them.
#   scripts/test.sh              all tests
#   scripts/test.sh -- NAME      extra arguments go to `cargo test`
# Needs: cargo, python3 (with venv). Installs: a Python venv at .ci/venv with
# requests-oauthlib (the independent OAuth client of the integration tests).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.ci/venv
if ! "$venv/bin/python3" -c 'import requests_oauthlib' 2>/dev/null; then
  echo "== creating $venv with requests-oauthlib"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/support/requirements.txt
fi
if ! ruby -roauth -e "exit 0" 2>/dev/null; then
  echo "== installing ruby and ruby-oauth (Debian packages)"
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -q ruby ruby-oauth >/dev/null
fi

export UPLOAD_RECEIVER_TEST_PYTHON="$PWD/$venv/bin/python3"

echo "== cargo test"
cargo test --all-targets "$@"
