#!/bin/sh
# Installs what jit-access needs to build and test, on a fresh Debian 12 machine. Safe to run again: it only
# installs what is missing, and runs 'apt-get update' once, only when something is missing.
#
# Python test modules are installed for the interpreter that runs the tests ($PYTHON, default: the python3
# first on PATH, which is not always Debian's /usr/bin/python3): apt first, then the import is checked with
# that same interpreter, then 'python3 -m pip install'. Only when both ways fail does it stop, in one sentence.
set -eu
PYTHON="${PYTHON:-python3}"
PKGS="build-essential binutils libpam0g-dev libsqlite3-dev zlib1g-dev sqlite3 pamtester openssh-server openssh-client sudo valgrind util-linux procps python3 python3-pip"
# The .deb (make deb, tests/e2e/test_deb.py): dpkg-shlibdeps, xz, lintian, systemd-analyze verify.
PKGS="$PKGS dpkg-dev xz-utils lintian systemd"
# TLS for notifications (swift-nio-ssl links BoringSSL itself; the system CA bundle is what it verifies against),
# a sendmail-compatible MTA for the mail tests, and PostgreSQL for the fleet's tests.
PKGS="$PKGS ca-certificates openssl msmtp msmtp-mta postgresql"
# The web approval page is driven in a real headless browser (tests/e2e/test_web_e2e.py).
PKGS="$PKGS chromium chromium-driver"
if [ -n "${JIT_DEPS_EXTRA:-}" ]; then PKGS="$PKGS $JIT_DEPS_EXTRA"; fi

updated=""
apt_install() {
    [ "$(id -u)" = 0 ] || return 1
    if [ -z "$updated" ]; then apt-get update -qq >/dev/null 2>&1 || true; updated=1; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1
}

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
    # msmtp-mta's postinst must not ask about AppArmor.
    echo "msmtp msmtp/apparmor boolean false" | debconf-set-selections 2>/dev/null || true
    apt_install $missing || { echo "deps: 'apt-get install$missing' failed; run it by hand to see why" >&2; exit 1; }
fi

# py_module IMPORT DEBIAN-PACKAGE PYPI-NAME: make IMPORT importable by $PYTHON.
py_module() {
    "$PYTHON" -c "import $1" >/dev/null 2>&1 && return 0
    if [ "$2" != "-" ]; then apt_install "$2" || true; fi
    "$PYTHON" -c "import $1" >/dev/null 2>&1 && return 0
    if [ "$(id -u)" = 0 ] || [ -n "${VIRTUAL_ENV:-}" ]; then
        "$PYTHON" -m pip install -q --disable-pip-version-check "$3" >/dev/null 2>&1 \
            || "$PYTHON" -m pip install -q --disable-pip-version-check --break-system-packages "$3" >/dev/null 2>&1 || true
    fi
    "$PYTHON" -c "import $1" >/dev/null 2>&1 && return 0
    echo "deps: the Python module '$1' is missing for $(command -v "$PYTHON") (apt '$2' and 'pip install $3' both failed); install it for that interpreter" >&2
    exit 1
}
# pytest drives the end-to-end tests; pexpect types into ssh's prompts; aiosmtpd is the real SMTP server the
# notification tests deliver mail to; trustme makes test CAs; standardwebhooks checks webhook signatures
# independently; psycopg talks to the fleet's PostgreSQL from the tests.
py_module pytest python3-pytest pytest
py_module pexpect python3-pexpect pexpect
py_module aiosmtpd python3-aiosmtpd aiosmtpd
py_module trustme python3-trustme trustme
py_module standardwebhooks - standardwebhooks
py_module psycopg python3-psycopg "psycopg[binary]"
# The fleet's end-to-end tests speak HTTPS to the control plane as a host would, and craft CSRs and certificates.
py_module requests python3-requests requests
py_module cryptography python3-cryptography cryptography
# The web page through headless Chromium; the API against its OpenAPI spec (tests/e2e/test_openapi_e2e.py).
py_module selenium python3-selenium selenium
py_module schemathesis - schemathesis

if ! command -v swift >/dev/null 2>&1; then
    echo "deps: swift is not on PATH; add the Swift 6 toolchain (e.g. export PATH=/opt/swift/usr/bin:\$PATH)" >&2
    exit 1
fi
