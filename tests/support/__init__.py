"""Test support shared by the integration and observability suites (the broker of the run)."""
