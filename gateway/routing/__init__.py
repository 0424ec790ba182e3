"""Routing: which deployments can serve a request, at what cost, in which order, and how healthy they are.

Pure logic only (no I/O, no provider names): `candidates` (eligibility and cost), `health` (breaker and
latency values), `policy` (the order to try candidates in), `retry_budget`.
"""
