"""Retrieval: FAISS indexes, query expansion and k-reciprocal re-ranking."""
