"""Metering: rate limits, budgets, exactly-once usage records, idempotency, and the Redis-outage spool."""
