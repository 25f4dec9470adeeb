#!/usr/bin/env bash
# Installs the Debian 12 packages Herald needs to build, test and benchmark; does nothing when
# they are all present. Run as root (or with sudo).
set -euo pipefail

BUILD=(build-essential cmake pkg-config luajit libluajit-5.1-dev libuv1-dev libyaml-dev
       lua-cjson-dev libcurl4-openssl-dev libhttp-parser-dev libpcre2-dev libjq-dev libedit-dev libnats-dev
       libssl-dev tzdata)
TEST=(lua-busted lua-socket lua-posix lua-rex-pcre2 curl tmux nats-server nodejs git
      clang libclang-rt-14-dev)  # clang + libFuzzer: spec/fuzz/fuzz_spec.lua builds fuzz/
# kubectl is not in Debian 12 (only the old kubernetes-client); specs that need it are pending
# when it is absent.
BENCH=(wrk hyperfine)

want=("${BUILD[@]}")
case "${1:-build}" in
  test) want+=("${TEST[@]}") ;;
  bench) want+=("${TEST[@]}" "${BENCH[@]}") ;;
esac

# Each type folder (and lib/ folder) names the packages it needs in a file `debian-packages`:
# lines "build <pkg>...", "test <pkg>..." (peers its specs start) or "bench <pkg>...", so a
# new source type adds its libraries and peers without editing this script.
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
for f in "$here"/sources/*/debian-packages "$here"/triggers/*/debian-packages \
         "$here"/lib/*/debian-packages; do
  [ -f "$f" ] || continue
  while read -r kind pkgs; do
    case "$kind" in
      build) want+=($pkgs) ;;
      test) if [ "${1:-build}" != build ]; then want+=($pkgs); fi ;;
      bench) if [ "${1:-build}" = bench ]; then want+=($pkgs); fi ;;
    esac
  done < <(grep -v '^[[:space:]]*\(#\|$\)' "$f")
done

missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then exit 0; fi

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "installing: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
