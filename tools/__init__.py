"""Command-line tools of the simsearch project (run from the repository root)."""
