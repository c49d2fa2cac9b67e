"""The corpus run's errors: what stops a run, with a message for the person running it."""

from __future__ import annotations


class CorpusError(Exception):
    """Stops a run; the message is for the person running it."""


class BadRow(CorpusError):
    def __init__(self, row: int, message: str) -> None:
        super().__init__(f"row {row}: {message}")
        self.row = row


class EmbedFailed(CorpusError):
    """The embedder refused a batch (or kept failing after its retries)."""

    def __init__(self, message: str, status: int | None = None, item: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.item = item
        """The index in the batch that the error names, if it names one."""
