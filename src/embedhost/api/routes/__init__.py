"""The routes: embeddings (OpenAI and native), ops (health, ready, info, models), admin, metrics."""
