#!/bin/sh
# Install cfd into .venv inside this checkout (idempotent).
#   ./install.sh          the tool itself        -> .venv/bin/cfd (a plain, non-editable install)
#   ./install.sh --dev    editable, plus the test dependencies
set -eu

here=$(cd "$(dirname "$0")" && pwd)
extras=""
for arg in "$@"; do
    case "$arg" in
        --dev) extras="[dev]" ;;
        -h|--help) sed -n '2,4p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown option '$arg' (use --dev or nothing)" >&2; exit 2 ;;
    esac
done

# Pick the newest Python 3.11+ we can find; say plainly when there is none.
python=""
for candidate in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
    [ -n "$candidate" ] || continue
    command -v "$candidate" >/dev/null 2>&1 || continue
    if "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
        python=$candidate
        break
    fi
done
if [ -z "$python" ]; then
    found=$(python3 --version 2>/dev/null || echo "no python3")
    echo "install.sh: cfd needs Python 3.11 or newer (found: $found). Install it, or set PYTHON=/path/to/python3.11 and re-run." >&2
    exit 1
fi

venv="$here/.venv"
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
if [ -n "$extras" ]; then
    # Developers: editable, so a change to the checkout is live. setuptools explains editable
    # installs in ten lines on every run; a quiet install says nothing.
    PYTHONWARNINGS="ignore:Editable installation" \
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$here$extras"
else
    # Users: a plain install. An editable one puts an import finder in every Python start
    # (each hook and `cfd --version` would pay for it); --force-reinstall picks up a new checkout.
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$here"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps --force-reinstall "$here"
fi

# `cfd --version` also says (on stderr) when the `cfd` first on PATH is another program,
# such as ComfyDock's CLI; comfy-model-sync is the same tool under a name that never clashes.
echo "cfd installed: $venv/bin/cfd, also $venv/bin/comfy-model-sync ($("$venv/bin/cfd" --version))"
