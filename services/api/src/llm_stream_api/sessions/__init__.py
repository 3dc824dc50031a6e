"""The sessions this replica holds: the hub (``hub``), one string of answer text each."""
