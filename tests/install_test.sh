#!/usr/bin/env bash
# Installs a built tree into a temporary prefix and builds a separate project against it with
# find_package(bigsmall), as a C++ user would; runs it. Usage: tests/install_test.sh BUILD_DIR
set -euo pipefail
build=$1
src=$(cd "$(dirname "$0")" && pwd)/install
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cmake --install "$build" --prefix "$tmp/prefix" >/dev/null
for f in include/bigsmall/container.hpp include/bigsmall/codec.hpp bin/bigsmall; do
  [ -e "$tmp/prefix/$f" ] || { echo "install_test: $f not installed"; exit 1; }
done
config=$(find "$tmp/prefix" -name bigsmallConfig.cmake)  # lib/ or lib64/, as GNUInstallDirs chose
[ -n "$config" ] || { echo "install_test: no bigsmallConfig.cmake installed"; exit 1; }
cmake -S "$src" -B "$tmp/consumer" -DCMAKE_PREFIX_PATH="$tmp/prefix" >/dev/null
cmake --build "$tmp/consumer" >/dev/null
"$tmp/consumer/consumer" "$tmp/out.bs"
"$tmp/consumer/consumer_cuda"
"$tmp/prefix/bin/bigsmall" verify -q "$tmp/out.bs"
echo "install_test: passed"
