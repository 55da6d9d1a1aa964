"""Every error dhm-data raises on purpose, in one hierarchy.

:class:`DhmDataError` is the base; three families sit under it, so a caller
can catch by what went wrong rather than by which module noticed:

* :class:`InputError` (also a ``ValueError``): the user's input cannot be
  used as given: an option, a pipeline file, predictions, arguments to a
  library call, a sample that cannot be prepared.
* :class:`FileProblemError` (also a ``ValueError``): a file on disk is
  damaged, missing, of another format, or does not belong with the others
  (a dataset file, a model, a fit result, a shard).
* :class:`RunError` (also a ``RuntimeError``): a run cannot go on: the build
  folder is locked, a unit of work failed, a parallel backend is unreachable,
  a loader worker died.

Every message names the file or option, what was expected and what was
found.  The commands catch :class:`DhmDataError` once and exit non-zero with
the message; anything else is a bug and keeps its traceback.  This module
imports nothing from the package, so every layer may import it.
"""

from __future__ import annotations

from pathlib import Path


class DhmDataError(Exception):
    """Base class of every error dhm-data raises on purpose."""


class InputError(DhmDataError, ValueError):
    """The user's input (options, configuration, arrays) cannot be used."""


class FileProblemError(DhmDataError, ValueError):
    """A file is missing, damaged, of another format or does not belong with the others."""


class RunError(DhmDataError, RuntimeError):
    """A run cannot go on (lock held, unit failed, backend or worker gone)."""


# ----------------------------------------------------------------- bad input
class PipelineError(InputError):
    """A pipeline file is missing, malformed, or an override does not fit it."""


class EvaluationError(InputError):
    """Inputs to the evaluation are unusable (message says which and how many)."""


class PredictionError(EvaluationError):
    """Predictions have the wrong count or shape, hold NaN/inf, or their names
    do not match the ground truth."""


class FittingError(InputError):
    """Bad input to :func:`~dhm_data.fit.fit` (wrong shapes,
    inconsistent model), naming the argument, what was expected and what was found."""


class CropError(InputError):
    """The landmarks give no usable box (all missing, or zero size)."""


class PrepareError(InputError):
    """The sample cannot be prepared (bad landmarks, parameters or image)."""


class SynthError(InputError):
    """Bad arguments to the synthetic dataset writer (unknown dataset, n < 1,
    non-empty output folder without force, ...)."""


class MeshError(InputError):
    """The model has no triangles, or the output path / parameters are unusable."""


# ------------------------------------------------------- damaged or mismatched files
class DatasetError(FileProblemError):
    """The dataset folder or one of its files is not what the format says."""


class GroundTruthError(EvaluationError, FileProblemError):
    """The ground truth cannot be loaded (names the folder/file and what was expected)."""


class T7Error(FileProblemError):
    """A ``.t7`` file is not a Torch7 Float/Double tensor (or is truncated)."""


class ModelFileError(FileProblemError):
    """A model file is missing, unreadable, has a missing / mis-shaped key, or
    does not belong with the labels it is used with."""


class FitFileError(FileProblemError):
    """A fit result file is missing, unreadable or lacks / mis-shapes a key."""


class ShardError(FileProblemError):
    """Base class of shard problems (always names the file)."""


class ShardSchemaError(ShardError):
    """Columns or a file do not match the schema (names the field, expected, found)."""


class ShardCorruptError(ShardError):
    """A shard is truncated, damaged or fails its checksums.

    ``problems``: list of human-readable problems, each naming the file and,
    where known, the field and the sample.
    """

    def __init__(self, path, problems):
        self.path = Path(path)
        self.problems = list(problems)
        super().__init__(f"{path}: shard verification failed:\n  " + "\n  ".join(self.problems))

    def __reduce__(self):
        return (type(self), (self.path, self.problems))


# ------------------------------------------------------------ runs that cannot go on
class BuildError(RunError):
    """The build cannot go on (or, with --strict, a sample was rejected)."""


class BackendError(RunError):
    """A parallel backend cannot be used (not installed, cluster unreachable)."""


class BuildLockedError(RunError):
    """Another build holds the build directory's lock."""


class UnitError(RunError):
    """A unit of work failed (its work function raised, writing its record
    failed, or the worker running it died).  The message names the stage,
    the unit and its outputs, and says that finished units are kept: fix the
    cause (free disk space, ...) and rerun the same command to resume.
    ``unit`` is the unit's name (None when the parallel pool itself broke)."""

    def __init__(self, message: str, stage: str, unit: str | None = None):
        super().__init__(message)
        self.stage, self.unit = stage, unit

    def __reduce__(self):
        return (UnitError, (self.args[0], self.stage, self.unit))


class LoaderError(RunError):
    """A loader problem (bad arguments, a worker failed or died)."""
