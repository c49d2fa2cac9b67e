"""Loaded models: one version and its replicas (version.py), names and their versions with
every change to them (registry.py), the A/B router, the checks before a load, config reload
and per-version statistics."""
