"""Auto top-up: the executor that charges and grants (`executor`) and the HTTP payment adapter (`http_provider`)."""
