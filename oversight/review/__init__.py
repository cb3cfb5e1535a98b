"""Review faces over the store: exports (JSONL, CSV, Parquet, inspect_ai .eval logs) and
plots. They read the store and render analysis results; nothing here writes to a store."""
