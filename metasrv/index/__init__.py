"""A source repository: its HTTP client, its pages, archives and metadata, and sync."""
