#!/usr/bin/env bash
# Sets up, then runs the reference business service (port 8090) and the relay (port 8000)
# on the shipped config.toml. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/python examples/business_service.py --host 127.0.0.1 --port 8090 &
business=$!
trap 'kill $business 2>/dev/null || true' EXIT
echo "reference business service on http://127.0.0.1:8090/chat (pid $business)"
echo "try, in another terminal:"
echo "  curl -N -X POST localhost:8000/api/v1/simulate -d '{\"device_id\":\"66:9C:4B:DA:13:EA\",\"text\":\"please dance\"}'"
.venv/bin/python -m relay serve --config config.toml "$@"
