#!/usr/bin/env bash
# One entry point for a fresh machine; installs what it needs, then runs:
#   scripts/dev.sh demo   the main job on the embedded default (the sandbox demo; on the real
#                         integration repository when ../shared holds its bundle)
#   scripts/dev.sh test   the whole test suite (extra arguments go to pytest)
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
# requirements.lock pins every dependency to the versions the suite last passed with.
.venv/bin/python -m pip install -q --disable-pip-version-check -c requirements.lock -e '.[sandbox,test]'
# No telemetry from any server we start; nothing leaves the machine.
export PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1
cmd=${1:-}
shift || true
case "$cmd" in
    demo)
        # The demo runs on the real mendersoftware/integration repository when its bundle is in
        # the shared data beside the checkout (<folder>/main and <folder>/shared, as the real-files
        # tests find it), on the generated fixture repository otherwise. The suite's real-files
        # tests and fault matrix find the bundle themselves.
        bundle="$(cd .. && pwd -P)/shared/upstream/mendersoftware-integration.bundle"
        if [ -z "${MENDER_INTEGRATION_UPSTREAM:-}" ] && [ -f "$bundle" ]; then
            export MENDER_INTEGRATION_UPSTREAM="$bundle"
        fi
        echo "demo on ${MENDER_INTEGRATION_UPSTREAM:-the generated fixture repository}" >&2
        exec .venv/bin/mender-upgrade demo "$@" ;;
    test)
        # The mongo stand-in also runs on the host (Python 3.13 venv) for its own and the cleanup tests.
        .venv/bin/python -m mender_upgrade.sandbox.standin_venv
        # tests/browser drive Debian's Chromium through Playwright (which may not download its own).
        if [ ! -x /usr/bin/chromium ]; then
            export DEBIAN_FRONTEND=noninteractive
            apt-get install -y -q chromium || { apt-get update -q && apt-get install -y -q chromium; }
        fi
        # tests/test_tls_front.py runs Debian's nginx as the TLS front of the README's fleet setup.
        if [ ! -x /usr/sbin/nginx ]; then
            export DEBIAN_FRONTEND=noninteractive
            apt-get install -y -q nginx-light || { apt-get update -q && apt-get install -y -q nginx-light; }
        fi
        exec .venv/bin/python -m pytest "$@" ;;
    *) echo "usage: scripts/dev.sh demo|test [args]" >&2; exit 2 ;;
esac
