"""Worker-side modules: each peer's tasks, and runners for workers without a CLI."""
