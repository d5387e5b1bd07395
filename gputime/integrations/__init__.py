"""Integrations with job runners; each is imported on its own and needs its own extra.

- :mod:`gputime.integrations.celery`: every Celery task a worker runs, measured
  through Celery's signals (``pip install 'gputime[celery]'``).

Importing :mod:`gputime` imports none of them.
"""
