#!/usr/bin/env bash
# Installs what the end-to-end tests (tests/e2e) need beyond the Python dev
# dependencies: a real Prometheus server, from Debian's packages. Idempotent:
# does nothing when it is already there. Runs as root on a fresh Debian machine
# (CI); elsewhere it uses sudo if it has to.
set -euo pipefail

if command -v prometheus >/dev/null 2>&1; then
    echo "install-e2e: prometheus already installed: $(prometheus --version 2>&1 | head -n 1)"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
# The tests start their own server on a free loopback port: keep the package's
# service from being started at install time where invoke-rc.d would start it.
policy=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
    $SUDO chmod 755 "$policy"
    made_policy=1
fi
cleanup() {
    if [ "$made_policy" -eq 1 ]; then
        $SUDO rm -f "$policy"
    fi
}
trap cleanup EXIT

$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
echo "install-e2e: installed $(prometheus --version 2>&1 | head -n 1)"
