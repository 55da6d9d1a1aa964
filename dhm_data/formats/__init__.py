"""Byte codecs with no dataset knowledge: MATLAB v5 ``.mat`` (:mod:`.matfile`),
Torch7 ``.t7`` (:mod:`.t7`), image files (:mod:`.images`) and FIFO-safe file
reading (:mod:`.files`).

May import: :mod:`dhm_data.errors`.
"""
