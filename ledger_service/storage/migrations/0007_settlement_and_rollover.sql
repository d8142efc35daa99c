-- Settlement before breakage and rollover (SPEC §4, §8; ledger_service/domain/settlement.py).

-- Per account billed by invoices: every charge with a service time before invoiced_through has
-- been invoiced (recorded by the coordinator from the invoice service's ListSettlements). A
-- pointer like the consumption policy's: it only moves forward (GREATEST on write). No row =
-- not billed by invoices: the account's lots settle as soon as their window ends.
CREATE TABLE account_settlements (
    tenant_id         text NOT NULL,
    account_id        text NOT NULL,
    invoiced_through  timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, account_id),
    FOREIGN KEY (tenant_id, account_id) REFERENCES accounts (tenant_id, account_id)
);

-- A lot's rollover policy, part of its immutable configuration (all NULL = no rollover).
-- rollover_max_percent is set (0 = no percentage cap) whenever the lot has a policy.
ALTER TABLE lots
    ADD COLUMN rollover_max_amount       bigint CHECK (rollover_max_amount >= 0),
    ADD COLUMN rollover_max_percent      smallint CHECK (rollover_max_percent BETWEEN 0 AND 100),
    ADD COLUMN rollover_expires_after_s  bigint CHECK (rollover_expires_after_s >= 0);
