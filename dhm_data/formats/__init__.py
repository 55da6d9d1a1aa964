"""Byte codecs with no dataset knowledge: MATLAB v5 ``.mat`` (:mod:`.matfile`),
Torch7 ``.t7`` (:mod:`.t7`), image files (:mod:`.images`), FIFO-safe file
reading (:mod:`.files`) and pickles of numpy arrays read without running code
(:mod:`.pickles`).

May import: :mod:`dhm_data.errors`.
"""
