"""Usage accounting: one record per request, durable in an outbox, published to a sink."""
