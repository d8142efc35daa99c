"""SQL of the invoice verbs, as named constants."""

INVOICE_COLUMNS = """
invoice_id, customer_id, subscription_id, plan_id, ledger_account_id, currency, period_start, period_end,
status, number, subtotal_minor, credits_minor, split_at, draft_digest, prepare_key, created_at, computed_at,
prepared_at, finalized_at, void_prepared_at, voided_at, credit_notes, abandoned_at, abandon_reason,
discount_minor, tax_minor, tax_region, tax_name, tax_rate_percent, tax_inclusive
"""
SELECT_INVOICE = f"SELECT {INVOICE_COLUMNS} FROM invoices WHERE tenant_id = $1 AND invoice_id = $2"
SELECT_INVOICE_FOR_UPDATE = SELECT_INVOICE + " FOR UPDATE"
# Locks the customer of an invoice (no row: no such invoice), one round trip.
LOCK_INVOICE_CUSTOMER = """
SELECT c.customer_id FROM customers c
WHERE c.tenant_id = $1
  AND c.customer_id = (SELECT i.customer_id FROM invoices i WHERE i.tenant_id = $1 AND i.invoice_id = $2)
FOR UPDATE OF c
"""

# An invoice header with the billing context pricing needs (the customer's account, current
# subscription and plan, columns prefixed "ctx_"): one round trip instead of two. FOR UPDATE locks
# only the invoice row (the customer row is locked first, by LOCK_INVOICE_CUSTOMER).
_CONTEXT_COLUMNS = """
c.ledger_account_id AS ctx_ledger_account_id, s.subscription_id AS ctx_subscription_id, s.anchor AS ctx_anchor,
s.quantities AS ctx_quantities, p.plan_id AS ctx_plan_id, p.name AS ctx_plan_name, p.currency AS ctx_currency,
p.billing_interval AS ctx_billing_interval, p.terms AS ctx_terms, s.trial_end AS ctx_trial_end,
s.calendar_aligned AS ctx_calendar_aligned, s.ends_at AS ctx_ends_at
"""
SELECT_INVOICE_WITH_CONTEXT = f"""
SELECT {", ".join("i." + c.strip() for c in INVOICE_COLUMNS.split(","))}, {_CONTEXT_COLUMNS}
FROM invoices i
JOIN customers c ON c.tenant_id = i.tenant_id AND c.customer_id = i.customer_id
LEFT JOIN subscriptions s ON s.tenant_id = i.tenant_id AND s.subscription_id = i.subscription_id
LEFT JOIN plans p ON p.tenant_id = s.tenant_id AND p.plan_id = s.plan_id
WHERE i.tenant_id = $1 AND i.invoice_id = $2
"""
SELECT_INVOICE_WITH_CONTEXT_FOR_UPDATE = SELECT_INVOICE_WITH_CONTEXT + " FOR UPDATE OF i"

# The billing context of a subscription ($3; "" = the customer's subscriptions, at most 2 rows: one
# is taken, two is ambiguous).
SELECT_BILLING_CONTEXT = """
SELECT c.customer_id, c.ledger_account_id, s.subscription_id, s.anchor, s.quantities, s.created_at AS sub_created,
       p.plan_id, p.name AS plan_name, p.currency, p.billing_interval, p.terms, p.created_at AS plan_created,
       s.trial_end, s.calendar_aligned, s.ends_at
FROM customers c
LEFT JOIN subscriptions s ON s.tenant_id = c.tenant_id AND s.customer_id = c.customer_id
                         AND ($3 = '' OR s.subscription_id = $3)
LEFT JOIN plans p ON p.tenant_id = s.tenant_id AND p.plan_id = s.plan_id
WHERE c.tenant_id = $1 AND c.customer_id = $2
ORDER BY s.subscription_id LIMIT 2
"""
# The phases of a subscription in force during [$3, $4): the one in force at $3 and those after it,
# each with its plan version's terms.
SELECT_PHASES = """
SELECT f.effective_at, f.plan_id, f.plan_version, f.quantities, f.overrides, v.terms
FROM subscription_phases f
JOIN plan_versions v ON v.tenant_id = f.tenant_id AND v.plan_id = f.plan_id AND v.version = f.plan_version
WHERE f.tenant_id = $1 AND f.subscription_id = $2 AND f.effective_at < $4
  AND f.effective_at >= coalesce((SELECT max(effective_at) FROM subscription_phases
                                  WHERE tenant_id = $1 AND subscription_id = $2 AND effective_at <= $3), $3)
ORDER BY f.effective_at
"""
INSERT_DRAFT = f"""
INSERT INTO invoices (tenant_id, invoice_id, customer_id, subscription_id, plan_id, ledger_account_id, currency,
                      period_start, period_end, status)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'DRAFT')
ON CONFLICT (tenant_id, subscription_id, period_start) WHERE status <> 'VOIDED' DO NOTHING
RETURNING {INVOICE_COLUMNS}
"""
SELECT_LIVE_INVOICE_FOR_UPDATE = f"""
SELECT {INVOICE_COLUMNS} FROM invoices
WHERE tenant_id = $1 AND subscription_id = $2 AND period_start = $3 AND status <> 'VOIDED' FOR UPDATE
"""

# Usage per meter and per piece; the piece is the number of split instants at or before the event.
AGGREGATE_USAGE = """
SELECT meter_code, width_bucket(ts, $5::timestamptz[]) AS piece,
       sum(quantity) AS total, count(*) AS events, max(quantity) AS peak
FROM usage_events
WHERE tenant_id = $1 AND customer_id = $2 AND ts >= $3 AND ts < $4 AND meter_code = ANY($6::text[])
GROUP BY meter_code, piece
"""
# One meter's usage per variant and per piece, for a usage charge with dimensions
# (domain/dimensions.py): only events matching every filter ($7: {"key": ["value", ...]}), the
# variant being "<group_by>=<value>" ($8 = group_by), or peak/off_peak by the event's local hour and
# ISO weekday in time zone $9 ($10 peak hours, $11 peak days, none = every day), or "".
AGGREGATE_VARIANTS = """
SELECT CASE WHEN $8::text <> '' THEN $8::text || '=' || coalesce(properties ->> $8::text, '')
            WHEN $9::text <> '' THEN
                CASE WHEN extract(hour FROM ts AT TIME ZONE $9::text)::int = ANY($10::int[])
                      AND (cardinality($11::int[]) = 0
                           OR extract(isodow FROM ts AT TIME ZONE $9::text)::int = ANY($11::int[]))
                     THEN 'peak' ELSE 'off_peak' END
            ELSE '' END AS variant,
       width_bucket(ts, $5::timestamptz[]) AS piece, sum(quantity) AS total, count(*) AS events,
       max(quantity) AS peak
FROM usage_events
WHERE tenant_id = $1 AND customer_id = $2 AND ts >= $3 AND ts < $4 AND meter_code = $6
  AND NOT EXISTS (SELECT 1 FROM jsonb_each($7::jsonb) f
                  WHERE NOT coalesce(f.value ? (properties ->> f.key), false))
GROUP BY variant, piece
"""
# Distinct values per meter; each value counts in the piece where it was first seen, so the pieces
# add up to the period's distinct count.
AGGREGATE_UNIQUE = """
SELECT meter_code, width_bucket(first_ts, $5::timestamptz[]) AS piece, count(*) AS total
FROM (SELECT meter_code, unique_key, min(ts) AS first_ts FROM usage_events
      WHERE tenant_id = $1 AND customer_id = $2 AND ts >= $3 AND ts < $4 AND meter_code = ANY($6::text[])
        AND unique_key IS NOT NULL
      GROUP BY meter_code, unique_key) AS firsts
GROUP BY meter_code, piece
"""

# The whole invoice in one statement (one snapshot, one round trip): the header plus its line items,
# charges and credit applications as arrays of rows (line items by position, charges by line item and
# service start, applications by position).
SELECT_INVOICE_FULL = f"""
SELECT {INVOICE_COLUMNS},
  ARRAY(SELECT ROW(line_item_id, kind, code, description, quantity, unit_price, amount_minor, service_start,
                   service_end, unit, variant, discount_minor, discount_codes, tax_minor)
        FROM invoice_line_items l WHERE l.tenant_id = i.tenant_id AND l.invoice_id = i.invoice_id
        ORDER BY position) AS items,
  ARRAY(SELECT ROW(charge_id, line_item_id, kind, name, quantity, amount_minor, service_start, service_end)
        FROM invoice_charges c WHERE c.tenant_id = i.tenant_id AND c.invoice_id = i.invoice_id
        ORDER BY line_item_id, service_start) AS pieces,
  ARRAY(SELECT ROW(a.charge_id, c.line_item_id, a.lot_id, a.lot_type, a.amount_minor, a.unit, a.units, a.rate,
                   a.rate_version)
        FROM credit_applications a
        JOIN invoice_charges c ON c.tenant_id = a.tenant_id AND c.invoice_id = a.invoice_id
                              AND c.charge_id = a.charge_id
        WHERE a.tenant_id = i.tenant_id AND a.invoice_id = i.invoice_id ORDER BY a.position) AS apps
FROM invoices i WHERE i.tenant_id = $1 AND i.invoice_id = $2
"""
DELETE_APPLICATIONS = "DELETE FROM credit_applications WHERE tenant_id = $1 AND invoice_id = $2"
DELETE_CHARGES = "DELETE FROM invoice_charges WHERE tenant_id = $1 AND invoice_id = $2"
DELETE_LINE_ITEMS = "DELETE FROM invoice_line_items WHERE tenant_id = $1 AND invoice_id = $2"
# Charges reference line items: both go in one statement (the foreign key is checked at its end).
DELETE_CHARGES_AND_LINE_ITEMS = """
WITH charges AS (DELETE FROM invoice_charges WHERE tenant_id = $1 AND invoice_id = $2)
DELETE FROM invoice_line_items WHERE tenant_id = $1 AND invoice_id = $2
"""
# Many rows in one statement: one array per column, unnested in step.
INSERT_LINE_ITEMS = """
INSERT INTO invoice_line_items (tenant_id, invoice_id, line_item_id, position, kind, code, description, quantity,
                                unit_price, amount_minor, service_start, service_end, unit, variant,
                                discount_minor, discount_codes, tax_minor)
SELECT $1, $2, u.* FROM unnest($3::text[], $4::integer[], $5::text[], $6::text[], $7::text[], $8::numeric[],
                               $9::numeric[], $10::bigint[], $11::timestamptz[], $12::timestamptz[],
                               $13::text[], $14::text[], $15::bigint[], $16::text[], $17::bigint[]) AS u
"""
INSERT_CHARGES = """
INSERT INTO invoice_charges (tenant_id, invoice_id, charge_id, line_item_id, kind, name, quantity, amount_minor,
                             service_start, service_end)
SELECT $1, $2, u.* FROM unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::numeric[], $8::bigint[],
                               $9::timestamptz[], $10::timestamptz[]) AS u
"""
INSERT_APPLICATIONS = """
INSERT INTO credit_applications (tenant_id, invoice_id, position, charge_id, lot_id, lot_type, amount_minor, unit,
                                 units, rate, rate_version)
SELECT $1, $2, u.* FROM unnest($3::integer[], $4::text[], $5::text[], $6::text[], $7::bigint[], $8::text[],
                               $9::numeric[], $10::numeric[], $11::integer[]) AS u
"""

# The tax columns ($n .. $n+5 after the totals): discount, tax, and the rule taxed by (region, name,
# rate, inclusive; region '' = not taxed).
UPDATE_DRAFT_TOTALS = """
UPDATE invoices SET subtotal_minor = $3, computed_at = now(), discount_minor = $4, tax_minor = $5,
       tax_region = $6, tax_name = $7, tax_rate_percent = $8, tax_inclusive = $9
WHERE tenant_id = $1 AND invoice_id = $2
"""
MARK_PREPARED = """
UPDATE invoices SET status = 'PREPARED', subtotal_minor = $3, credits_minor = $4, split_at = $5,
       draft_digest = $6, prepare_key = $7, prepared_at = now(), computed_at = now(), credit_notes = $8,
       discount_minor = $9, tax_minor = $10, tax_region = $11, tax_name = $12, tax_rate_percent = $13,
       tax_inclusive = $14
WHERE tenant_id = $1 AND invoice_id = $2
"""
MARK_ABORTED = """
UPDATE invoices SET status = 'DRAFT', credits_minor = 0, split_at = '{}', draft_digest = '', prepare_key = '',
       prepared_at = NULL, credit_notes = '{}'
WHERE tenant_id = $1 AND invoice_id = $2
"""
UPDATE_TAX_TOTAL = "UPDATE invoices SET tax_minor = $3 WHERE tenant_id = $1 AND invoice_id = $2"
# Takes the tenant's next number and finalizes the invoice with it in one statement: the counter row
# stays locked (serializing the tenant's commits) only from here to the commit. Gapless: a rollback
# undoes both. Formatted as INV-000001 (at least six digits).
FINALIZE_NUMBERED = """
WITH n AS (INSERT INTO invoice_counters (tenant_id, last_number) VALUES ($1, 1)
           ON CONFLICT (tenant_id) DO UPDATE SET last_number = invoice_counters.last_number + 1
           RETURNING last_number)
UPDATE invoices SET status = 'FINALIZED', finalized_at = now(),
       number = 'INV-' || CASE WHEN n.last_number < 1000000 THEN lpad(n.last_number::text, 6, '0')
                               ELSE n.last_number::text END
FROM n WHERE invoices.tenant_id = $1 AND invoices.invoice_id = $2
RETURNING invoices.status, invoices.number, invoices.finalized_at
"""
MARK_VOID_PENDING = """
UPDATE invoices SET status = 'VOID_PENDING', void_prepared_at = now(), void_reason = $3
WHERE tenant_id = $1 AND invoice_id = $2
"""
MARK_ABANDONED = """
UPDATE invoices SET status = 'ABANDONED', abandoned_at = now(), abandon_reason = $3
WHERE tenant_id = $1 AND invoice_id = $2
"""
MARK_VOIDED = "UPDATE invoices SET status = 'VOIDED', voided_at = now() WHERE tenant_id = $1 AND invoice_id = $2"
MARK_VOID_ABORTED = """
UPDATE invoices SET status = 'FINALIZED', void_prepared_at = NULL, void_reason = ''
WHERE tenant_id = $1 AND invoice_id = $2
"""

LIST_INVOICES = f"""
SELECT {INVOICE_COLUMNS} FROM invoices
WHERE tenant_id = $1
  AND ($2 = '' OR customer_id = $2)
  AND (cardinality($3::text[]) = 0 OR status = ANY($3::text[]))
  AND ($4::timestamptz IS NULL OR (status = 'PREPARED' AND prepared_at < $4)
       OR (status = 'VOID_PENDING' AND void_prepared_at < $4))
  AND ($5::timestamptz IS NULL OR period_start = $5)
  AND ($6::timestamptz IS NULL OR (created_at, invoice_id) > ($6, $7))
ORDER BY created_at, invoice_id
LIMIT $8
"""
COUNT_INVOICES = """
SELECT count(*) FROM invoices
WHERE tenant_id = $1 AND ($2 = '' OR customer_id = $2) AND (cardinality($3::text[]) = 0 OR status = ANY($3::text[]))
"""
