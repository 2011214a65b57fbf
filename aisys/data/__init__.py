"""Data sources (shop simulator, MovieLens, event files), validation, the lake and ingestion."""
