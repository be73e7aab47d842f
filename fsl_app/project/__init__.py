"""Projects on disk: the store (SQLite + image files), dataset ZIPs and tables, the demo."""
