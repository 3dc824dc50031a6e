"""The API's side of RabbitMQ: one connection, and one module per thing that travels on it.

``connection`` (connect, retry, hooks), ``intake`` (tasks, queue-log records, cancels out),
``live`` (this replica's frames in), ``history`` (acceptance markers out, look-ups in),
``presence`` (served and wanted sessions out), ``queue_positions`` (the queue log in),
``queue_depth`` (how many tasks the queues hold), ``heartbeats`` (the workers' heartbeats in).
"""
