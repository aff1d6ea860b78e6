#!/usr/bin/env bash
# System packages the tests need that pip cannot install: docker-compose (validates docker-compose.yml),
# prometheus (promtool checks the config and rules; the local stack and drift tests run the server) and
# chromium (the /dashboard page is loaded in headless Chromium).
# Idempotent and quiet: installs only what is missing. Without root (and no sudo), or without a
# Debian/Ubuntu apt, it says what is missing and exits 0: the tests that need a tool skip with a reason.
set -uo pipefail

missing=()
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
{ command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; } || missing+=(prometheus)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
else
    echo "install-system-deps: not root; missing ${missing[*]} (their tests will skip)" >&2
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-system-deps: no apt-get; missing ${missing[*]} (their tests will skip)" >&2
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
# Packages' maintainer scripts must not start the Prometheus daemon (policy-rc.d 101 = "not allowed");
# an existing policy file is left as it is.
own_policy=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | "${as_root[@]}" tee /usr/sbin/policy-rc.d >/dev/null
    "${as_root[@]}" chmod +x /usr/sbin/policy-rc.d
    own_policy=1
fi
status=0
if ! "${as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$log" 2>&1; then
    "${as_root[@]}" apt-get update -qq >>"$log" 2>&1
    "${as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >>"$log" 2>&1 || status=$?
fi
[ "$own_policy" -eq 1 ] && "${as_root[@]}" rm -f /usr/sbin/policy-rc.d
if [ "$status" -ne 0 ]; then
    tail -20 "$log" >&2
    echo "install-system-deps: could not install ${missing[*]} (their tests will skip)" >&2
fi
rm -f "$log"
exit 0
