#!/usr/bin/env bash
# Debian packages that some integration tests drive as real processes:
#   postgresql  - MLflow tracking server on PostgreSQL (tests/e2e/test_mlflow_postgres.py)
#   prometheus  - a real scraper reading the app's metrics (monitoring tests)
#   chromium    - the storefront's real-browser test (driven by Playwright with executable_path)
# Installs only what is missing; needs root (or sudo). `make system-deps` runs it.
set -euo pipefail
need=()
[ -x /usr/lib/postgresql/15/bin/initdb ] || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if [ ${#need[@]} -eq 0 ]; then
  echo "system deps: all present"
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "system deps: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# Debian's postgresql package may create and start a default cluster; the tests run their own.
$SUDO pg_ctlcluster 15 main stop >/dev/null 2>&1 || true
echo "system deps: installed ${need[*]}"
