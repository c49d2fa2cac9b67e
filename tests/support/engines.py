"""What the real-engine tests compare on: real sentences, and cosine similarity row by row
against a reference engine's vectors."""

from __future__ import annotations

import numpy as np

from embedhost.engines.base import Vectors

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A vector database stores embeddings and finds the nearest neighbours of a query.",
    "Return a new list containing all items from the iterable in ascending order.",
    "Paris is the capital and most populous city of France.",
    "How do I reset my password if I no longer have access to my email?",
    "The mitochondria is the powerhouse of the cell.",
    "Embeddings map text to points in a space where similar meanings are close together.",
    "It was the best of times, it was the worst of times.",
    "Open the file in binary mode and read it in chunks of four megabytes.",
    "short",
    "Résumé of a naïve café owner's coöperative, with emoji 🙂 and numbers 3.14159.",
    "Photosynthesis converts light energy into chemical energy stored in glucose, "
    "releasing oxygen as a by-product; it takes place in the chloroplasts of plant cells "
    "and depends on chlorophyll, water and carbon dioxide.",
]


def cosine_rows(a: Vectors, b: Vectors) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)
