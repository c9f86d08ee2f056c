#!/usr/bin/env bash
# Create or update bench/.venv-pipecat, the venv of the Pipecat baseline
# (bench/pipecat_baseline.py), from bench/pipecat-requirements.txt.
#
#   bash bench/pipecat_venv.sh            # PYTHON=python3 by default
#
# Idempotent: the venv keeps a stamp (the SHA-256 of the requirements file and
# of the interpreter's version); when the stamp matches and the interpreter
# still runs, the script exits at once without touching the network. A venv
# whose interpreter is gone or of another version is rebuilt from scratch.
# It writes `.gitignore` (`*`) inside the venv so that git never sees it.
#
# Needs: python3 with venv, gcc and the Python headers, and Debian's
# portaudio19-dev (PyAudio builds from source against it); `make system`
# installs them.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv-pipecat"
req="$here/pipecat-requirements.txt"
python="${PYTHON:-python3}"
stamp="$venv/.requirements.stamp"

command -v "$python" >/dev/null || { echo "pipecat_venv: no $python on PATH" >&2; exit 1; }
pyver="$("$python" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')"
want="$(sha256sum "$req" | cut -d' ' -f1) python-$pyver"

if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]] \
    && "$venv/bin/python" -c 'import sys' 2>/dev/null; then
    exit 0
fi

if [[ ! -f /usr/include/portaudio.h ]]; then
    echo "pipecat_venv: /usr/include/portaudio.h is missing: apt-get install portaudio19-dev" >&2
    exit 1
fi

start=$(date +%s)
# A venv of another interpreter version cannot be upgraded in place.
if [[ -x "$venv/bin/python" ]] \
    && [[ "$("$venv/bin/python" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null)" != "$pyver" ]]; then
    rm -rf "$venv"
fi
if [[ ! -x "$venv/bin/python" ]]; then
    rm -rf "$venv"
    "$python" -m venv "$venv"
fi
printf '*\n' > "$venv/.gitignore"
rm -f "$stamp"
"$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$req"
"$venv/bin/python" -c 'import pyaudio, pipecat.transports.local.audio' 2>/dev/null \
    || { echo "pipecat_venv: the installed venv cannot import pipecat's local transport" >&2; exit 1; }
printf '%s\n' "$want" > "$stamp"
echo "pipecat_venv: $venv ready ($(( $(date +%s) - start )) s): $("$venv/bin/python" -m pip show pipecat-ai 2>/dev/null | sed -n 's/^Version: /pipecat-ai /p')"
