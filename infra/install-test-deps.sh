#!/usr/bin/env bash
# Installs what some tests need beyond the .NET SDK (Debian/Ubuntu, as root):
#   redis-server  the test that clusters silo processes through Redis membership;
#   chromium      the test that opens the Aspire dashboard in a headless browser (Playwright drives Debian's Chromium:
#                 Playwright's own browser download is not used).
# Never fails the caller: without apt or root those tests skip with a message.
set -uo pipefail
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v chromium >/dev/null || [ -n "${CHROMIUM_PATH:-}" ] || missing+=(chromium)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null) \
    || echo "infra/install-test-deps.sh: could not install ${missing[*]}; the tests that need them will skip" >&2
  # The Redis package's service is not needed: the test starts its own redis-server on a free port.
  command -v service >/dev/null && service redis-server stop >/dev/null 2>&1 || true
else
  echo "infra/install-test-deps.sh: not root or no apt-get; the tests that need ${missing[*]} will skip" >&2
fi
exit 0
