"""dhm_data.formats.t7 against the torchfile package, both directions, and hand-built bytes."""

import struct

import numpy as np
import pytest

torchfile = pytest.importorskip("torchfile")

from dhm_data.errors import T7Error
from dhm_data.formats.t7 import read_t7, t7_bytes, write_t7


def _s(b: bytes) -> bytes:
    return struct.pack("<i", len(b)) + b


def _tensor_bytes(cls, storage_cls, fmt, size, stride, offset, data, version=True):
    """A torch.save file assembled by hand from the torch7 sources' layout."""
    head = struct.pack("<ii", 4, 1) + ((_s(b"V 1") + _s(cls)) if version else _s(cls))
    geo = struct.pack("<i", len(size)) + struct.pack(f"<{len(size)}q", *size) + struct.pack(f"<{len(stride)}q", *stride)
    geo += struct.pack("<q", offset + 1)
    st = struct.pack("<ii", 4, 2) + ((_s(b"V 1") + _s(storage_cls)) if version else _s(storage_cls))
    st += struct.pack("<q", len(data)) + struct.pack(f"<{len(data)}{fmt}", *data)
    return head + geo + st


def test_write_matches_torch_save_layout_byte_for_byte(tmp_path):
    a = np.array([[1.5, -2.0], [3.25, 4.0]], np.float32)
    expected = _tensor_bytes(b"torch.FloatTensor", b"torch.FloatStorage", "f", (2, 2), (2, 1), 0, [1.5, -2.0, 3.25, 4.0])
    assert t7_bytes(a) == expected
    p = write_t7(tmp_path / "a.t7", a)
    assert p.read_bytes() == expected


def test_written_landmarks_read_by_torchfile(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(5):
        lm = rng.uniform(-5, 455, (68, 2))
        p = write_t7(tmp_path / f"{i}.t7", lm)
        got = torchfile.load(str(p))
        assert isinstance(got, np.ndarray) and got.dtype == np.float32 and got.shape == (68, 2)
        np.testing.assert_array_equal(got, lm.astype(np.float32))
        np.testing.assert_array_equal(read_t7(p), lm.astype(np.float32))


@pytest.mark.parametrize("version", [True, False])
def test_read_strided_double_tensor_like_torchfile(tmp_path, version):
    # a 68x2 DoubleTensor that is the transpose of a 2x68 storage, offset by 3 elements
    data = list(np.arange(3 + 136, dtype=np.float64) * 0.5)
    raw = _tensor_bytes(b"torch.DoubleTensor", b"torch.DoubleStorage", "d", (68, 2), (1, 68), 3, data, version)
    p = tmp_path / "d.t7"
    p.write_bytes(raw)
    ours, theirs = read_t7(p), torchfile.load(str(p))
    assert ours.dtype == np.float64 and ours.shape == (68, 2) and ours.flags.c_contiguous
    np.testing.assert_array_equal(ours, theirs)
    assert ours[0, 0] == 1.5 and ours[0, 1] == (3 + 68) * 0.5 and ours[67, 1] == (3 + 135) * 0.5


def test_float_tensor_read_matches_torchfile(tmp_path):
    data = [float(v) for v in range(12)]
    p = tmp_path / "f.t7"
    p.write_bytes(_tensor_bytes(b"torch.FloatTensor", b"torch.FloatStorage", "f", (3, 4), (4, 1), 0, data))
    np.testing.assert_array_equal(read_t7(p), torchfile.load(str(p)))
    assert read_t7(p).dtype == np.float32


def test_other_content_is_refused_clearly(tmp_path):
    p = tmp_path / "long.t7"
    p.write_bytes(_tensor_bytes(b"torch.LongTensor", b"torch.LongStorage", "q", (2,), (1,), 0, [1, 2]))
    with pytest.raises(T7Error, match=r"long\.t7.*torch\.FloatTensor or torch\.DoubleTensor.*torch\.LongTensor"):
        read_t7(p)
    num = tmp_path / "num.t7"
    num.write_bytes(struct.pack("<id", 1, 3.0))
    with pytest.raises(T7Error, match=r"num\.t7.*type tag 1 \(number\)"):
        read_t7(num)
    table = tmp_path / "table.t7"
    table.write_bytes(struct.pack("<iii", 3, 1, 0))
    with pytest.raises(T7Error, match="table"):
        read_t7(table)
    good = t7_bytes(np.zeros((68, 2)))
    cut = tmp_path / "cut.t7"
    cut.write_bytes(good[:-10])
    with pytest.raises(T7Error, match=r"cut\.t7: truncated"):
        read_t7(cut)
    bad_geo = tmp_path / "geo.t7"
    bad_geo.write_bytes(_tensor_bytes(b"torch.FloatTensor", b"torch.FloatStorage", "f", (68, 2), (2, 1), 0, [0.0] * 100))
    with pytest.raises(T7Error, match="reaches element"):
        read_t7(bad_geo)
    with pytest.raises(T7Error, match="cannot read"):
        read_t7(tmp_path / "missing.t7")
