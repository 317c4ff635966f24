#!/usr/bin/env bash
# Prepares the Python venv that the inference-proxy tests use to drive bahi with the
# official OpenAI and Anthropic SDKs (tests/fixtures/sdk_smoke.py), and the MCP tests with the
# official `mcp` SDK (tests/fixtures/mcp_client.py), so each surface is checked against what
# real clients send and accept, not against our own idea of the wire format.
# Idempotent: an existing venv is reused, pip only upgrades. The last line printed is the
# venv's python path, for callers to capture with `| tail -n1`.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/python-env
python="${PYTHON:-python3}"

fail() { echo "python-env.sh: $*" >&2; exit 1; }

command -v "$python" >/dev/null || fail "no $python on PATH: install Python 3.11 or newer"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
    || fail "$python does not run or is older than 3.10, which openai 3.x and anthropic 2.x need"

if [ ! -x "$venv/bin/python" ]; then
    # Debian's python3 lacks ensurepip unless python3-venv is installed; say so plainly.
    mkdir -p "$(dirname "$venv")"
    "$python" -m venv "$venv" || {
        rm -rf "$venv"  # a half-made venv would be taken as ready next time
        fail "could not create the venv at $venv (on Debian: apt-get install python3-venv)"
    }
fi

# Latest SDKs: the point is to catch a new SDK release that expects something bahi does not do.
# Checked 2026-12-05: openai 3.63.0, anthropic 2.17.0 (both on httpx2). That anthropic sends
# its api_key as `Authorization: Bearer`, not x-api-key, with anthropic-version 2026-10-21.
# mcp: 2.3.0 on the same date. openapi-spec-validator checks GET /openapi.json (tests/openapi.rs);
# schemathesis (4.32.5 on the same date) fuzzes the live server against it (tests/contract_fuzz.rs).
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade openai anthropic mcp openapi-spec-validator schemathesis \
    || fail "pip could not install openai, anthropic, mcp, openapi-spec-validator and schemathesis into $venv (is the package index reachable?)"

"$venv/bin/python" -c 'import importlib.metadata as m, openai, anthropic, mcp; print("python-env.sh: openai", openai.__version__, "anthropic", anthropic.__version__, "mcp", m.version("mcp"))'
echo "$PWD/$venv/bin/python"
