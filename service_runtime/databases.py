"""The services' databases: found (or started: one per service, on external DSNs or the embedded
Postgres) and brought up to date, the same way for every service (`migrate_service`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from service_runtime.embedded_postgres import EmbeddedPostgres
from service_runtime.postgres import migrate
from service_runtime.settings import Settings

LEDGER_DB = "credits_ledger"
INVOICE_DB = "credits_invoice"
TENANCY_MIGRATIONS = Path(__file__).parent / "migrations"


@dataclass
class Databases:
    ledger_dsn: str
    invoice_dsn: str
    embedded: EmbeddedPostgres | None


def embedded_server(settings: Settings) -> EmbeddedPostgres:
    return EmbeddedPostgres(settings.data_dir / "postgres", settings.embedded_pg_port)


def resolve_databases(settings: Settings, *, start_embedded: bool = True) -> Databases:
    """DSNs from settings; any left empty is a database on the embedded server (started if asked)."""
    ledger, invoice = settings.ledger_dsn, settings.invoice_dsn
    pg: EmbeddedPostgres | None = None
    if not ledger or not invoice:
        pg = embedded_server(settings)
        if start_embedded:
            pg.start()
        if not ledger:
            ledger = pg.create_database(LEDGER_DB) if start_embedded else pg.dsn(LEDGER_DB)
        if not invoice:
            invoice = pg.create_database(INVOICE_DB) if start_embedded else pg.dsn(INVOICE_DB)
    return Databases(ledger, invoice, pg)


async def migrate_service(dsn: str, service_migrations: Path) -> list[str]:
    """Brings a service's database up to date; what both servers run at start and `creditctl migrate` runs.

    Always in this order: the shared tenancy migrations (service_runtime/migrations), then the
    service's own (its storage/migrations), then the row-security policies re-applied to every
    tenant table (service_runtime.row_policies). Returns the names of the migrations applied now.
    """
    return await migrate(dsn, TENANCY_MIGRATIONS, service_migrations)
