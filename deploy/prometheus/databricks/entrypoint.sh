#!/bin/sh
# Prometheus against a real Databricks workspace (docker-compose.databricks.yml).
#
# Prometheus reads no environment variables in its configuration, so this writes the files
# that ../prometheus.databricks.yml reads, then runs the command it was given (Prometheus):
#   $DATABRICKS_SCRAPE_DIR/token          DATABRICKS_TOKEN, readable by this user only
#   $DATABRICKS_SCRAPE_DIR/endpoints.yml  one export-metrics target per endpoint named in
#                                         ROLLOUT_SCRAPE_ENDPOINTS (comma-separated)
# DATABRICKS_SCRAPE_DIR defaults to /run/databricks, a tmpfs in the override: the token is
# never written to a volume.
set -eu

dir="${DATABRICKS_SCRAPE_DIR:-/run/databricks}"
: "${DATABRICKS_HOST:?set DATABRICKS_HOST to the workspace URL, e.g. https://adb-123.4.azuredatabricks.net}"
: "${DATABRICKS_TOKEN:?set DATABRICKS_TOKEN to a token that may read the endpoints}"

scheme=https
case "$DATABRICKS_HOST" in http://*) scheme=http ;; esac
host="${DATABRICKS_HOST#*://}"
host="${host%%/*}"

umask 077
mkdir -p "$dir"
printf '%s' "$DATABRICKS_TOKEN" > "$dir/token"

# Written aside and renamed: Prometheus watches the file and must never read half of it.
targets="$dir/endpoints.yml.new"
echo "# Written by entrypoint.sh from ROLLOUT_SCRAPE_ENDPOINTS." > "$targets"
count=0
for endpoint in $(printf '%s' "${ROLLOUT_SCRAPE_ENDPOINTS:-}" | tr ',' ' '); do
  case "$endpoint" in
    *[!A-Za-z0-9_-]*)
      echo "entrypoint.sh: '$endpoint' is not a serving endpoint name" >&2
      exit 2
      ;;
  esac
  {
    echo "- targets: [\"$host\"]"
    echo "  labels:"
    echo "    __scheme__: $scheme"
    echo "    __metrics_path__: /api/2.0/serving-endpoints/$endpoint/metrics"
    echo "    endpoint: $endpoint"
  } >> "$targets"
  count=$((count + 1))
done
if [ "$count" -eq 0 ]; then
  echo "[]" >> "$targets"
fi
mv "$targets" "$dir/endpoints.yml"

exec "$@"
