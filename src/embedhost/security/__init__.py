"""Who may call the server, and how much.

- :mod:`~embedhost.security.keys`: API keys: generation, stored hashes, the keys file,
  constant-time lookup, reading a presented key from the headers.
- :mod:`~embedhost.security.ratelimit`: budgets in requests and tokens per minute, per key
  and per client address, in memory or in Redis (shared by replicas).
- :mod:`~embedhost.security.admission`: the client address behind trusted proxies, the
  start-time rule (nothing reachable from the network runs without keys), and
  :class:`~embedhost.security.admission.Security`, which admits a request.

The HTTP side is thin: ``api/deps.py``'s ``require_scope`` calls ``Security.admit``, and
the embedding service charges tokens through the ``Admission`` it is handed, after it has
counted them (no second tokenization). Import from the submodules; this package
re-exports nothing.
"""
