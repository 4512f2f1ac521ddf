#!/usr/bin/env bash
# Installs what rwkvpp needs from the distribution's packages (Debian 12, Ubuntu 24.04), and
# nothing when everything is already there: a machine without a registry (a GPU node) must not
# reach for apt-get at all. Then the official OpenAI client for the end-to-end tests of
# `rwkvpp serve` (tests/e2e/package.json) into tests/e2e/node_modules (git-ignored), unless it is
# there; where npm cannot reach a registry that step only warns, and those tests skip.
# Usage: scripts/deps.sh [--slurm] [--plots]   (--plots: python3-matplotlib for scripts/plot.py)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

install_e2e_client() {
  local dir="$root/tests/e2e"
  if [[ -f "$dir/node_modules/openai/package.json" ]]; then return 0; fi
  if ! command -v npm >/dev/null 2>&1; then
    echo "deps: no npm: the end-to-end tests of rwkvpp serve will skip" >&2
    return 0
  fi
  echo "deps: installing the openai client for tests/e2e" >&2
  if ! timeout 180 npm install --prefix "$dir" --no-package-lock --no-audit --no-fund \
      --fetch-retries=1 --fetch-timeout=30000 --loglevel=error >/dev/null; then
    echo "deps: npm could not install the openai client (no registry here?): the end-to-end" \
         "tests of rwkvpp serve will skip" >&2
  fi
}

pkgs=(cmake ninja-build g++ pkg-config zlib1g-dev libhdf5-dev libopenmpi-dev
      openmpi-bin libucx-dev libboost-dev catch2 libcli11-dev libfmt-dev libspdlog-dev
      nlohmann-json3-dev libpcre2-dev libutf8proc-dev libssl-dev)
for arg in "$@"; do
  case "$arg" in
    --slurm) pkgs+=(slurm-wlm munge) ;;
    --plots) pkgs+=(python3-matplotlib) ;;
    *) echo "deps: unknown option $arg (--slurm, --plots)" >&2; exit 2 ;;
  esac
done

missing=()
for p in "${pkgs[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
# Node.js and npm for the end-to-end tests (some images bring their own node with npm inside):
# installed along with the rest on a fresh machine, and in CI; a machine that has everything
# else (a GPU node without a registry) is not sent to apt-get for them.
node_pkgs=()
if ! command -v node >/dev/null 2>&1; then node_pkgs+=(nodejs); fi
if ! command -v npm >/dev/null 2>&1; then node_pkgs+=(npm); fi
if [[ ${#node_pkgs[@]} -gt 0 ]]; then
  if [[ ${#missing[@]} -gt 0 || -n "${CI:-}" ]]; then
    missing+=("${node_pkgs[@]}")
  else
    echo "deps: no ${node_pkgs[*]}: the end-to-end tests of rwkvpp serve will skip" >&2
  fi
fi
if [[ ${#missing[@]} -eq 0 ]]; then
  install_e2e_client
  exit 0
fi
# Where the essentials are present without their packages (a GPU image built from source),
# say what is missing but do not try a registry that cannot be reached.
if ! command -v apt-get >/dev/null 2>&1; then
  echo "deps: missing packages (${missing[*]}) and no apt-get to install them" >&2
  exit 1
fi
echo "deps: installing ${missing[*]}" >&2
SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q >/dev/null
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
install_e2e_client
