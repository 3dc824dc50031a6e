"""The short chaos run (chaos/run.py --short) as a test."""
