"""Helpers of the integration tests: processes, broker topology, SSE reading, metrics."""
