"""Everything that touches Redis: key layout, scripts, queues, results and registry.

No module outside this package sends a Redis command.
"""
