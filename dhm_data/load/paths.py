"""Which shard files a path names."""

from __future__ import annotations

import os
from pathlib import Path

from dhm_data.errors import ShardError


def shard_paths(path_or_paths) -> list[Path]:
    """Shard files of a file, a split directory (sorted ``shard-*.h5``; dot-files
    such as ``.shard-00000.h5.tmp-123`` are ignored) or a list of either."""
    items = [path_or_paths] if isinstance(path_or_paths, (str, os.PathLike)) else list(path_or_paths)
    out: list[Path] = []
    for item in items:
        p = Path(item).expanduser()
        if p.is_dir():
            found = sorted(q for q in p.glob("shard-*.h5") if q.is_file())
            if not found:
                raise ShardError(f"{p}: no shard-*.h5 files in this folder (expected a build split folder, "
                                 "e.g. OUT/train)")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise ShardError(f"{p}: no such shard file or folder")
    if not out:
        raise ShardError("no shard files given")
    return out
