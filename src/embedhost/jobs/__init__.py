"""Batch jobs and files: OpenAI's Batch API for embeddings (``/v1/files``, ``/v1/batches``).

``store.py`` keeps jobs and file records durable (SQLite plus a files directory under
``jobs.data_dir``); ``lines.py`` parses and answers one input line; ``runner.py`` runs
jobs through the batch priority lane, chunk by chunk, so a restart loses no finished line
and writes none twice; ``metrics.py`` exports jobs by status, lines done and the batch
lane's share.
"""
