"""The durable store: blobs on disk, the SQLite index and every schema migration."""
