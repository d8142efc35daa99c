-- ListAccounts with a parent: one account's direct children by id, without scanning the tenant's accounts.
CREATE INDEX accounts_by_parent ON accounts (tenant_id, parent_account_id, account_id);
