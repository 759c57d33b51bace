"""Reading snapshots: find entries by path, read file contents, walk trees."""
