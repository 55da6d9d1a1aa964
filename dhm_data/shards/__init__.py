"""The HDF5 shard format: its schema and the one codec per storage kind
(:mod:`.schema`, :mod:`.codecs`, :mod:`.blosc`), the writer (:mod:`.writer`),
the one reader (:mod:`.reader`), metadata (:mod:`.info`) and the verifier
(:mod:`.verify`).  The format is described in docs/shards.md.

May import: :mod:`dhm_data.errors`, :mod:`dhm_data.atomic`.
"""

from dhm_data.shards import schema  # noqa: F401  (callers use shards.schema)
from dhm_data.shards.info import FieldInfo, ShardInfo, parse_json_attr, shard_info
from dhm_data.shards.reader import ShardReader, read_columns
from dhm_data.shards.verify import verify_shard
from dhm_data.shards.writer import PIXEL_FIELDS, ShardWriter, write_shard

__all__ = ["FieldInfo", "PIXEL_FIELDS", "ShardInfo", "ShardReader", "ShardWriter", "parse_json_attr", "read_columns",
           "schema", "shard_info", "verify_shard", "write_shard"]
