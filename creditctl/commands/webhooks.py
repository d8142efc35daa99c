"""creditctl webhooks create|list|rotate|deliveries|redeliver|receive: signed webhook endpoints, their
delivery log and dead letters (CreateWebhookEndpoint, ListWebhookEndpoints, RotateWebhookSecret,
ListWebhookDeliveries, ListWebhookAttempts, RedeliverWebhook), and a local receiver to watch events arrive."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import click
from credits.alerts.v1 import alerts_pb2 as apb

from creditctl.commands.alerts import seconds
from creditctl.connection import paged, rpc
from creditctl.help_listing import Group
from creditctl.output import Format, console, emit_record, emit_rows, format_options, note
from creditctl.records import idempotency_option, key_for, record, records, short_instant

STATUSES = {"pending": apb.PENDING, "delivered": apb.DELIVERED, "dead": apb.DEAD}


@click.group("webhooks", cls=Group, help="signed webhook endpoints, their deliveries and dead letters")
def command() -> None:
    pass


@command.command("create", help="an endpoint; prints its signing secret once")
@click.argument("endpoint_id")
@click.argument("url")
@click.option("--event-type", "event_types", multiple=True, help="subscribe to this type only (repeatable)")
@click.option("--allow-private-targets", is_flag=True, help="allow loopback/private addresses (a local receiver)")
@idempotency_option
@format_options()
def create(endpoint_id: str, url: str, event_types: tuple[str, ...], allow_private_targets: bool,
           idempotency_key: str, fmt: Format) -> int:
    request = apb.CreateWebhookEndpointRequest(idempotency_key=key_for(idempotency_key), endpoint_id=endpoint_id,
                                               url=url, event_types=list(event_types),
                                               allow_private_targets=allow_private_targets)
    emit_record(record(rpc("alerts", "CreateWebhookEndpoint", request)), fmt, id_field="endpoint_id")
    return 0


@command.command("list", help="the tenant's endpoints (secrets are never listed)")
@format_options(csv_=True, quiet=True)
def list_(fmt: Format) -> int:
    found = paged("alerts", "ListWebhookEndpoints", apb.ListWebhookEndpointsRequest(), "endpoints")
    emit_rows(records(found), ("endpoint_id", "url", "event_types", "active_secrets"), fmt, id_column="endpoint_id")
    return 0


@command.command("rotate", help="a new secret; the old ones keep signing for --overlap")
@click.argument("endpoint_id")
@click.option("--overlap", default="1d", help="how long the older secrets still sign (e.g. 1h, 1d)")
@idempotency_option
@format_options()
def rotate(endpoint_id: str, overlap: str, idempotency_key: str, fmt: Format) -> int:
    request = apb.RotateWebhookSecretRequest(idempotency_key=key_for(idempotency_key), endpoint_id=endpoint_id,
                                             overlap_s=seconds(overlap, "--overlap"))
    emit_record(record(rpc("alerts", "RotateWebhookSecret", request)), fmt, id_field="endpoint_id")
    return 0


@command.command("deliveries", help="an endpoint's delivery log (every event, its attempts and status)")
@click.argument("endpoint_id")
@click.option("--status", type=click.Choice(list(STATUSES), case_sensitive=False), default=None)
@format_options(csv_=True, quiet=True)
def deliveries(endpoint_id: str, status: str | None, fmt: Format) -> int:
    request = apb.ListWebhookDeliveriesRequest(endpoint_id=endpoint_id,
                                               status=STATUSES[status.lower()] if status else 0)
    rows = records(paged("alerts", "ListWebhookDeliveries", request, "deliveries"))
    if fmt is Format.TABLE:
        for row in rows:
            row["next_attempt_at"] = short_instant(row.get("next_attempt_at", ""))
    emit_rows(rows, ("delivery_id", "event_type", "status", "attempts", "last_http_status", "last_error",
                     "next_attempt_at"), fmt, id_column="delivery_id")
    return 0


@command.command("attempts", help="an endpoint's per-attempt delivery log (each POST: when, HTTP status or error, ms)")
@click.argument("endpoint_id")
@click.option("--delivery", "delivery_id", default="", help="only this delivery's attempts (event_id@endpoint_id)")
@format_options(csv_=True, quiet=True)
def attempts(endpoint_id: str, delivery_id: str, fmt: Format) -> int:
    request = apb.ListWebhookAttemptsRequest(endpoint_id=endpoint_id, delivery_id=delivery_id)
    rows = records(paged("alerts", "ListWebhookAttempts", request, "attempts"))
    if fmt is Format.TABLE:
        for row in rows:
            row["at"] = short_instant(row.get("at", ""))
    emit_rows(rows, ("delivery_id", "attempt", "at", "http_status", "error", "duration_ms"), fmt,
              id_column="delivery_id")
    return 0


@command.command("redeliver", help="put a delivery (a dead letter) back in the queue")
@click.argument("delivery_id")
@idempotency_option
@format_options()
def redeliver(delivery_id: str, idempotency_key: str, fmt: Format) -> int:
    request = apb.RedeliverWebhookRequest(idempotency_key=key_for(idempotency_key), delivery_id=delivery_id)
    emit_record(record(rpc("alerts", "RedeliverWebhook", request)), fmt, id_field="delivery_id")
    return 0


@command.command("receive", help="a local receiver that verifies signatures and prints events as they arrive")
@click.option("--port", type=int, default=8787)
@click.option("--secret", "secrets", multiple=True, required=True, help="the endpoint's secret (repeatable)")
def receive(port: int, secrets: tuple[str, ...]) -> int:
    from ledger_service.webhooks.example_receiver import PATH, ExampleReceiver

    def show(event: dict[str, Any]) -> None:
        console().print(json.dumps(event, sort_keys=True))

    async def run() -> None:
        receiver = ExampleReceiver(list(secrets), on_event=show)
        bound = await receiver.start(port)
        note(f"listening on http://127.0.0.1:{bound}{PATH} (create the endpoint with --allow-private-targets); "
             "Ctrl-C stops")
        try:
            await asyncio.Event().wait()
        finally:
            await receiver.stop()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass
    return 0
