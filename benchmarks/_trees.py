"""The synthetic raw trees the benchmarks run on (written once per folder)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path


def synthetic_300wlp(raw: Path, n: int, tag: str = "", names: list[str] | None = None, jobs: int = 1) -> Path:
    """``raw`` holding a synthetic 300W-LP tree of ``n`` photos + their mirrors
    (seed 0) -- or exactly the samples ``names`` lists -- generated unless
    ``raw`` already holds one (or a real ``300W_LP`` folder, which is then
    used as it is)."""
    from dhm_data.synth import synthesize

    if (raw / "SYNTHETIC.json").exists() or (raw / "300W_LP").exists():
        return raw
    shutil.rmtree(raw, ignore_errors=True)
    t = time.perf_counter()
    synthesize("300wlp", raw, n, seed=0, names=names, jobs=jobs)
    what = f"{len(names):,} listed samples" if names is not None else f"{n:,} + mirrors"
    print(f"{tag}generated synthetic 300W-LP ({what}) in {time.perf_counter() - t:.1f} s", flush=True)
    return raw
