"""Shared runtime of every service: settings, Postgres, migrations, gRPC bootstrap, API keys."""
