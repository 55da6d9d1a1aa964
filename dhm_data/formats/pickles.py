"""Pickles of numpy arrays in plain containers, read without running code.

Public releases ship small side files as pickles (3DDFA's
``param_whitening.pkl``, 3DDFA_V2's ``bfm_noneck_v3.pkl`` and
``param_mean_std_62d_120x120.pkl``).  ``pickle.load`` of such a file would run
whatever callable the file names; :func:`read_numpy_pickle` admits only the
globals numpy needs to rebuild arrays and scalars (dicts, lists, tuples,
strings and numbers need no global), so a foreign or hostile file fails with
a message instead.
"""

from __future__ import annotations

import importlib
import pickle
from pathlib import Path

import numpy as np

from dhm_data.errors import FileProblemError

#: (module, name) globals a numpy-array pickle may name (old and new numpy module paths).
ALLOWED_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
    ("copy_reg", "_reconstructor"),
    ("copyreg", "_reconstructor"),
    ("__builtin__", "object"),
    ("builtins", "object"),
})


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only numpy arrays are allowed)")
        module = {"copy_reg": "copyreg", "__builtin__": "builtins"}.get(module, module)
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = "numpy._core." + module[len("numpy.core."):]
        return getattr(importlib.import_module(module), name)


def read_numpy_pickle(path, error: type = FileProblemError):
    """The object pickled in ``path`` (Python 2 pickles read as latin-1), numpy
    arrays and plain containers only; raises ``error`` (a
    :class:`~dhm_data.errors.FileProblemError` family class) naming the file."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return _NumpyOnlyUnpickler(f, encoding="latin1").load()
    except FileNotFoundError as e:
        raise error(f"{path}: file is missing") from e
    except Exception as e:  # pickle raises many types on foreign / corrupt data
        raise error(f"{path}: cannot read as a pickle of numpy arrays ({type(e).__name__}: {e})") from e
