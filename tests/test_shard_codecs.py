"""The codecs of the storage kinds, and shards written by hand (plain h5py,
following docs/shards.md) for schema versions 1 and 2: the package reads and
verifies them, so the documented format and the code agree."""

import hashlib
import json
import zlib

import h5py
import hdf5plugin
import numpy as np
import pytest
from test_shards import make_columns

from dhm_data.errors import ShardCorruptError, ShardSchemaError
from dhm_data.load import Loader, ShardDataset
from dhm_data.shards import ShardReader, read_columns, schema, verify_shard, write_shard

#: A field of each storage kind.
KIND_FIELD = {"raw": "image", "u8q-lz4": "dhm", "u8q-raw": "dhm", "small": "landmarks_2d", "text": "name"}


def test_one_codec_per_storage_kind():
    assert set(schema.CODECS) == set(KIND_FIELD) == set(schema.STORAGE_KINDS)
    for f in schema.FIELDS:
        assert f.codec is schema.CODECS[f.storage]
    assert schema.DHM_STORAGE_CHOICES == ("u8q-lz4", "u8q-raw") and schema.DEFAULT_DHM_STORAGE == "u8q-lz4"
    with pytest.raises(KeyError, match="unknown storage kind 'jpeg'"):
        schema.codec_for("jpeg")


@pytest.mark.parametrize("kind", sorted(KIND_FIELD))
def test_codec_round_trip_and_checksums(tmp_path, kind):
    """encode -> create -> open -> decode gives the stored values back in any
    order; the CRC32s are zlib's over each sample's stored bytes."""
    f = schema.field(KIND_FIELD[kind])
    codec = schema.codec_for(kind)
    values = make_columns(5, seed=4)[f.name]
    stored = codec.encode(f, values, 5, {}, ShardSchemaError)
    if codec.quantised:
        np.testing.assert_array_equal(stored, np.rint(np.asarray(values) * 255))
    with h5py.File(tmp_path / "c.h5", "w") as h:
        codec.create(h, f, data=stored)
    sha, crcs = codec.digest(stored)
    if kind == "text":
        want = [zlib.crc32(v.encode("utf-8")) for v in stored]
    else:
        want = [zlib.crc32(np.ascontiguousarray(r).tobytes()) for r in stored]
    assert crcs.tolist() == want
    if codec.per_sample:   # sha256 over the little-endian CRC32 column
        assert sha == hashlib.sha256(np.array(want, "<u4").tobytes()).hexdigest() == codec.digest_of_crcs(crcs)
    loc = np.array([4, 0, 2, 2])
    with h5py.File(tmp_path / "c.h5", "r") as h:
        ds = h[f.name]
        assert ds.attrs["storage"] == kind
        src = codec.open(ds, 5, tmp_path / "c.h5", lambda: np.memmap(tmp_path / "c.h5", np.uint8, "r"))
        out = np.empty(4, object) if kind == "text" else np.zeros((4,) + stored.shape[1:], stored.dtype)
        src.decode(loc, out, np.arange(4), fail=None)
        back, bad = codec.read_stored(ds, 5)
    assert bad == []
    if kind == "text":
        assert out.tolist() == [values[i] for i in loc] and list(back) == list(values)
    else:
        np.testing.assert_array_equal(out, stored[loc])
        np.testing.assert_array_equal(back, stored)


def _write_by_hand(path, cols, version: int):
    """A shard written with plain h5py from the format description alone."""
    n = len(cols["name"])
    checks = {}
    with h5py.File(path, "w") as h:
        crc_group = h.create_group("_crc32")
        for f in schema.FIELDS:
            v = cols[f.name]
            if f.name == "dhm":
                data = np.rint(np.clip(v, 0, 1) * 255).astype(np.uint8)
                ds = h.create_dataset("dhm", data=data, chunks=(1,) + data.shape[1:],
                                      **hdf5plugin.Blosc(cname="lz4", clevel=5, shuffle=0))
                rows = [np.ascontiguousarray(r).tobytes() for r in data]
            elif f.is_text:
                ds = h.create_dataset(f.name, data=np.array(list(v), dtype=object), dtype=h5py.string_dtype("utf-8"))
                rows = [s.encode("utf-8") for s in v]
            else:
                data = np.ascontiguousarray(np.asarray(v, f.dtype))
                ds = h.create_dataset(f.name, data=data)
                rows = [r.tobytes() for r in data]
            crcs = np.array([zlib.crc32(r) for r in rows], "<u4")
            crc_group.create_dataset(f.name, data=crcs)
            if f.is_text:
                digest = hashlib.sha256(b"".join(len(r).to_bytes(8, "little") + r for r in rows))
            elif version >= 2 and f.storage in ("raw", "u8q-lz4"):
                digest = hashlib.sha256(crcs.tobytes())
                ds.attrs["sha256_of"] = "crc32"
            else:
                digest = hashlib.sha256(b"".join(rows))
            checks[f.name] = digest.hexdigest()
            ds.attrs["sha256"] = checks[f.name]
            if version >= 2:
                ds.attrs["storage"] = f.storage
        h.attrs["schema_version"] = version
        h.attrs["n_samples"] = n
        h.attrs["checksums"] = json.dumps(checks)
        h.attrs["pipeline"] = json.dumps({"dhm": {"sigma": 1.0}})


@pytest.mark.parametrize("version", [1, 2])
def test_hand_written_shards_of_each_version_read_and_verify(tmp_path, version):
    cols = make_columns(6, seed=version)
    path = tmp_path / "shard-00000.h5"
    _write_by_hand(path, cols, version)
    rep = verify_shard(path)
    assert rep["schema_version"] == version and rep["n_samples"] == 6
    got = read_columns(path)
    np.testing.assert_array_equal(got["image"], cols["image"])
    np.testing.assert_array_equal(got["dhm"], np.rint(cols["dhm"] * 255).astype(np.uint8) / np.float32(255))
    np.testing.assert_array_equal(got["crop_affine"], cols["crop_affine"])
    assert got["name"].tolist() == list(cols["name"])
    ds = ShardDataset(path, check_crc=True)
    batch = next(iter(Loader(ds, batch_size=6, shuffle=False)))
    np.testing.assert_array_equal(batch["dhm"], np.rint(cols["dhm"] * 255))
    np.testing.assert_array_equal(batch["landmarks_3d"], cols["landmarks_3d"])
    # the one reader and the verifier both see a damaged sample of the hand-written file
    with h5py.File(path, "r") as h:
        off = h["image"].id.get_offset() + 2 * h["image"][0].nbytes + 7
    data = bytearray(path.read_bytes())
    data[off] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ShardCorruptError, match="field 'image': damaged samples 2"):
        verify_shard(path)
    with ShardReader(path, check_crc=True) as r:
        with pytest.raises(Exception, match="field 'image': sample 2 .*CRC32 mismatch"):
            r.read("image", [0, 2])


def test_writer_and_hand_written_shard_agree(tmp_path):
    """The package's writer produces the digests the format description gives."""
    cols = make_columns(4, seed=9)
    _write_by_hand(tmp_path / "hand.h5", cols, 2)
    write_shard(tmp_path / "pkg.h5", cols)
    with h5py.File(tmp_path / "hand.h5", "r") as a, h5py.File(tmp_path / "pkg.h5", "r") as b:
        assert json.loads(a.attrs["checksums"]) == json.loads(b.attrs["checksums"])
        for f in schema.FIELDS:
            np.testing.assert_array_equal(a["_crc32"][f.name][()], b["_crc32"][f.name][()])
