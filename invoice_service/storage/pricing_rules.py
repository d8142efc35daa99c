"""Pricing rules per tenant: tax rules by region, a customer's tax region, coupons and their
redemptions — each verb one transaction — and what an invoice computation reads of them."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import asyncpg

from invoice_service.domain.catalog import Customer
from invoice_service.domain.discounts import Coupon, Redemption
from invoice_service.domain.taxes import TaxRule
from service_runtime.idempotency import Guard
from service_runtime.rejections import conflict, not_found

UPSERT_TAX_RULE = """
INSERT INTO tax_rules (tenant_id, region, name, rate_percent, inclusive) VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (tenant_id, region) DO UPDATE SET name = EXCLUDED.name, rate_percent = EXCLUDED.rate_percent,
       inclusive = EXCLUDED.inclusive, updated_at = now()
RETURNING updated_at
"""
SELECT_TAX_RULES = """
SELECT region, name, rate_percent, inclusive, updated_at FROM tax_rules WHERE tenant_id = $1 AND region > $2
ORDER BY region LIMIT $3
"""
SELECT_TAX_RULE_EXISTS = "SELECT 1 FROM tax_rules WHERE tenant_id = $1 AND region = $2"
SET_CUSTOMER_TAX_REGION = """
UPDATE customers SET tax_region = $3 WHERE tenant_id = $1 AND customer_id = $2
RETURNING customer_id, name, ledger_account_id, created_at, tax_region
"""
INSERT_COUPON = """
INSERT INTO coupons (tenant_id, coupon_code, name, percent_off, amount_off, currency, duration_periods, applies_to)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING RETURNING created_at
"""
_COUPON_COLUMNS = "coupon_code, name, percent_off, amount_off, currency, duration_periods, applies_to, created_at"
SELECT_COUPONS = f"""
SELECT {_COUPON_COLUMNS} FROM coupons WHERE tenant_id = $1 AND coupon_code > $2 ORDER BY coupon_code LIMIT $3
"""
SELECT_COUPON = f"SELECT {_COUPON_COLUMNS} FROM coupons WHERE tenant_id = $1 AND coupon_code = $2"
INSERT_REDEMPTION = """
INSERT INTO coupon_redemptions (tenant_id, customer_id, coupon_code, redeemed_at) VALUES ($1, $2, $3, $4)
ON CONFLICT DO NOTHING RETURNING created_at
"""
SELECT_CUSTOMER_EXISTS = "SELECT 1 FROM customers WHERE tenant_id = $1 AND customer_id = $2"
# What an invoice computation needs: the customer's redemptions (in redemption order) with their
# coupons, and the tax rule of the customer's region (if any), in one round trip each.
_C_COUPON_COLUMNS = ", ".join("c." + x.strip() for x in _COUPON_COLUMNS.split(","))
SELECT_REDEMPTIONS = f"""
SELECT r.redeemed_at, r.created_at AS redemption_created, {_C_COUPON_COLUMNS}
FROM coupon_redemptions r
JOIN coupons c ON c.tenant_id = r.tenant_id AND c.coupon_code = r.coupon_code
WHERE r.tenant_id = $1 AND r.customer_id = $2
ORDER BY r.redeemed_at, r.coupon_code
"""
SELECT_CUSTOMER_TAX_RULE = """
SELECT t.region, t.name, t.rate_percent, t.inclusive, t.updated_at FROM customers c
JOIN tax_rules t ON t.tenant_id = c.tenant_id AND t.region = c.tax_region
WHERE c.tenant_id = $1 AND c.customer_id = $2
"""


def _coupon(row: asyncpg.Record) -> Coupon:
    return Coupon(row["coupon_code"], row["name"], row["percent_off"], row["amount_off"], row["currency"],
                  row["duration_periods"], row["applies_to"], row["created_at"])


def _rule(row: asyncpg.Record) -> TaxRule:
    return TaxRule(row["region"], row["name"], Decimal(row["rate_percent"]), row["inclusive"], row["updated_at"])


class PricingRuleOperations:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def set_tax_rule(self, guard: Guard, rule: TaxRule) -> TaxRule:
        """Creates or replaces the tenant's rule for `rule.region`. Frozen invoices keep the rule
        they were taxed by; drafts use the new one when recomputed."""
        async with self._pool.acquire() as conn, conn.transaction():
            await guard.claim(conn)
            at = await conn.fetchval(UPSERT_TAX_RULE, guard.tenant_id, rule.region, rule.name, rule.rate_percent,
                                     rule.inclusive)
            result = TaxRule(rule.region, rule.name, rule.rate_percent, rule.inclusive, at)
            await guard.record(conn, result)
            return result

    async def list_tax_rules(self, tenant: str, after: str, limit: int) -> list[TaxRule]:
        """A page of the tenant's rules by region, after the region `after` ("" = from the first)."""
        return [_rule(r) for r in await self._pool.fetch(SELECT_TAX_RULES, tenant, after, limit)]

    async def set_customer_tax_region(self, guard: Guard, customer_id: str, region: str) -> Customer:
        """Names the customer's tax region ("" = none); a region needs a tax rule first."""
        async with self._pool.acquire() as conn, conn.transaction():
            await guard.claim(conn)
            if region and await conn.fetchval(SELECT_TAX_RULE_EXISTS, guard.tenant_id, region) is None:
                raise not_found("tax_region", f"no tax rule for region {region!r} (SetTaxRule first)")
            row = await conn.fetchrow(SET_CUSTOMER_TAX_REGION, guard.tenant_id, customer_id, region)
            if row is None:
                raise not_found("customer_id", f"no customer {customer_id!r}")
            result = Customer(row["customer_id"], row["name"], row["ledger_account_id"], row["created_at"],
                              row["tax_region"])
            await guard.record(conn, result)
            return result

    async def create_coupon(self, guard: Guard, coupon: Coupon) -> Coupon:
        async with self._pool.acquire() as conn, conn.transaction():
            await guard.claim(conn)
            at = await conn.fetchval(INSERT_COUPON, guard.tenant_id, coupon.coupon_code, coupon.name,
                                     coupon.percent_off, coupon.amount_off, coupon.currency,
                                     coupon.duration_periods, coupon.applies_to)
            if at is None:
                raise conflict("coupon_code", f"coupon {coupon.coupon_code!r} already exists")
            result = Coupon(coupon.coupon_code, coupon.name, coupon.percent_off, coupon.amount_off, coupon.currency,
                            coupon.duration_periods, coupon.applies_to, at)
            await guard.record(conn, result)
            return result

    async def list_coupons(self, tenant: str, after: str, limit: int) -> list[Coupon]:
        """A page of the tenant's coupons by code, after the code `after` ("" = from the first)."""
        return [_coupon(r) for r in await self._pool.fetch(SELECT_COUPONS, tenant, after, limit)]

    async def redeem_coupon(self, guard: Guard, customer_id: str, coupon_code: str,
                            redeemed_at: datetime) -> Redemption:
        async with self._pool.acquire() as conn, conn.transaction():
            await guard.claim(conn)
            if await conn.fetchval(SELECT_CUSTOMER_EXISTS, guard.tenant_id, customer_id) is None:
                raise not_found("customer_id", f"no customer {customer_id!r}")
            row = await conn.fetchrow(SELECT_COUPON, guard.tenant_id, coupon_code)
            if row is None:
                raise not_found("coupon_code", f"no coupon {coupon_code!r}")
            at = await conn.fetchval(INSERT_REDEMPTION, guard.tenant_id, customer_id, coupon_code, redeemed_at)
            if at is None:
                raise conflict("coupon_code", f"customer {customer_id!r} already redeemed {coupon_code!r}")
            result = Redemption(customer_id, _coupon(row), redeemed_at, at)
            await guard.record(conn, result)
            return result


async def customer_terms(conn: asyncpg.Connection, tenant: str,
                         customer_id: str) -> tuple[list[Redemption], TaxRule | None]:
    """The customer's redemptions (in redemption order) and its tax rule (None: not taxed)."""
    redemptions = [Redemption(customer_id, _coupon(r), r["redeemed_at"], r["redemption_created"])
                   for r in await conn.fetch(SELECT_REDEMPTIONS, tenant, customer_id)]
    rule = await conn.fetchrow(SELECT_CUSTOMER_TAX_RULE, tenant, customer_id)
    return redemptions, (_rule(rule) if rule else None)
