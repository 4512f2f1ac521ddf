#!/usr/bin/env bash
# Installs what rwkvpp needs from the distribution's packages (Debian 12, Ubuntu 24.04), and
# nothing when everything is already there: a machine without a registry (a GPU node) must not
# reach for apt-get at all. Usage: scripts/deps.sh [--slurm]
set -euo pipefail

pkgs=(cmake ninja-build g++ pkg-config zlib1g-dev libhdf5-dev libopenmpi-dev
      openmpi-bin libucx-dev libboost-dev catch2 libcli11-dev libfmt-dev libspdlog-dev
      nlohmann-json3-dev libpcre2-dev libutf8proc-dev)
if [[ "${1:-}" == "--slurm" ]]; then pkgs+=(slurm-wlm munge); fi

missing=()
for p in "${pkgs[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [[ ${#missing[@]} -eq 0 ]]; then
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
