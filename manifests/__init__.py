"""Per-dataset facts the builds check against (counts, splits); shipped as package data."""
