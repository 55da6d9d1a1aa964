"""The HDF5 shard format: its schema and the one codec per storage kind
(:mod:`.schema`), the writer, the reader and the verifier.

May import: :mod:`dhm_data.errors`, :mod:`dhm_data.atomic`.
"""

from dhm_data.shards.shards import (  # noqa: E402  (the package's public names)
    ShardReader,
    ShardWriter,
    parse_json_attr,
    read_columns,
    shard_info,
    verify_shard,
    write_shard,
)

__all__ = ["ShardReader", "ShardWriter", "parse_json_attr", "read_columns", "shard_info", "verify_shard",
           "write_shard"]
