#!/usr/bin/env bash
# What building herald needs from the system besides a Rust toolchain: a C
# compiler and make (the bundled librdkafka), pkg-config, and OpenSSL's
# headers (librdkafka's TLS and SASL PLAIN/SCRAM, for Kafka
# `security.protocol` SSL and SASL_SSL). Installed with apt-get when
# missing (Debian/Ubuntu); elsewhere it says what to install.
#
#   scripts/build-deps.sh        # .ci/run and scripts/test.sh call it
set -euo pipefail

_log() { printf 'build-deps.sh: %s\n' "$*" >&2; }

missing=()
command -v cc >/dev/null 2>&1 || missing+=(build-essential)
command -v make >/dev/null 2>&1 || missing+=(build-essential)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
if ! pkg-config --exists openssl 2>/dev/null; then
  missing+=(libssl-dev)
fi
if ((${#missing[@]} == 0)); then
  exit 0
fi
# One name per package.
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
if ! command -v apt-get >/dev/null 2>&1; then
  _log "missing: ${missing[*]} (a C compiler, make, pkg-config, OpenSSL headers); install them and retry"
  exit 1
fi
sudo=()
if [[ "$(id -u)" != 0 ]]; then
  sudo=(sudo -n)
fi
_log "installing ${missing[*]} with apt-get"
install=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o Dpkg::Use-Pty=0 "${missing[@]}")
if ! "${install[@]}" >/dev/null; then
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  "${install[@]}" >/dev/null
fi
