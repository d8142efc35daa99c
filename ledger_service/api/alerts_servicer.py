"""AlertsService gRPC servicer (served by the ledger server, on the ledger's database): each method
unpacks (`alerts_wire`), calls one operation (`operations/alerts.py`), packs."""

from __future__ import annotations

from typing import Any, TypeVar

from credits.alerts.v1 import alerts_pb2 as pb
from credits.alerts.v1 import alerts_pb2_grpc
from google.protobuf.message import Message

from ledger_service.api import alerts_wire as w
from ledger_service.operations import alerts
from ledger_service.operations.calls import Call
from ledger_service.operations.context import Ledger
from service_runtime.grpc_server import current_caller
from service_runtime.identifiers import check_id, check_key
from service_runtime.permissions import ALERTS_SERVICE

M = TypeVar("M", bound=Message)
SERVICE = ALERTS_SERVICE


def _tenant() -> str:
    return current_caller().tenant_id


class AlertsServicer(alerts_pb2_grpc.AlertsServiceServicer):
    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    def _call(self, name: str, request: Message, response: type[M]) -> Call[M]:
        key = check_key(request.idempotency_key)  # type: ignore[attr-defined]
        return Call(current_caller(), f"/{SERVICE}/{name}", request, key, response)

    # --- rules and events ------------------------------------------------------------------------

    async def CreateAlertRule(self, request: pb.CreateAlertRuleRequest, context: Any) -> pb.AlertRule:
        call = self._call("CreateAlertRule", request, pb.AlertRule)
        return await alerts.create_alert_rule(self._ledger, call, w.rule_order(request), w.rule)

    async def ListAlertRules(self, request: pb.ListAlertRulesRequest, context: Any) -> pb.ListAlertRulesResponse:
        account_id = check_id(request.account_id, "account_id", required=False)
        after, limit = w.page(request)
        found, token = await alerts.list_alert_rules(self._ledger, _tenant(), account_id, after, limit, w.rule)
        return pb.ListAlertRulesResponse(rules=found, next_page_token=token)

    async def DisableAlertRule(self, request: pb.DisableAlertRuleRequest, context: Any) -> pb.AlertRule:
        call = self._call("DisableAlertRule", request, pb.AlertRule)
        return await alerts.disable_alert_rule(self._ledger, call, check_id(request.rule_id, "rule_id"), w.rule)

    async def ListAlertEvents(self, request: pb.ListAlertEventsRequest, context: Any) -> pb.ListAlertEventsResponse:
        account_id, rule_id, after, limit = w.event_page(request)
        found, token = await alerts.list_alert_events(self._ledger, _tenant(), account_id, rule_id, after, limit,
                                                      w.event)
        return pb.ListAlertEventsResponse(events=found, next_page_token=token)

    # --- webhooks --------------------------------------------------------------------------------

    async def CreateWebhookEndpoint(self, request: pb.CreateWebhookEndpointRequest,
                                    context: Any) -> pb.WebhookEndpoint:
        call = self._call("CreateWebhookEndpoint", request, pb.WebhookEndpoint)
        return await alerts.create_webhook_endpoint(self._ledger, call, w.endpoint(request), w.webhook_endpoint)

    async def ListWebhookEndpoints(self, request: pb.ListWebhookEndpointsRequest,
                                   context: Any) -> pb.ListWebhookEndpointsResponse:
        after, limit = w.page(request)
        found, token = await alerts.list_webhook_endpoints(self._ledger, _tenant(), after, limit, w.webhook_endpoint)
        return pb.ListWebhookEndpointsResponse(endpoints=found, next_page_token=token)

    async def RotateWebhookSecret(self, request: pb.RotateWebhookSecretRequest, context: Any) -> pb.WebhookEndpoint:
        call = self._call("RotateWebhookSecret", request, pb.WebhookEndpoint)
        endpoint_id = check_id(request.endpoint_id, "endpoint_id")
        return await alerts.rotate_webhook_secret(self._ledger, call, endpoint_id, request.overlap_s,
                                                  w.webhook_endpoint)

    async def ListWebhookDeliveries(self, request: pb.ListWebhookDeliveriesRequest,
                                    context: Any) -> pb.ListWebhookDeliveriesResponse:
        endpoint_id, status, after, limit = w.delivery_page(request)
        found, token = await alerts.list_webhook_deliveries(self._ledger, _tenant(), endpoint_id, status, after,
                                                            limit, w.delivery)
        return pb.ListWebhookDeliveriesResponse(deliveries=found, next_page_token=token)

    async def ListWebhookAttempts(self, request: pb.ListWebhookAttemptsRequest,
                                  context: Any) -> pb.ListWebhookAttemptsResponse:
        endpoint_id, event_id, after, limit = w.attempt_page(request)
        found, token = await alerts.list_webhook_attempts(self._ledger, _tenant(), endpoint_id, event_id, after, limit,
                                                          w.attempt)
        return pb.ListWebhookAttemptsResponse(attempts=found, next_page_token=token)

    async def RedeliverWebhook(self, request: pb.RedeliverWebhookRequest, context: Any) -> pb.WebhookDelivery:
        call = self._call("RedeliverWebhook", request, pb.WebhookDelivery)
        event_id, endpoint_id = w.delivery_id(request.delivery_id)
        return await alerts.redeliver_webhook(self._ledger, call, event_id, endpoint_id, w.delivery)

    # --- auto top-up -----------------------------------------------------------------------------

    async def SetTopUpPolicy(self, request: pb.SetTopUpPolicyRequest, context: Any) -> pb.TopUpPolicy:
        call = self._call("SetTopUpPolicy", request, pb.TopUpPolicy)
        return await alerts.set_topup_policy(self._ledger, call, w.topup_order(request), w.topup_policy)

    async def GetTopUpPolicy(self, request: pb.GetTopUpPolicyRequest, context: Any) -> pb.TopUpPolicy:
        account_id, unit = check_id(request.account_id, "account_id"), check_id(request.unit, "unit")
        return await alerts.get_topup_policy(self._ledger, _tenant(), account_id, unit, w.topup_policy)

    async def ListTopUps(self, request: pb.ListTopUpsRequest, context: Any) -> pb.ListTopUpsResponse:
        account_id, after, limit = w.topup_page(request)
        found, token = await alerts.list_topups(self._ledger, _tenant(), account_id, after, limit, w.topup)
        return pb.ListTopUpsResponse(topups=found, next_page_token=token)
