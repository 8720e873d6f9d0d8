#!/usr/bin/env bash
# Verify systemd/aiop.service with systemd-analyze (installs systemd when missing).
# `systemd-analyze verify` needs ExecStart's binary to exist: when /usr/local/bin/aiop is not
# installed, the unit is verified as a copy whose ExecStart points at target/{release,debug}/aiop
# (built here if neither exists); nothing else in the copy differs.
set -euo pipefail
cd "$(dirname "$0")/.."
unit=systemd/aiop.service

if ! command -v systemd-analyze >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq systemd >/dev/null
fi

bin=/usr/local/bin/aiop
if [ ! -x "$bin" ]; then
  for b in target/release/aiop target/debug/aiop; do
    if [ -x "$b" ]; then bin="$PWD/$b"; break; fi
  done
  if [ ! -x "$bin" ]; then
    cargo build --quiet --bin aiop
    bin="$PWD/target/debug/aiop"
  fi
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
sed "s#^ExecStart=/usr/local/bin/aiop #ExecStart=$bin #" "$unit" > "$tmp/aiop.service"
grep -q "^ExecStart=$bin serve\( \|$\)" "$tmp/aiop.service"

out=$(systemd-analyze verify "$tmp/aiop.service" 2>&1) || { echo "$out"; exit 1; }
# verify exits 0 on some warnings: fail on any line about this unit.
if echo "$out" | grep -i "aiop.service"; then
  exit 1
fi
echo "systemd-analyze verify: $unit OK (ExecStart checked as $bin)"
