-- ABANDONED: a DRAFT that will never be billed (AbandonInvoice). It keeps no number (numbers stay
-- gapless), it still occupies its period (the period is not re-billed), its line items freeze like a
-- finalized invoice's, and the header cannot change again.
ALTER TABLE invoices ADD COLUMN abandoned_at timestamptz;
ALTER TABLE invoices ADD COLUMN abandon_reason text NOT NULL DEFAULT '';

DO $$
DECLARE
    c record;
BEGIN
    -- The two CHECKs that name the statuses were created unnamed; drop them by their definition.
    FOR c IN SELECT conname FROM pg_constraint
             WHERE conrelid = 'invoices'::regclass AND contype = 'c'
               AND pg_get_constraintdef(oid) LIKE '%status%' LOOP
        EXECUTE format('ALTER TABLE invoices DROP CONSTRAINT %I', c.conname);
    END LOOP;
END $$;
ALTER TABLE invoices ADD CONSTRAINT invoices_status_known
    CHECK (status IN ('DRAFT', 'PREPARED', 'FINALIZED', 'VOID_PENDING', 'VOIDED', 'ABANDONED'));
ALTER TABLE invoices ADD CONSTRAINT invoices_numbered_once_final
    CHECK ((number IS NULL) = (status IN ('DRAFT', 'PREPARED', 'ABANDONED')));
ALTER TABLE invoices ADD CONSTRAINT invoices_abandoned_with_reason
    CHECK ((status = 'ABANDONED') = (abandoned_at IS NOT NULL) AND (status <> 'ABANDONED' OR abandon_reason <> ''));

CREATE FUNCTION invoices_refuse_abandoned_edits() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status = 'ABANDONED' AND NEW IS DISTINCT FROM OLD THEN
        RAISE EXCEPTION 'invoice % is ABANDONED and immutable', OLD.invoice_id;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER invoices_immutable_when_abandoned BEFORE UPDATE ON invoices
    FOR EACH ROW EXECUTE FUNCTION invoices_refuse_abandoned_edits();
