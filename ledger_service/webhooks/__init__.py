"""Webhook delivery: the loop that drains the alert outbox (`dispatcher`) and the HTTP adapter (`http_sender`)."""
