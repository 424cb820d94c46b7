#!/usr/bin/env bash
# Sets up, then runs the reference business service and the relay on the shipped
# config.toml, with the browser console on. Ctrl-C stops both.
#   BUSINESS_PORT  the reference business service's port (default 8090)
#   RELAY_PORT     the relay's port (default 8000)
#   PYTHON         an interpreter that already has the relay's packages (skips scripts/setup.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
business_port=${BUSINESS_PORT:-8090}
relay_port=${RELAY_PORT:-8000}
if [ -z "${PYTHON:-}" ]; then
    scripts/setup.sh
    PYTHON=.venv/bin/python
fi

answers() {  # whether something accepts connections on 127.0.0.1:$1
    "$PYTHON" -c "import socket, sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 0.2).close()" \
        "$1" 2>/dev/null
}
if answers "$business_port"; then
    echo "run.sh: port $business_port is in use, so the reference business service cannot" \
        "start there (choose another with BUSINESS_PORT=…)" >&2
    exit 1
fi
"$PYTHON" examples/business_service.py --host 127.0.0.1 --port "$business_port" &
business=$!
trap 'kill $business 2>/dev/null || true' EXIT
# The relay starts only once the business answers: otherwise it would talk to whatever
# else holds the port.
for _ in $(seq 100); do
    if ! kill -0 "$business" 2>/dev/null; then
        echo "run.sh: the reference business service could not start on port $business_port" \
            "(in use? choose another with BUSINESS_PORT=…)" >&2
        exit 1
    fi
    if answers "$business_port"; then
        break
    fi
    sleep 0.1
done
if ! kill -0 "$business" 2>/dev/null; then
    echo "run.sh: the reference business service exited (port $business_port)" >&2
    exit 1
fi
echo "reference business service on http://127.0.0.1:$business_port/chat (pid $business)"
echo "relay on http://127.0.0.1:$relay_port; browser console: http://127.0.0.1:$relay_port/console"
echo "try, in another terminal:"
echo "  curl -N -X POST localhost:$relay_port/api/v1/simulate -d '{\"device_id\":\"66:9C:4B:DA:13:EA\",\"text\":\"please dance\"}'"
RELAY__BUSINESS__0__URL="http://127.0.0.1:$business_port/chat" RELAY__CONSOLE__ENABLED=true \
    "$PYTHON" -m relay serve --config config.toml --port "$relay_port" "$@"
