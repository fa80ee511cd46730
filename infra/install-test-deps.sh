#!/usr/bin/env bash
# Installs what some tests need beyond the .NET SDK: redis-server, for the test that clusters silo processes
# through Redis membership (it skips with a message when redis-server is missing). Debian/Ubuntu, as root.
# Never fails the caller: without apt or root the Redis test simply skips.
set -uo pipefail
if command -v redis-server >/dev/null; then exit 0; fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null) \
    || echo "infra/install-test-deps.sh: could not install redis-server; the Redis clustering test will skip" >&2
  # The package's service is not needed: the test starts its own redis-server on a free port.
  command -v service >/dev/null && service redis-server stop >/dev/null 2>&1 || true
else
  echo "infra/install-test-deps.sh: not root or no apt-get; the Redis clustering test will skip" >&2
fi
exit 0
