#!/bin/sh
# Installs, with apt, the Debian packages jit-access needs to build and test. Safe to run again: it only
# installs what is missing, and runs 'apt-get update' once, only when something is missing.
set -eu
PKGS="build-essential binutils libpam0g-dev libsqlite3-dev zlib1g-dev sqlite3 pamtester openssh-server openssh-client sudo valgrind util-linux procps python3"
# The .deb (make deb, tests/e2e/test_deb.py): dpkg-shlibdeps, xz, lintian, systemd-analyze verify.
PKGS="$PKGS dpkg-dev xz-utils lintian systemd"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "deps: missing Debian packages:$missing; run 'sudo make deps' (or apt-get install them)" >&2
        exit 1
    fi
    echo "deps: installing$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
# pytest drives the end-to-end tests.
if ! python3 -m pytest --version >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pytest >/dev/null 2>&1 || python3 -m pip install -q pytest
    fi
    python3 -m pytest --version >/dev/null 2>&1 || { echo "deps: pytest is missing; install python3-pytest" >&2; exit 1; }
fi
# pexpect types into ssh's keyboard-interactive prompts in the end-to-end tests.
if ! python3 -c "import pexpect" >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pexpect >/dev/null 2>&1 || python3 -m pip install -q pexpect
    fi
    python3 -c "import pexpect" >/dev/null 2>&1 || { echo "deps: pexpect is missing; install python3-pexpect" >&2; exit 1; }
fi
# aiosmtpd is the real SMTP server the notification end-to-end tests deliver mail to.
if ! python3 -c "import aiosmtpd" >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-aiosmtpd >/dev/null 2>&1 || python3 -m pip install -q aiosmtpd
    fi
    python3 -c "import aiosmtpd" >/dev/null 2>&1 || { echo "deps: aiosmtpd is missing; install python3-aiosmtpd (or pip install aiosmtpd)" >&2; exit 1; }
fi
if ! command -v swift >/dev/null 2>&1; then
    echo "deps: swift is not on PATH; add the Swift 6 toolchain (e.g. export PATH=/opt/swift/usr/bin:\$PATH)" >&2
    exit 1
fi
