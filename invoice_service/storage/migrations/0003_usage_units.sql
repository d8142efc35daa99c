-- Usage units as credits (issue #18): a meter may count in a ledger usage unit; lots in that unit
-- pay its usage in units. The line item keeps its meter's unit; a credit application of such a lot
-- records the units it covered (`units`) and their value in the invoice currency (`amount_minor`,
-- which may be 0 when the value of the covered units rounds to nothing).
ALTER TABLE meters ADD COLUMN unit text NOT NULL DEFAULT '';
ALTER TABLE invoice_line_items ADD COLUMN unit text NOT NULL DEFAULT '';
ALTER TABLE credit_applications ADD COLUMN unit text NOT NULL DEFAULT '';
ALTER TABLE credit_applications ADD COLUMN units numeric NOT NULL DEFAULT 0 CHECK (units >= 0);
ALTER TABLE credit_applications DROP CONSTRAINT credit_applications_amount_minor_check;
ALTER TABLE credit_applications ADD CONSTRAINT credit_applications_amount_minor_check
    CHECK (amount_minor > 0 OR (unit <> '' AND amount_minor = 0 AND units > 0));
