#!/usr/bin/env bash
# Installs what building and testing Conifer needs on Debian 12: C/C++ toolchain, cmake,
# clang/libclang, BLAS/LAPACK for FAISS, iproute2 for the chaos harness, tinyproxy for the
# proxy tests, openssl for the TLS policy tests (s_client). Skips apt entirely when
# everything is already present.
set -euo pipefail

PACKAGES=(build-essential cmake clang libclang-dev libopenblas-dev liblapack-dev pkg-config
          iproute2 tinyproxy python3 python3-venv curl ca-certificates openssl)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "==> installing: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install the Rust toolchain (rustup) first" >&2
  exit 1
fi
echo "==> dependencies present"
