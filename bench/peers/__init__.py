"""The task systems Arbiter is compared with (issue 7, point 4), measured by the method of bench.arbiter_bench.

- harness: what every peer shares: the three scenarios and their timing, the worker processes, the
  completion counter in shared memory, and the result dict.
- celery_bench / celery_app: Celery with a Redis broker, default acks and acks_late.
- procrastinate_bench / procrastinate_app: procrastinate on the same PostgreSQL.

bench.sql_floor runs on the same harness; bench.run drives them all.
"""
