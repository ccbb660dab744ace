#!/usr/bin/env bash
# Usage: scripts/venv.sh VENV REQUIREMENTS — creates (or refreshes) a Python venv at VENV
# holding REQUIREMENTS, rebuilt only when the requirements file changed. Prints nothing on
# success; the venvs live outside the clone so that fresh clones reuse them.
set -euo pipefail
venv="$1" req="$2"
if [ ! -x "$venv/bin/python" ] || ! cmp -s "$req" "$venv/requirements.txt"; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q -r "$req"
  cp "$req" "$venv/requirements.txt"
fi
