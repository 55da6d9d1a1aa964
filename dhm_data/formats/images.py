"""Image file helpers: header-only size probing and decoding to RGB.

Decoded images are ``(H, W, 3)`` uint8 **RGB** (OpenCV decodes BGR; we convert
here, once).  ``decode_reduced`` uses libjpeg's DCT scaling
(``IMREAD_REDUCED_COLOR_{2,4,8}``) when the caller needs fewer pixels; its
pixel ``p`` covers source pixels ``[r p, r (p + 1))``, so its centre is at
source coordinate ``r p + (r - 1) / 2`` (0-based pixel centres).
"""

from __future__ import annotations

import os
import struct
import tempfile
from pathlib import Path

import cv2
import numpy as np

from dhm_data.errors import DatasetError
from dhm_data.formats.files import read_regular_file, require_file

#: Decode flags by reduction.  EXIF orientation is ignored: labels refer to the
#: stored pixel grid, which is also what image_size() reads from the header.
_REDUCED = {r: flag | cv2.IMREAD_IGNORE_ORIENTATION for r, flag in
            {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
             8: cv2.IMREAD_REDUCED_COLOR_8}.items()}
_REDUCED_BGR = dict(_REDUCED)
#: OpenCV >= 4.11 can hand back RGB from the decoder itself (no BGR->RGB pass).
_RGB_FLAG = getattr(cv2, "IMREAD_COLOR_RGB", None)
if _RGB_FLAG is not None:
    _REDUCED = {r: (flag & ~cv2.IMREAD_COLOR) | _RGB_FLAG for r, flag in _REDUCED.items()}


def read_image_bytes(path, limit: int | None = None) -> bytes:
    """The bytes of the image file ``path`` (at most ``limit``), through
    :func:`~dhm_data.datasets.base.read_regular_file` (a FIFO cannot hang the
    build); a missing file, a directory, a broken symlink, anything not a
    regular file raises :class:`DatasetError` saying which."""
    try:
        data = read_regular_file(path, limit)
    except OSError as e:
        require_file(Path(path), "image file")
        raise DatasetError(f"{path}: cannot read image ({e})") from e
    if data is None:
        require_file(Path(path), "image file")
        raise DatasetError(f"{path}: image file is not a regular file")
    return data


#: Bytes read for the header; a JPEG's start-of-frame comes after its tables,
#: well inside this for camera and dataset files (else the whole file is read).
_HEADER_BYTES = 1 << 16


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the file header (JPEG SOF or PNG IHDR) without
    decoding; falls back to a full decode for other formats."""
    head = read_image_bytes(path, _HEADER_BYTES)
    if head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) >= 24:
        w, h = struct.unpack(">II", head[16:24])
        return int(h), int(w)
    if head[:2] == b"\xff\xd8":
        size = _jpeg_size(head)
        if size is None and len(head) == _HEADER_BYTES:
            size = _jpeg_size(read_image_bytes(path))
        if size is not None:
            return size
    img = decode_rgb(path)
    return img.shape[:2]


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """Walk the JPEG marker segments of ``data`` (from after SOI) to the first
    start-of-frame; None if there is none within ``data``."""
    i, n = 2, len(data)
    while i < n:
        if data[i] != 0xFF:
            return None
        while i < n and data[i] == 0xFF:  # fill bytes before a marker
            i += 1
        if i >= n:
            return None
        marker = data[i]
        i += 1
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:
            continue  # markers without a length
        if i + 2 > n:
            return None
        (seg_len,) = struct.unpack_from(">H", data, i)
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if i + 7 > n:
                return None
            h, w = struct.unpack_from(">HH", data, i + 3)
            return int(h), int(w)
        if seg_len < 2:
            return None
        i += seg_len
    return None


def decode_rgb(path: Path, reduction: int = 1) -> np.ndarray:
    """Decode to ``(H, W, 3)`` uint8 RGB, optionally reduced by 2, 4 or 8
    (what the decoder reports about damaged data is dropped: see
    :func:`decode_checked`)."""
    return decode_checked(path, reduction)[0]


def decode_checked(path: Path, reduction: int = 1, rgb: bool = True) -> tuple[np.ndarray, list[str]]:
    """``(image, decoder messages)``: the image as :func:`decode_rgb` gives
    it, and the lines the native decoder wrote to the standard error while
    decoding it (libjpeg's "Corrupt JPEG data: ..." for a damaged file that
    still decodes), captured so that they never reach the terminal raw; an
    empty list: the decoder said nothing.  With ``rgb=False`` the image is in
    the decoder's own **BGR** channel order: the cheapest decode
    (libjpeg-turbo writes BGR directly; RGB costs a pass over the whole
    image), for a caller that keeps only part of it and converts that part."""
    buf = np.frombuffer(read_image_bytes(path), np.uint8)
    flag = _REDUCED[reduction] if rgb else _REDUCED_BGR[reduction]
    with _native_stderr_captured() as said:
        img = cv2.imdecode(buf, flag) if buf.size else None
    if img is None:
        raise DatasetError(f"{path}: not a decodable image ({buf.size} bytes): {_diagnose(buf)}")
    if img.ndim == 2:  # some decoders hand back grey for odd files
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB), said
    if rgb and _RGB_FLAG is None:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return img, said


#: (pid, fd) of this process's capture file (a forked child makes its own)
_SINK: list = [None, None]


class _native_stderr_captured:
    """File descriptor 2 pointed at a private temporary file for the duration
    (native libraries write there directly, bypassing ``sys.stderr``); on
    exit, the lines written are in the list the ``with`` gives.  Costs a few
    system calls (microseconds); reads the file only when something was
    written.  Not for threads that write to the standard error meanwhile."""

    def __enter__(self) -> list:
        if _SINK[0] != os.getpid():
            f = tempfile.TemporaryFile()
            _SINK[:] = [os.getpid(), os.dup(f.fileno())]
            f.close()
        self.lines = []
        self.saved = os.dup(2)
        os.dup2(_SINK[1], 2)
        return self.lines

    def __exit__(self, *exc):
        os.dup2(self.saved, 2)
        os.close(self.saved)
        fd = _SINK[1]
        n = os.lseek(fd, 0, os.SEEK_END)
        if n:
            os.lseek(fd, 0, os.SEEK_SET)
            text = os.read(fd, n).decode("utf-8", "replace")
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            self.lines.extend(line.strip() for line in text.splitlines() if line.strip())
        return False


def _diagnose(buf: np.ndarray) -> str:
    """Why a buffer did not decode, as far as its bytes tell."""
    head, tail = bytes(buf[:8]), bytes(buf[-1024:])
    if not buf.size:
        return "the file is empty"
    if head[:2] == b"\xff\xd8":
        if b"\xff\xd9" not in tail:
            return "a JPEG without its end-of-image marker: the file is truncated"
        return "a JPEG whose data is damaged"
    if head == b"\x89PNG\r\n\x1a\n":
        if b"IEND" not in tail:
            return "a PNG without its IEND chunk: the file is truncated"
        return "a PNG whose data is damaged"
    return f"neither JPEG nor PNG (the file starts with {head!r})"
