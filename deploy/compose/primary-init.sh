#!/usr/bin/env bash
# Runs once, when the primary's data folder is created (docker-entrypoint-initdb.d): lets the
# replica stream, and creates the two roles with passwords (`botfleet migrate` then only grants).
set -euo pipefail
echo "host replication all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<SQL
CREATE ROLE botfleet_worker LOGIN PASSWORD '$BOTFLEET_WORKER_PASSWORD';
CREATE ROLE botfleet_api LOGIN PASSWORD '$BOTFLEET_API_PASSWORD';
SQL
