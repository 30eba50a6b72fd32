#!/bin/sh
# Refresh the dashboard's vendored front-end files (dashboards/static/vendor/) from npm.
#
#   dashboards/refresh-vendor.sh            the versions pinned below
#   LEAFLET=1.9.4 UPLOT=1.6.32 dashboards/refresh-vendor.sh     other versions
#
# Installs the packages with npm into a temporary folder (nothing is installed in the repo,
# nothing runs at the dashboard's run time), copies the built files and each package's
# LICENSE, and prints the file table (path, SHA-256, package, version, licence) to paste
# into dashboards/static/vendor/README.md. tests/test_dashboard_browser.py checks that
# table against the files. Needs node and npm.
set -eu

LEAFLET=${LEAFLET:-1.9.4}
UPLOT=${UPLOT:-1.6.32}
TOPOJSON_CLIENT=${TOPOJSON_CLIENT:-3.1.0}
WORLD_ATLAS=${WORLD_ATLAS:-2.0.2}

here=$(cd "$(dirname "$0")" && pwd)
vendor="$here/static/vendor"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

cd "$tmp"
npm init -y >/dev/null
npm install --no-audit --no-fund --ignore-scripts --save-exact \
  "leaflet@$LEAFLET" "uplot@$UPLOT" "topojson-client@$TOPOJSON_CLIENT" \
  "world-atlas@$WORLD_ATLAS" >/dev/null
m="$tmp/node_modules"

rm -rf "$vendor/leaflet" "$vendor/uplot" "$vendor/topojson-client" "$vendor/world-atlas"
mkdir -p "$vendor/leaflet/images" "$vendor/uplot" "$vendor/topojson-client" "$vendor/world-atlas"
cp "$m/leaflet/dist/leaflet.js" "$m/leaflet/dist/leaflet.css" "$m/leaflet/LICENSE" "$vendor/leaflet/"
cp "$m/leaflet/dist/images/"*.png "$vendor/leaflet/images/"
cp "$m/uplot/dist/uPlot.iife.min.js" "$m/uplot/dist/uPlot.min.css" "$m/uplot/LICENSE" "$vendor/uplot/"
cp "$m/topojson-client/dist/topojson-client.min.js" "$m/topojson-client/LICENSE" \
  "$vendor/topojson-client/"
cp "$m/world-atlas/countries-50m.json" "$m/world-atlas/LICENSE" "$vendor/world-atlas/"

cd "$vendor"
echo "| file | SHA-256 | package | version | licence |"
echo "|---|---|---|---|---|"
find . -type f ! -name README.md | sed 's|^\./||' | sort | while read -r f; do
  pkg=${f%%/*}
  version=$(node -p "require('$m/$pkg/package.json').version")
  licence=$(node -p "require('$m/$pkg/package.json').license")
  echo "| \`$f\` | \`$(sha256sum "$f" | cut -d' ' -f1)\` | $pkg | $version | $licence |"
done
