# Sourced by train.sh and test.sh: create .venv if missing and install the
# project (editable) with the given extra, once per change of setup.cfg.
set -euo pipefail
extra="${1:-examples}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
if [[ ! -x "$venv/bin/python" ]]; then
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
fi
stamp="$venv/.installed-$extra-$(sha1sum "$root/setup.cfg" | cut -c1-12)"
if [[ ! -f "$stamp" ]]; then
  "$venv/bin/python" -m pip install --quiet -e "$root[$extra]"
  touch "$stamp"
fi
export PATH="$venv/bin:$PATH"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
