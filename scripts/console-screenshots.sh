#!/usr/bin/env bash
# Regenerates the console screenshots in docs/console/ (shown in README.md):
# runs the console's browser test, which drives a real server through
# headless Chromium and saves a picture of each page as it goes.
# Needs Debian's chromium and chromium-driver (apt-get install chromium
# chromium-driver), as CI installs them.
set -euo pipefail
cd "$(dirname "$0")/.."
out="$(pwd)/docs/console"
mkdir -p "$out"
LOCKD_CONSOLE_SCREENSHOTS="$out" \
  cargo nextest run -p lockd --test it --no-capture console::the_console_in_a_real_browser
ls -l "$out"
