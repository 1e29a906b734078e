#!/usr/bin/env bash
# Runs a command with the local AWS emulator (moto server) on 127.0.0.1.
#
#   scripts/with-emulator.sh cargo test --workspace
#
# Creates the project-local virtualenv .venv with moto[server] if missing, starts the server on a
# free loopback port, exports its address (AWS_ENDPOINT_URL) with dummy credentials and a region,
# runs the command, and stops the server when the command ends, fails or is interrupted.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.venv"
# the pin and the set-up are shared with lambda_stream::testing, which starts an emulator itself
# when a plain `cargo test` runs without one
requirements="$root/core/emulator/requirements.txt"

if [ ! -x "$venv/bin/moto_server" ]; then
  echo "emulator: installing $(cat "$requirements") into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
fi

port=$("$venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p "$root/target"
log="$root/target/emulator.log"
"$venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$log" 2>&1 &
pid=$!
stop() {
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
trap stop EXIT
trap 'exit 130' INT TERM

url="http://127.0.0.1:$port"
# waits until it answers, runs Lambda without Docker, creates the tests' role
if ! LAMBDA_TEST_ROLE_ARN=$("$venv/bin/python" "$root/core/emulator/setup.py" "$url"); then
  echo "emulator: moto server did not start; see $log" >&2
  exit 1
fi
echo "emulator: moto server on $url (log: $log)" >&2
export LAMBDA_TEST_ROLE_ARN

export AWS_ENDPOINT_URL="$url"
# for `local-stack load`, which reports the emulator's share of the CPU
export EMULATOR_PID="$pid"
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_SESSION_TOKEN=testing
export AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
# never let the SDK look for credentials or regions anywhere else
export AWS_EC2_METADATA_DISABLED=true AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null
# the command runs in the background so an interrupt sent to this script alone (not to the whole
# terminal's process group) still reaches it: it gets the signal, stops what it started, and
# only then is the emulator stopped
"$@" &
child=$!
forward() {
  kill -"$1" "$child" 2>/dev/null || true
  wait "$child" 2>/dev/null || true
  exit 130
}
trap 'forward INT' INT
trap 'forward TERM' TERM
wait "$child"
