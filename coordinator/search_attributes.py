"""Custom search attributes set by the workflows, and their idempotent registration.

`CreditsOutcome` doubles as the saga's durable decision marker: the workflow upserts
"committing" in the same workflow task that schedules the first commit, so Temporal's history
holds the decision before any participant is told to commit. The in-doubt resolver reads it back.
"""

from __future__ import annotations

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest, ListSearchAttributesRequest
from temporalio.client import Client
from temporalio.common import SearchAttributeKey

TENANT = SearchAttributeKey.for_keyword("CreditsTenant")
CUSTOMER = SearchAttributeKey.for_keyword("CreditsCustomer")
INVOICE = SearchAttributeKey.for_keyword("CreditsInvoice")
PERIOD = SearchAttributeKey.for_keyword("CreditsPeriod")
OUTCOME = SearchAttributeKey.for_keyword("CreditsOutcome")

ALL_KEYS = (TENANT, CUSTOMER, INVOICE, PERIOD, OUTCOME)
# For `temporal server start-dev --search-attribute Name=Keyword`.
DEV_SERVER_FLAGS = {key.name: "Keyword" for key in ALL_KEYS}

# Outcomes meaning "the commit decision is recorded": the resolver commits, never compensates.
DECIDED_OUTCOMES = frozenset({"committing", "finalized", "voiding", "voided"})


async def register(client: Client) -> list[str]:
    """Adds the attributes the namespace lacks; returns the names added (idempotent)."""
    ns = client.namespace
    existing = await client.operator_service.list_search_attributes(ListSearchAttributesRequest(namespace=ns))
    missing = {key.name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD for key in ALL_KEYS
               if key.name not in existing.custom_attributes}
    if missing:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(namespace=ns, search_attributes=missing))
    return sorted(missing)
