#!/usr/bin/env bash
# Set up everything TrustFleet needs on a Debian machine, idempotently:
#   - Debian packages (mosquitto, softhsm2, gpsd, gpsd-clients, chromium, victoria-metrics, etcd-server), installed with apt-get only
#     when missing. gpsd-clients is the package that ships gpsfake (gpsd's log replayer, which
#     the GPS hardware tests use); its own dependencies (matplotlib, GTK) come with it.
#   - a .venv with the project, its dev tools and the LLRP extra (sllurp) installed (re-done
#     only when pyproject.toml changes)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"

need_pkgs=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_pkgs+=(mosquitto)
[ -e /usr/lib/softhsm/libsofthsm2.so ] && command -v softhsm2-util >/dev/null 2>&1 || need_pkgs+=(softhsm2)
command -v gpsd >/dev/null 2>&1 || [ -x /usr/sbin/gpsd ] || need_pkgs+=(gpsd)
command -v gpsfake >/dev/null 2>&1 || [ -x /usr/bin/gpsfake ] || need_pkgs+=(gpsd-clients)
# Headless Chromium for the dashboard's browser tests (Playwright drives the system browser).
[ -x /usr/bin/chromium ] || need_pkgs+=(chromium)
# A server that accepts the InfluxDB v2 write API, for the readings mirror's tests.
command -v victoria-metrics >/dev/null 2>&1 || [ -x /usr/bin/victoria-metrics ] || need_pkgs+=(victoria-metrics)
# etcd orders the batches of a consortium of ledger nodes (trustfleet up --nodes N, its tests).
command -v etcd >/dev/null 2>&1 || [ -x /usr/bin/etcd ] || need_pkgs+=(etcd-server)

if [ "${#need_pkgs[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "bootstrap: missing Debian packages: ${need_pkgs[*]} (run as root, or: sudo apt-get install ${need_pkgs[*]})" >&2
    exit 1
  fi
  echo "bootstrap: installing Debian packages: ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

# The packaged mosquitto service is not ours: we start our own broker per data folder.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet mosquitto 2>/dev/null; then
  systemctl stop mosquitto || true
fi
# Nor is the packaged etcd service: trustfleet up and the tests start their own clusters.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet etcd 2>/dev/null; then
  systemctl stop etcd || true
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "bootstrap: creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.trustfleet-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "bootstrap: installing trustfleet into $VENV"
  # pip and the build backend are chatty; keep their output in a log, show it on failure
  log="$VENV/install.log"
  if ! { "$VENV/bin/python" -m pip install -q --upgrade pip \
         && "$VENV/bin/python" -m pip install -q -e '.[dev,llrp]'; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "bootstrap: installing into $VENV failed (log above, also in $log)" >&2
    exit 1
  fi
  touch "$stamp"
fi
echo "bootstrap: ready ($("$VENV/bin/python" --version), mosquitto $(mosquitto -h 2>/dev/null | head -1 | awk '{print $3}'))"
