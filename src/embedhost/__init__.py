"""embedhost: a production server for text-embedding models."""

__version__ = "0.1.0"
