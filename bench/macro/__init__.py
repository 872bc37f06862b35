"""The macro suite: HTTP through a service VIP (wrk, distributed locust)."""
