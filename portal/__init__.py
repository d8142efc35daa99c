"""The customer portal: a small ASGI web process (Starlette, Jinja2, uvicorn) that shows one customer
their balances, expiry timeline, transactions, invoices and usage, live.

It is a client like any other: it calls the ledger and invoice gRPC APIs with the customer's portal
session (service_runtime/portal_sessions.py) and never reads their databases. It serves GET only.
"""
