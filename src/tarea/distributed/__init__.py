"""Workers on many Docker hosts: Celery over RabbitMQ, PostgreSQL as the one truth.

- :mod:`.broker`: the Celery app, its queues (quorum), what a message carries.
- :mod:`.outbox`: the API server's side: tasks recorded first, then published
  from the table, each attempt once, routed to a warm worker when one reports it.
- :mod:`.worker`: ``tarea worker``, one Docker engine's executor on one asyncio
  loop, fed by Celery's threads.
- :mod:`.presence`: whether a worker's process is alive (a PostgreSQL
  advisory lock its connection holds), to take over a dead worker's task at once.
"""
