"""Dataset readers, one module per raw dataset format, behind a small registry.

A reader only reads: ``items()`` lists what is on disk (cheap, no decoding) and
``load(item)`` turns one item into a :class:`~dhm_data.datasets.base.Sample`,
raising :class:`~dhm_data.datasets.base.DatasetError` naming the file and the
field when the input is bad.  Adding a dataset = one module here, one entry in
``READERS``, one dummy-data test.
"""

from __future__ import annotations

import importlib

from dhm_data.datasets.base import DatasetReader, Item, Sample
from dhm_data.errors import DatasetError

#: command-line name -> module in this package (each defines ``Reader``)
READERS = {
    "300wlp": "w300lp",
    "aflw2000": "aflw2000",
    "ls3dw": "ls3dw",
}


def get_reader(name: str) -> type[DatasetReader]:
    """The reader class registered as ``name`` (e.g. ``"300wlp"``)."""
    if name not in READERS:
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(sorted(READERS))}")
    return importlib.import_module(f"{__name__}.{READERS[name]}").Reader


__all__ = ["READERS", "get_reader", "DatasetError", "Item", "Sample", "DatasetReader"]
