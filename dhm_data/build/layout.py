"""The one place that knows a build directory's layout.

::

    OUT/
      pipeline.json           the pipeline whose build this folder holds (written first)
      build.json              summary: pipeline, counts, rejections, warnings, versions
      fit.json                summary of a `dhm-data fit-bfm` run (fit stage only)
      split.json              the split actually used (sample names per split)
      plan.json               every planned unit per stage: fingerprint and outputs (for `status`)
      rejections.jsonl        one line per rejected sample: name, path, stage, reason
      mean_dhm.npy            (S, S, 3) float32 DHM of the model's mean shape
      model/landmarks68.npz   compact 68-row model the workers load
      fits/<split>/shard-NNNNN.npz   fitted parameters (fit stage)
      fits/flagged.jsonl      fits not converged or over the residual limit
      <split>/shard-NNNNN.h5  HDF5 shards (prepare stage)
      .records/<stage>/<split>/shard-NNNNN.json   unit records (fingerprint; size, time, hash of inputs and outputs)
      .lock                   held while a build writes here
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class BuildLayout:
    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root).expanduser())

    @property
    def summary(self) -> Path:
        return self.root / "build.json"

    @property
    def pipeline_file(self) -> Path:
        return self.root / "pipeline.json"

    @property
    def fit_summary(self) -> Path:
        return self.root / "fit.json"

    @property
    def plan_file(self) -> Path:
        return self.root / "plan.json"

    @property
    def split_file(self) -> Path:
        return self.root / "split.json"

    @property
    def rejections(self) -> Path:
        return self.root / "rejections.jsonl"

    @property
    def mean_dhm(self) -> Path:
        return self.root / "mean_dhm.npy"

    @property
    def model_cache(self) -> Path:
        return self.root / "model" / "landmarks68.npz"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    def split_dir(self, split: str) -> Path:
        return self.root / split

    def shard_name(self, index: int) -> str:
        return f"shard-{index:05d}"

    def shard(self, split: str, index: int) -> Path:
        return self.split_dir(split) / f"{self.shard_name(index)}.h5"

    @property
    def fits_flagged(self) -> Path:
        return self.root / "fits" / "flagged.jsonl"

    def fits(self, split: str, index: int) -> Path:
        return self.root / "fits" / split / f"{self.shard_name(index)}.npz"

    def record(self, stage: str, unit: str) -> Path:
        return self.root / ".records" / stage / f"{unit}.json"

    def shards(self, split: str | None = None) -> list[Path]:
        """Finished shard files (temporary files are dot-files and never match)."""
        dirs = [self.split_dir(split)] if split else sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name not in ("model", "fits"))
        return sorted(p for d in dirs if d.is_dir() for p in d.glob("shard-*.h5"))
