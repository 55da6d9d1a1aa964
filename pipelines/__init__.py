"""Named build pipelines (one TOML file per build); shipped as package data."""
