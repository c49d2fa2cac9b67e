"""The HTTP layer: the FastAPI app (app.py), its middleware and error handling, the per-request
record, dependencies and routes. It turns requests into service calls and nothing more."""
