"""Batch jobs and files: OpenAI's Batch API for embeddings (``/v1/files``, ``/v1/batches``).

``base.py`` is the store protocol: ``store.py`` keeps jobs and file records durable for
one process (SQLite plus a files directory under ``jobs.data_dir``), ``postgres.py`` for
several replicas (PostgreSQL, a lease per job, a shared files directory);
``workfiles.py`` reads a job's input and writes its output files; ``lines.py`` parses
and answers one input line; ``runner.py`` runs jobs through the batch priority lane,
chunk by chunk, so a restart loses no finished line and writes none twice;
``metrics.py`` exports jobs by status, lines done and the batch lane's share.
"""
