"""Rate limits (token buckets), concurrency limits and budgets."""
