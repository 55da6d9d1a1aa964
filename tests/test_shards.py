"""HDF5 shard writer / reader / verifier and the codecs (dhm_data.shards)."""

import json
import os

import h5py
import numpy as np
import pytest

from dhm_data.errors import ShardCorruptError, ShardError, ShardSchemaError
from dhm_data.prepare.dhm import render_dhm
from dhm_data.shards import ShardReader, read_columns, schema, shard_info, verify_shard, write_shard


def make_columns(n, size=24, K=5, E=3, seed=0):
    """n synthetic rows of every schema field (crop size ``size``)."""
    rng = np.random.default_rng(seed)
    lm3 = np.concatenate([rng.uniform(2, size - 3, (n, 68, 2)), rng.normal(0, 5, (n, 68, 1))], -1).astype(np.float32)
    return {
        "image": rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
        "dhm": np.stack([render_dhm(p, size, 1.0) for p in lm3]),
        "landmarks_2d": (lm3[:, :, :2] + rng.normal(0, 0.1, (n, 68, 2))).astype(np.float32),
        "landmarks_3d": lm3,
        "pose_para": rng.normal(size=(n, 7)).astype(np.float32),
        "shape_para": rng.normal(size=(n, K)).astype(np.float32),
        "exp_para": rng.normal(size=(n, E)).astype(np.float32),
        "crop_affine": rng.normal(size=(n, 2, 3)),
        "yaw": rng.uniform(-90, 90, n).astype(np.float32),
        "name": np.array([f"IBUG_image_{i:03d}_1_0_é" for i in range(n)], dtype=object),
        "subset": np.array(["IBUG", "AFW"] * (n // 2) + ["HELEN"] * (n % 2), dtype=object),
        "flipped": np.arange(n) % 3 == 0,
        "label_source": np.array(["label", "fitted"] * (n // 2) + ["label"] * (n % 2), dtype=object),
        "fit_residual": np.where(np.arange(n) % 2, rng.uniform(0, 2, n), np.nan).astype(np.float32),
        "fit_converged": np.arange(n) % 4 != 1,
    }


ATTRS = {"dataset": "300wlp", "split": "train", "shard_index": 3,
         "pipeline": {"crop": {"size": 24, "margin": 0.3}, "dhm": {"sigma": 1.0}}}


@pytest.fixture
def shard(tmp_path):
    cols = make_columns(10)
    path = write_shard(tmp_path / "shard-00000.h5", cols, dict(ATTRS, n_samples=10))
    return path, cols


def test_schema_lists_every_field_once():
    names = [f.name for f in schema.FIELDS]
    assert len(names) == len(set(names)) == 15
    assert set(names) == set(make_columns(2))
    for f in schema.FIELDS:
        assert f.storage in schema.STORAGE_KINDS and f.description
    with pytest.raises(KeyError, match="unknown shard field 'nope'"):
        schema.field("nope")


def test_quantisation_bound():
    v = np.linspace(0, 1, 100001, dtype=np.float32)
    q = schema.quantise(v[None])[0]
    back = schema.dequantise(q)
    assert np.abs(back - v).max() <= schema.QUANT_MAX_ERROR + 1e-7
    assert q[0] == 0 and q[-1] == 255 and back[-1] == 1.0
    assert schema.quantise(np.array([[0.5 / 255 - 1e-4, 0.5 / 255 + 1e-4]], np.float32)).tolist() == [[0, 1]]


def test_round_trip_every_field(shard):
    path, cols = shard
    got = read_columns(path)
    assert set(got) == set(cols)
    for name, want in cols.items():
        f = schema.field(name)
        if f.is_text:
            assert got[name].tolist() == list(want), name
        elif f.quantised:
            assert got[name].dtype == np.float32
            assert np.abs(got[name] - want).max() <= schema.QUANT_MAX_ERROR + 1e-7
            np.testing.assert_array_equal(got[name], schema.quantise(want) / np.float32(255))
        else:
            assert got[name].dtype == np.dtype(f.dtype), name
            np.testing.assert_array_equal(got[name], want, err_msg=name)  # NaNs compare equal here
    raw = read_columns(path, ["dhm"], dhm_dtype="uint8")["dhm"]
    assert raw.dtype == np.uint8
    np.testing.assert_array_equal(raw, np.rint(cols["dhm"] * 255))
    with ShardReader(path) as r:
        assert r.n_samples == 10
        assert r.attrs["schema_version"] == schema.SCHEMA_VERSION
        assert r.attrs["package_version"] == "0.1.0"
        assert r.attrs["split"] == "train" and r.attrs["shard_index"] == 3
        assert r.pipeline == ATTRS["pipeline"]
        assert json.loads(r.attrs["dims"]) == {"S": 24, "K": 5, "E": 3}
        np.testing.assert_array_equal(r.read("image", [7, 2, 7]), cols["image"][[7, 2, 7]])
        assert r.read("name", [4, 0]).tolist() == [cols["name"][4], cols["name"][0]]


def test_storage_layout(shard, tmp_path):
    path, cols = shard
    with h5py.File(path, "r") as h:
        img, dhm = h["image"], h["dhm"]
        assert img.chunks is None and img.compression is None
        mm = np.memmap(path, np.uint8, "r", offset=img.id.get_offset(), shape=img.shape)
        np.testing.assert_array_equal(mm, cols["image"])
        assert dhm.chunks == (1, 24, 24, 3) and dhm.dtype == np.uint8
        assert "32001" in dhm._filters  # Blosc (hdf5plugin)
        assert h["dhm"].attrs["storage"] == "u8q-lz4"
        assert h["_crc32/image"].shape == (10,)
    p2 = write_shard(tmp_path / "raw.h5", cols, storage={"dhm": "u8q-raw"})
    info = shard_info(p2)
    assert info.fields["dhm"].storage == "u8q-raw" and info.fields["dhm"].offset is not None
    np.testing.assert_array_equal(read_columns(p2, ["dhm"])["dhm"], read_columns(path, ["dhm"])["dhm"])
    with pytest.raises(ShardSchemaError, match="storage 'jpeg'"):
        write_shard(tmp_path / "bad.h5", cols, storage={"dhm": "jpeg"})


def test_empty_shard(tmp_path):
    p = write_shard(tmp_path / "shard-00001.h5", {}, {"n_samples": 0, "n_rejected": 4, "split": "val"})
    rep = verify_shard(p)
    assert rep["n_samples"] == 0 and rep["attrs"]["n_rejected"] == 4
    with pytest.raises(ShardSchemaError, match="n_samples = 3 but the columns hold 0"):
        write_shard(tmp_path / "x.h5", {}, {"n_samples": 3})


def test_empty_shard_reads_as_zero_rows(tmp_path):
    p = write_shard(tmp_path / "shard-00001.h5", {}, {"n_samples": 0})
    cols = read_columns(p)
    assert sorted(cols) == sorted(schema.FIELD_NAMES)
    want = {"image": ((0, 0, 0, 3), np.uint8), "dhm": ((0, 0, 0, 3), np.float32),
            "landmarks_2d": ((0, 68, 2), np.float32), "landmarks_3d": ((0, 68, 3), np.float32),
            "pose_para": ((0, 7), np.float32), "shape_para": ((0, 0), np.float32), "exp_para": ((0, 0), np.float32),
            "crop_affine": ((0, 2, 3), np.float64), "yaw": ((0,), np.float32), "flipped": ((0,), np.bool_),
            "fit_residual": ((0,), np.float32), "fit_converged": ((0,), np.bool_)}
    for name, (shape, dtype) in want.items():
        assert cols[name].shape == shape and cols[name].dtype == dtype, name
    for name in ("name", "subset", "label_source"):
        assert cols[name].shape == (0,) and cols[name].dtype.kind == "U", name
    assert read_columns(p, ["dhm"], dhm_dtype="uint8")["dhm"].dtype == np.uint8
    with ShardReader(p) as r:
        assert r.n_samples == 0 and r.fields == list(schema.FIELD_NAMES)
        assert r.read("landmarks_2d", []).shape == (0, 68, 2)
        with pytest.raises(IndexError, match="out of range for a shard of 0 samples"):
            r.read("landmarks_2d", [0])
    # a recorded symbolic dimension is used; the columns join those of other shards
    q = write_shard(tmp_path / "shard-00002.h5", {}, {"n_samples": 0, "dims": '{"S": 24, "K": 5}'})
    full = make_columns(3)
    f = write_shard(tmp_path / "shard-00003.h5", full)
    empty = read_columns(q)
    assert empty["image"].shape == (0, 24, 24, 3) and empty["shape_para"].shape == (0, 5)
    assert empty["exp_para"].shape == (0, 0)
    joined = {k: np.concatenate([read_columns(f, [k])[k], v]) for k, v in empty.items() if k != "exp_para"}
    np.testing.assert_array_equal(joined["image"], full["image"])
    assert joined["name"].tolist() == list(full["name"])
    with pytest.raises(ShardSchemaError, match="dims is set from the data"):
        write_shard(tmp_path / "x.h5", full, {"dims": {"S": 24}})


@pytest.mark.parametrize("mutate, message", [
    (lambda c: c.pop("yaw"), r"missing fields \['yaw'\]"),
    (lambda c: c.update(extra=np.zeros(4)), r"columns \['extra'\] are not in the shard schema"),
    (lambda c: c.update(image=c["image"].astype(np.float32)), "field 'image': expected uint8, found float32"),
    (lambda c: c.update(image=c["image"][:, :20]), "field 'image'"),
    (lambda c: c.update(dhm=c["dhm"][:, :20, :20]), "dimension S = 20 disagrees with 24"),
    (lambda c: c["dhm"].__setitem__((2, 0, 0, 0), 1.5), r"field 'dhm': sample 2: expected values in \[0, 1\]"),
    (lambda c: c["dhm"].__setitem__((3, 1, 1, 1), np.nan), r"field 'dhm': sample 3"),
    (lambda c: c.update(landmarks_2d=c["landmarks_2d"][:, :67]), r"field 'landmarks_2d': expected per-sample shape \(68, 2\)"),
    (lambda c: c.update(name=list(range(4))), "field 'name': sample 0: expected str, found int"),
    (lambda c: c.update(yaw=c["yaw"][:3]), "field 'yaw': expected 4 samples, found 3"),
])
def test_schema_errors_name_the_field(tmp_path, mutate, message):
    cols = make_columns(4)
    mutate(cols)
    final = tmp_path / "shard-00000.h5"
    with pytest.raises(ShardSchemaError, match=message) as e:
        write_shard(final, cols)
    assert str(final) in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_leaves_nothing_on_error(tmp_path, monkeypatch):
    import dhm_data.shards.writer as shards

    final = tmp_path / "shard-00000.h5"
    calls = {"n": 0}
    real = shards.field_digest

    def failing(f, stored, **kw):
        calls["n"] += 1
        if calls["n"] == 5:  # in the middle of writing the HDF5 file
            raise RuntimeError("disk on fire")
        return real(f, stored, **kw)

    monkeypatch.setattr(shards, "field_digest", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_shard(final, make_columns(3))
    assert calls["n"] == 5
    assert list(tmp_path.iterdir()) == []
    # An existing shard survives a failed rewrite untouched.
    monkeypatch.setattr(shards, "field_digest", real)
    write_shard(final, make_columns(3, seed=1))
    before = final.read_bytes()
    calls["n"] = 0
    monkeypatch.setattr(shards, "field_digest", failing)
    with pytest.raises(RuntimeError):
        write_shard(final, make_columns(3, seed=2))
    assert final.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["shard-00000.h5"]


def test_verify_ok(shard):
    path, cols = shard
    rep = verify_shard(path)
    assert rep["n_samples"] == 10 and rep["schema_version"] == schema.SCHEMA_VERSION
    with h5py.File(path, "r") as h:
        assert rep["checksums"] == json.loads(h.attrs["checksums"])
        assert rep["checksums"]["image"] == h["image"].attrs["sha256"]
        assert h["image"].attrs["sha256_of"] == "crc32" and h["landmarks_2d"].attrs["sha256_of"] == "bytes"
    import hashlib
    import zlib

    # Pixel fields: sha256 over the little-endian CRC32 column; small fields: over their bytes.
    crcs = np.array([zlib.crc32(im.tobytes()) for im in cols["image"]], "<u4")
    assert rep["checksums"]["image"] == hashlib.sha256(crcs.tobytes()).hexdigest()
    assert rep["checksums"]["landmarks_2d"] == hashlib.sha256(cols["landmarks_2d"].astype(np.float32).tobytes()).hexdigest()


def test_verify_accepts_byte_digests_of_pixel_fields(shard):
    """A schema-v1 shard, whose image sha256 covers the bytes (``sha256_of``
    absent), still reads and verifies, and a wrong such digest is still caught."""
    import hashlib

    path, cols = shard
    with h5py.File(path, "r+") as h:
        h.attrs["schema_version"] = 1
        sha = hashlib.sha256(cols["image"].tobytes()).hexdigest()
        del h["image"].attrs["sha256_of"]
        h["image"].attrs["sha256"] = sha
        checks = json.loads(h.attrs["checksums"])
        checks["image"] = sha
        h.attrs["checksums"] = json.dumps(checks)
    assert verify_shard(path)["checksums"]["image"] == sha
    assert shard_info(path).n_samples == 10
    np.testing.assert_array_equal(read_columns(path, ["image"])["image"], cols["image"])
    with h5py.File(path, "r+") as h:
        h["image"].attrs["sha256"] = "0" * 64
    with pytest.raises(ShardCorruptError, match="'image'"):
        verify_shard(path)


@pytest.mark.parametrize("keep", [0.5, 0.999])
def test_verify_detects_truncation(shard, keep):
    path, _ = shard
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(int(size * keep))
    with pytest.raises(ShardCorruptError, match="truncated") as e:
        verify_shard(path)
    assert str(path) in str(e.value)
    assert isinstance(e.value, ShardError)


def _flip_byte(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x10]))


def test_verify_detects_bit_flip_in_image(shard):
    path, cols = shard
    with h5py.File(path, "r") as h:
        off = h["image"].id.get_offset() + 3 * 24 * 24 * 3 + 100
    _flip_byte(path, off)
    with pytest.raises(ShardCorruptError) as e:
        verify_shard(path)
    msg = str(e.value)
    assert str(path) in msg and "field 'image'" in msg and "damaged samples 3 'IBUG_image_003_1_0_é'" in msg
    assert "field 'dhm'" not in msg
    assert e.value.problems and len(e.value.problems) == 1


def test_verify_detects_bit_flip_in_compressed_dhm(shard):
    path, _ = shard
    with h5py.File(path, "r") as h:
        info = h["dhm"].id.get_chunk_info(5)
    _flip_byte(path, info.byte_offset + info.size // 2)
    with pytest.raises(ShardCorruptError) as e:
        verify_shard(path)
    msg = str(e.value)
    assert "field 'dhm'" in msg and "damaged samples 5 " in msg


def test_verify_detects_bit_flip_in_small_field_and_text(shard):
    path, _ = shard
    with h5py.File(path, "r") as h:
        off = h["landmarks_2d"].id.get_offset() + 7 * 68 * 2 * 4 + 13
    _flip_byte(path, off)
    with pytest.raises(ShardCorruptError, match=r"field 'landmarks_2d': damaged samples 7 'IBUG_image_007"):
        verify_shard(path)


def test_reader_names_an_unreadable_sample(shard):
    path, cols = shard
    with h5py.File(path, "r") as h:
        off = h["dhm"].id.get_chunk_info(6).byte_offset
    data = bytearray(path.read_bytes())
    data[off + 5] ^= 0x5A          # Blosc header of sample 6: uncompressed size
    path.write_bytes(bytes(data))
    with ShardReader(path) as r:
        np.testing.assert_array_equal(r.read("dhm", [0, 9]), schema.dequantise(schema.quantise(cols["dhm"][[0, 9]])))
        for indices in (None, [1, 6]):
            with pytest.raises(ShardError) as e:
                r.read("dhm", indices)
            msg = str(e.value)
            assert msg.startswith(f"{path}: field 'dhm': sample 6 {cols['name'][6]!r}: unreadable through HDF5 (OSError"), msg
            assert "dhm-data verify" in msg and isinstance(e.value.__cause__, OSError)


def test_schema_version_mismatch(shard):
    path, _ = shard
    with h5py.File(path, "r+") as h:
        h.attrs["schema_version"] = 99
    with pytest.raises(ShardSchemaError, match="schema version 99, this dhm-data reads versions 1, 2"):
        shard_info(path)
    with pytest.raises(ShardCorruptError, match="schema_version expected one of 1, 2, found 99"):
        verify_shard(path)


def test_not_a_shard(tmp_path):
    p = tmp_path / "x.h5"
    p.write_bytes(b"not hdf5 at all" * 100)
    with pytest.raises(ShardCorruptError, match="cannot be opened as HDF5"):
        verify_shard(p)
    with pytest.raises(ShardCorruptError, match="missing"):
        verify_shard(tmp_path / "nope.h5")
    assert not os.path.exists(tmp_path / "nope.h5")


# ------------------------------------------------------------------ streaming writer
@pytest.mark.parametrize("dhm_storage", ["u8q-lz4", "u8q-raw"])
def test_streamed_shard_equals_the_one_shot_shard(tmp_path, dhm_storage):
    """Pixel fields appended in uneven blocks give the same datasets, digests
    and CRCs as write_shard given every column at once."""
    from dhm_data.shards import ShardWriter

    cols = make_columns(11, seed=4)
    cols["dhm"] = schema.quantise(cols["dhm"])
    storage = {"dhm": dhm_storage}
    one = write_shard(tmp_path / "one.h5", cols, ATTRS, storage=storage)
    rest = {k: v for k, v in cols.items() if k not in ("image", "dhm")}
    with ShardWriter(tmp_path / "two.h5", 11, 24, storage=storage) as w:
        for a, b in ((0, 4), (4, 5), (5, 11)):
            w.append(image=cols["image"][a:b], dhm=cols["dhm"][a:b])
        assert not (tmp_path / "two.h5").exists()  # nothing final before finish()
        two = w.finish(rest, ATTRS)
    assert verify_shard(two)["checksums"] == verify_shard(one)["checksums"]
    a, b = read_columns(one), read_columns(two)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    with h5py.File(one) as h1, h5py.File(two) as h2:
        for k in ("image", "dhm"):
            assert h1[k].chunks == h2[k].chunks and h1[k].compression == h2[k].compression
            assert dict(h1[k].attrs) == dict(h2[k].attrs)
            np.testing.assert_array_equal(h1["_crc32"][k][()], h2["_crc32"][k][()])
        assert h2.attrs["n_samples"] == 11 and json.loads(h2.attrs["dims"]) == json.loads(h1.attrs["dims"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.h5", "two.h5"]


def test_streamed_shard_with_fewer_samples_is_rewritten_at_its_size(tmp_path):
    from dhm_data.shards import ShardWriter

    cols = make_columns(6, seed=2)
    cols["dhm"] = schema.quantise(cols["dhm"])
    with ShardWriter(tmp_path / "s.h5", 9, 24) as w:  # sized for 9, 6 arrive (3 rejected on decode)
        w.append(image=cols["image"], dhm=cols["dhm"])
        w.finish({k: v for k, v in cols.items() if k not in ("image", "dhm")}, ATTRS)
    rep = verify_shard(tmp_path / "s.h5")
    assert rep["n_samples"] == 6
    np.testing.assert_array_equal(read_columns(tmp_path / "s.h5", ["image"])["image"], cols["image"])
    with ShardWriter(tmp_path / "e.h5", 4, 24) as w:  # every sample rejected
        w.finish({}, ATTRS)
    assert read_columns(tmp_path / "e.h5", ["image"])["image"].shape == (0, 24, 24, 3)
    with ShardWriter(tmp_path / "z.h5", 0, 24) as w:  # opened for none
        w.finish({}, dict(ATTRS, n_samples=0))
        with pytest.raises(ShardSchemaError, match="finish after the writer was finished"):
            w.finish({}, ATTRS)
        with pytest.raises(ShardSchemaError, match="append after the writer was finished"):
            w.append(image=cols["image"], dhm=cols["dhm"])
    assert verify_shard(tmp_path / "z.h5")["n_samples"] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.h5", "s.h5", "z.h5"]


def test_streamed_shard_rewrite_is_block_wise(tmp_path, monkeypatch):
    """The rewrite at the true size copies in blocks (never the whole column)."""
    from dhm_data.shards import ShardWriter, writer

    monkeypatch.setattr(writer, "_COPY_BLOCK", 4)
    seen = []
    real_append = ShardWriter.append

    def spy(self, **blocks):
        seen.append(len(blocks["image"]))
        return real_append(self, **blocks)

    monkeypatch.setattr(ShardWriter, "append", spy)
    cols = make_columns(10, seed=3)
    cols["dhm"] = schema.quantise(cols["dhm"])
    with ShardWriter(tmp_path / "s.h5", 12, 24) as w:
        w.append(image=cols["image"], dhm=cols["dhm"])
        w.finish({k: v for k, v in cols.items() if k not in ("image", "dhm")}, dict(ATTRS, n_samples=10))
    assert seen == [10, 4, 4, 2]
    got = read_columns(tmp_path / "s.h5", ["image", "dhm"], dhm_dtype="uint8")
    np.testing.assert_array_equal(got["image"], cols["image"])
    np.testing.assert_array_equal(got["dhm"], cols["dhm"])
    assert verify_shard(tmp_path / "s.h5")["n_samples"] == 10
    assert [p.name for p in tmp_path.iterdir()] == ["s.h5"]


def test_streamed_shard_errors_leave_nothing(tmp_path):
    from dhm_data.shards import ShardWriter

    cols = make_columns(3)
    with pytest.raises(ShardSchemaError, match=r"field 'dhm': expected a \(3, 24, 24, 3\) uint8 block, found .*float32"):
        with ShardWriter(tmp_path / "s.h5", 3, 24) as w:
            w.append(image=cols["image"], dhm=cols["dhm"])  # floats: not quantised
    with pytest.raises(ShardSchemaError, match="exceeds the 2"):
        with ShardWriter(tmp_path / "s.h5", 2, 24) as w:
            w.append(image=cols["image"], dhm=schema.quantise(cols["dhm"]))
    with pytest.raises(KeyboardInterrupt):
        with ShardWriter(tmp_path / "s.h5", 3, 24) as w:
            w.append(image=cols["image"], dhm=schema.quantise(cols["dhm"]))
            raise KeyboardInterrupt
    with pytest.raises(ShardSchemaError, match="field 'yaw': expected 3 samples, found 2"):
        with ShardWriter(tmp_path / "s.h5", 3, 24) as w:
            w.append(image=cols["image"], dhm=schema.quantise(cols["dhm"]))
            rest = {k: v for k, v in cols.items() if k not in ("image", "dhm")}
            w.finish(dict(rest, yaw=rest["yaw"][:2]), ATTRS)
    assert list(tmp_path.iterdir()) == []


def test_early_writeback_leaves_the_file_as_written(tmp_path):
    """The writeback head start changes nothing in the bytes, and its
    descriptor is closed by finish and by abort (no descriptor leaks)."""
    import os

    from dhm_data.atomic import EarlyWriteback
    from dhm_data.shards import ShardWriter

    p = tmp_path / "f.bin"
    data = np.arange(3 << 20, dtype=np.uint32).tobytes()
    n_fds = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    with open(p, "wb") as f:
        wb = EarlyWriteback(p)
        for i in range(0, len(data), 1 << 20):
            f.write(data[i:i + (1 << 20)])
            f.flush()
            wb.start()
        wb.close()
        wb.close()  # idempotent
    assert p.read_bytes() == data
    if n_fds is not None:
        assert len(os.listdir("/proc/self/fd")) == n_fds
    # a shard written and one aborted leave no descriptor open either
    rng = np.random.default_rng(0)
    before = len(os.listdir("/proc/self/fd")) if n_fds is not None else None
    for finish in (True, False):
        with ShardWriter(tmp_path / f"s{finish}.h5", 4, 8) as w:
            w.append(image=rng.integers(0, 255, (4, 8, 8, 3), dtype=np.uint8),
                     dhm=rng.integers(0, 255, (4, 8, 8, 3), dtype=np.uint8))
            if not finish:
                w.abort()
    if before is not None:
        assert len(os.listdir("/proc/self/fd")) == before
