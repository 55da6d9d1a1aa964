"""The HDF5 shard format: its schema and the one codec per storage kind
(:mod:`.schema`), the writer, the reader and the verifier.

May import: :mod:`dhm_data.errors`, :mod:`dhm_data.atomic`.
"""
