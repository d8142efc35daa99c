-- The per-attempt delivery log by endpoint (ListWebhookAttempts): keyset pages in attempt order.
CREATE INDEX webhook_attempts_by_endpoint ON webhook_attempts (tenant_id, endpoint_id, at, event_id, attempt);
