#!/usr/bin/env bash
# Installs Debian's `chromium` for the leaderboard's headless-browser test
# (bench/tests/test_leaderboard_browser.py) when /usr/bin/chromium is missing. Idempotent: does
# nothing when it is already there. Needs root or passwordless sudo, and apt-get (Debian/Ubuntu).
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
    echo "install-chromium: $(/usr/bin/chromium --version 2>/dev/null || echo /usr/bin/chromium) already installed"
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo -n)
else
    echo "install-chromium: need root (or sudo) to apt-get install chromium" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-chromium: apt-get not found; install Debian's chromium package by hand," >&2
    echo "  or set FILTERAX_CHROMIUM=/path/to/chromium, or FILTERAX_SKIP_BROWSER=1 to skip" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -q
"${SUDO[@]}" apt-get install -y -q chromium
/usr/bin/chromium --version
