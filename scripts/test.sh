#!/usr/bin/env bash
# The one test command (see README.md); .ci/run calls exactly this.
#
# Every test runs on SQLite. The store, projection and API tests also run on PostgreSQL
# when a server is reachable (default postgres://postgres@127.0.0.1:5432/test, trust auth;
# each test creates its own database and drops it). In CI the PostgreSQL half is required:
# the run fails if the server cannot be reached. Elsewhere, without PostgreSQL, the tests
# still pass and this script says plainly that the PostgreSQL half did not run.
set -euo pipefail
cd "$(dirname "$0")/.."

url="${BAHI_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}"
hostport="${url#*://}"; hostport="${hostport#*@}"; hostport="${hostport%%/*}"
host="${hostport%%:*}"; port="${hostport##*:}"; [ "$port" = "$hostport" ] && port=5432

postgres_reachable() { timeout 3 bash -c "exec 3<>/dev/tcp/$host/$port" 2>/dev/null; }

if postgres_reachable; then
    export BAHI_TEST_POSTGRES_URL="$url"
    echo "test.sh: PostgreSQL reachable at $host:$port: store tests run on SQLite and PostgreSQL"
    skipped_postgres=""
elif [ -n "${CI:-}" ]; then
    echo "test.sh: CI requires PostgreSQL at $host:$port and cannot reach it" >&2
    exit 1
else
    unset BAHI_TEST_POSTGRES_URL
    skipped_postgres="test.sh: NOTE: no PostgreSQL at $host:$port: the PostgreSQL half of the tests DID NOT RUN (SQLite only)"
    echo "$skipped_postgres"
fi

# The README walk-through test drives the server with curl and jq, and the forward-auth test
# puts Debian's nginx in front of it with README's configuration. In CI they are installed
# when missing; elsewhere each test says plainly that it did not run without them.
for tool in curl jq nginx; do
    if ! command -v "$tool" > /dev/null && [ ! -x "/usr/sbin/$tool" ] && [ -n "${CI:-}" ]; then
        echo "test.sh: installing $tool for the README walk-through and forward-auth tests"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -qq "$tool" > /dev/null 2>&1 || { apt-get update -qq > /dev/null && apt-get install -y -qq "$tool" > /dev/null; }
    fi
done

# The console's real-browser test (tests/console_browser.rs) drives Debian's chromium through
# chromedriver. In CI they are installed when missing (and the test must run); elsewhere the
# test says plainly that it did not run without them.
if { [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; } && [ -n "${CI:-}" ]; then
    echo "test.sh: installing chromium and chromium-driver for the console's browser test"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq chromium chromium-driver > /dev/null 2>&1 \
        || { apt-get update -qq > /dev/null && apt-get install -y -qq chromium chromium-driver > /dev/null; }
fi
skipped_browser=""
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
    skipped_browser="test.sh: NOTE: no /usr/bin/chromium or /usr/bin/chromedriver: the console's real-browser test DID NOT RUN (apt-get install chromium chromium-driver)"
    echo "$skipped_browser"
fi

# The proxy and MCP tests drive bahi with the official openai, anthropic and mcp Python SDKs, from a venv
# this script prepares (scripts/python-env.sh, which needs the package index once). In CI
# they must run; elsewhere the test says plainly that they did not.
skipped_sdks=""
if python="$(bash scripts/python-env.sh | tail -n1)" && [ -x "$python" ]; then
    export BAHI_TEST_PYTHON="$python"
elif [ -n "${CI:-}" ]; then
    echo "test.sh: CI requires the official SDKs (scripts/python-env.sh failed)" >&2
    exit 1
else
    unset BAHI_TEST_PYTHON
    skipped_sdks="test.sh: NOTE: scripts/python-env.sh failed: the official-SDK proxy and MCP checks DID NOT RUN"
    echo "$skipped_sdks"
fi

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --locked "$@" 2>&1 | tee "$log" || status=$?

# One closing line over every test binary (cargo's own last line is often a doc-test run
# of zero tests).
passed=$(grep -Eo '[0-9]+ passed' "$log" | awk '{sum += $1} END {print sum + 0}')
failed=$(grep -Eo '[0-9]+ failed' "$log" | awk '{sum += $1} END {print sum + 0}')

for note in "$skipped_postgres" "$skipped_sdks" "$skipped_browser"; do
    [ -n "$note" ] && echo "$note"
done
echo "$passed passed, $failed failed"
exit "$status"
