#!/bin/sh
# Runs once, on the first start of an empty data volume (docker-entrypoint-initdb.d).
# One Postgres *server* for local use, but two *databases* with two owners, so the ledger role
# cannot read the invoice database and vice versa — as in production, where they are two instances.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
     -v ledger_pw="$LEDGER_DB_PASSWORD" -v invoice_pw="$INVOICE_DB_PASSWORD" \
     -v app_pw="$APP_DB_PASSWORD" <<'SQL'
-- The role the services log in as: no superuser, no owner, so row-level security applies to it.
-- Each migration grants it DML on its database and (re)creates the tenant policies.
CREATE ROLE credits_app LOGIN PASSWORD :'app_pw' NOSUPERUSER NOBYPASSRLS;
CREATE ROLE credits_ledger LOGIN PASSWORD :'ledger_pw';
CREATE ROLE credits_invoice LOGIN PASSWORD :'invoice_pw';
CREATE DATABASE credits_ledger OWNER credits_ledger;
CREATE DATABASE credits_invoice OWNER credits_invoice;
REVOKE ALL ON DATABASE credits_ledger FROM PUBLIC;
REVOKE ALL ON DATABASE credits_invoice FROM PUBLIC;
SQL
