#!/usr/bin/env bash
# Installs the system packages bigsmall builds and tests with (Debian/Ubuntu), when missing.
set -euo pipefail
pkgs=(cmake ninja-build g++ pkg-config libzstd-dev libxxhash-dev libgtest-dev zstd clang-14 libclang-rt-14-dev python3-venv)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  echo "installing: ${missing[*]}"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
fi
