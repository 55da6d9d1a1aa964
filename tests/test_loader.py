"""ShardDataset, Loader, ordering, rank partitions, workers and flip augmentation."""

import math
import multiprocessing as mp
import os
import signal

import numpy as np
import pytest
from test_shards import make_columns

from dhm_data.errors import LoaderError, ShardError
from dhm_data.geometry.landmarks68 import CENTRE_68, LEFT_EYE, MIRROR_68, RIGHT_EYE, mirror_landmarks
from dhm_data.load import HorizontalFlip, Loader, ShardDataset, epoch_order, rank_order, shard_paths
from dhm_data.prepare.dhm import render_dhm
from dhm_data.shards import read_columns, schema, write_shard

SIZES = (40, 27, 20)   # 87 samples in three shards (+ one empty shard)


@pytest.fixture(scope="module")
def split_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("build") / "train"
    d.mkdir()
    start = 0
    for k, n in enumerate(SIZES):
        cols = make_columns(n, size=16, seed=k)
        cols["name"] = np.array([f"s{start + i:03d}" for i in range(n)], dtype=object)
        write_shard(d / f"shard-{k:05d}.h5", cols, {"split": "train", "pipeline": {"dhm": {"sigma": 1.0}}})
        start += n
    write_shard(d / "shard-00003.h5", {}, {"n_samples": 0})
    (d / ".shard-00004.h5.tmp-123").write_bytes(b"partial")
    (d / "notes.txt").write_text("x")
    return d


def all_columns(split_dir):
    parts = [read_columns(p) for p in sorted(split_dir.glob("shard-*.h5"))[:3]]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


# ------------------------------------------------------------------ dataset
def test_shard_paths(split_dir):
    assert [p.name for p in shard_paths(split_dir)] == [f"shard-{k:05d}.h5" for k in range(4)]
    assert shard_paths([split_dir / "shard-00001.h5", split_dir / "shard-00000.h5"])[0].name == "shard-00001.h5"
    with pytest.raises(ShardError, match="no shard-\\*.h5 files"):
        shard_paths(split_dir.parent)
    with pytest.raises(ShardError, match="no such shard file"):
        shard_paths(split_dir / "nope.h5")


def test_dataset_matches_shards(split_dir):
    assert ShardDataset(split_dir)[5]["dhm"].dtype == np.uint8        # the default: the stored bytes
    ds = ShardDataset(split_dir, dhm_dtype="float32")
    assert len(ds) == sum(SIZES) and len(ds.paths) == 3   # the empty shard is skipped
    cols = all_columns(split_dir)
    for i in (0, 39, 40, 66, 67, 86, -1):
        s = ds[i]
        j = i % len(ds)
        assert s["name"] == f"s{j:03d}" and isinstance(s["name"], str)
        for k, v in s.items():
            if schema.field(k).is_text:
                assert v == cols[k][j]
            else:
                np.testing.assert_array_equal(v, cols[k][j], err_msg=k)
    assert ds[5]["dhm"].dtype == np.float32 and ds[5]["image"].shape == (16, 16, 3)
    with pytest.raises(IndexError, match="out of range"):
        ds[87]
    b = ds.read_batch([86, 0, 45, 45])
    assert b["name"].tolist() == ["s086", "s000", "s045", "s045"]
    np.testing.assert_array_equal(b["landmarks_3d"], cols["landmarks_3d"][[86, 0, 45, 45]])
    assert ds.pipeline == {"dhm": {"sigma": 1.0}}


def test_dataset_reads_only_requested_fields(split_dir):
    ds = ShardDataset(split_dir, fields=["image", "yaw"], dhm_dtype="uint8")
    s = ds[3]
    assert set(s) == {"image", "yaw"}
    r = ds.reader(0)
    assert set(r._sources) == {"image", "yaw"}
    assert r.access("image") == "memmap" and r.access("yaw") == "memory"   # raw crops are memory-mapped
    u8 = ShardDataset(split_dir, fields=["dhm"], dhm_dtype="uint8").read_batch([1, 50])["dhm"]
    f32 = ShardDataset(split_dir, fields=["dhm"], dhm_dtype="float32").read_batch([1, 50])["dhm"]
    assert u8.dtype == np.uint8
    np.testing.assert_array_equal(f32, u8 / np.float32(255))
    with pytest.raises(KeyError, match="unknown shard field"):
        ShardDataset(split_dir, fields=["image", "pixels"])


def _read_in_child(ds, idx):
    b = ds.read_batch(idx)
    return {k: v for k, v in b.items()}


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_dataset_in_worker_processes(split_dir, method):
    if method not in mp.get_all_start_methods():
        pytest.skip(f"{method} not available")
    ds = ShardDataset(split_dir)
    want = ds.read_batch([3, 50, 80])   # the parent has open handles before forking
    with mp.get_context(method).Pool(2) as pool:
        got = pool.starmap(_read_in_child, [(ds, [3, 50, 80]), (ds, [3, 50, 80])])
    for g in got:
        for k in want:
            np.testing.assert_array_equal(g[k], want[k], err_msg=k)
    assert ds._pid is not None  # parent state kept


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_torch_dataloader_accepts_dataset(split_dir, method):
    torch = pytest.importorskip("torch")
    if method not in mp.get_all_start_methods():
        pytest.skip(f"{method} not available")
    ds = ShardDataset(split_dir, fields=["image", "dhm", "landmarks_2d", "name"], check_crc=True)
    ds.read_batch([0])   # the parent holds open handles before the workers start
    dl = torch.utils.data.DataLoader(ds, batch_size=8, num_workers=2, shuffle=False, multiprocessing_context=method)
    names, lms, images = [], [], []
    for b in dl:
        assert b["image"].dtype == torch.uint8 and b["dhm"].dtype == torch.uint8
        names += list(b["name"])
        lms.append(b["landmarks_2d"].numpy())
        images.append(b["image"].numpy())
    assert names == [f"s{i:03d}" for i in range(87)]
    cols = all_columns(split_dir)
    np.testing.assert_array_equal(np.concatenate(lms), cols["landmarks_2d"])
    np.testing.assert_array_equal(np.concatenate(images), cols["image"])


# ------------------------------------------------------------------ order
def test_epoch_order_is_a_seeded_permutation():
    lengths = [40, 27, 20]
    a = epoch_order(lengths, seed=3, epoch=0)
    assert sorted(a.tolist()) == list(range(87))
    np.testing.assert_array_equal(a, epoch_order(lengths, seed=3, epoch=0))
    assert not np.array_equal(a, epoch_order(lengths, seed=3, epoch=1))
    assert not np.array_equal(a, epoch_order(lengths, seed=4, epoch=0))
    np.testing.assert_array_equal(epoch_order(lengths, 3, 0, shuffle=False), np.arange(87))


def test_epoch_order_blocks_stay_within_a_shard():
    lengths = [10, 7]
    o = epoch_order(lengths, seed=0, epoch=0, block_size=4, window=1)   # no within-window shuffle
    # Each block: consecutive samples of one shard; shards cut into 4, 4, 2 and 4, 3.
    want = [(0, 1, 2, 3), (4, 5, 6, 7), (8, 9), (10, 11, 12, 13), (14, 15, 16)]
    assert sorted(o.tolist()) == list(range(17))
    pos = {v: k for k, v in enumerate(o.tolist())}
    for b in want:
        p = [pos[v] for v in b]
        assert p == list(range(p[0], p[0] + len(b))), b   # each block appears contiguous and in order
    # A window shuffles only inside consecutive windows of positions.
    w = epoch_order(lengths, seed=0, epoch=0, block_size=4, window=5)
    for s in range(0, 17, 5):
        assert sorted(w[s:s + 5].tolist()) == sorted(o[s:s + 5].tolist())


@pytest.mark.parametrize("world_size", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("drop_last", [False, True])
def test_rank_partitions(split_dir, world_size, drop_last):
    n, bs = 87, 8
    ds = ShardDataset(split_dir, fields=["yaw"])
    loaders = [Loader(ds, batch_size=bs, seed=1, epoch=2, rank=r, world_size=world_size, drop_last=drop_last)
               for r in range(world_size)]
    parts = [ld.order() for ld in loaders]
    order = epoch_order(ds.lengths, seed=1, epoch=2)
    for r, p in enumerate(parts):
        np.testing.assert_array_equal(p, rank_order(order, r, world_size, bs, drop_last))
    sizes = {len(p) for p in parts}
    assert len(sizes) == 1
    per = sizes.pop()
    allv = np.concatenate(parts)
    if drop_last:
        assert per == (n // world_size) // bs * bs and per % bs == 0
        assert len(set(allv.tolist())) == len(allv)          # disjoint
    else:
        assert per == math.ceil(n / world_size)
        assert set(allv.tolist()) == set(range(n))          # complete
        assert len(allv) - len(set(allv.tolist())) == per * world_size - n < world_size  # only the padding repeats
    nb = {len(ld) for ld in loaders}
    assert nb == {math.ceil(per / bs)}
    assert {len(ld.batches()) for ld in loaders} == nb
    if drop_last:
        assert all(len(b) == bs for ld in loaders for b in ld.batches())


def test_loader_batches_cover_epoch_and_respect_epochs(split_dir):
    ds = ShardDataset(split_dir, fields=["name", "yaw"])
    ld = Loader(ds, batch_size=10, shuffle=True, seed=7)
    names0 = [n for b in ld for n in b["name"]]
    assert len(ld) == 9 and sorted(names0) == sorted(f"s{i:03d}" for i in range(87))
    assert [n for b in ld for n in b["name"]] == names0             # same epoch: same order
    ld.set_epoch(1)
    names1 = [n for b in ld for n in b["name"]]
    assert names1 != names0 and sorted(names1) == sorted(names0)
    assert [n for b in Loader(ds, batch_size=10, seed=7, epoch=1) for n in b["name"]] == names1
    assert [n for b in Loader(ds, batch_size=10, shuffle=False) for n in b["name"]] == [f"s{i:03d}" for i in range(87)]
    dl = list(Loader(ds, batch_size=10, seed=7, drop_last=True))
    assert len(dl) == 8 and all(len(b["yaw"]) == 10 for b in dl)


def _batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert list(x) == list(y)
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


@pytest.mark.parametrize("copy", [True, False])
def test_worker_counts_give_identical_batches(split_dir, copy):
    ds = ShardDataset(split_dir)
    runs = {}
    for w in (0, 1, 2):
        with Loader(ds, batch_size=16, seed=5, epoch=3, num_workers=w, copy=copy, mp_context="fork") as ld:
            got = []
            for b in ld:
                for v in b.values():
                    assert v.flags.c_contiguous
                got.append({k: v.copy() for k, v in b.items()})
            runs[w] = got
            ld.set_epoch(4)
            other = [b["name"].copy() for b in ld]    # workers persist across epochs
        assert [list(b["name"]) for b in got] != [list(n) for n in other]
    _batches_equal(runs[0], runs[1])
    _batches_equal(runs[0], runs[2])
    assert sum(len(b["name"]) for b in runs[0]) == 87 and runs[0][-1]["image"].shape == (87 - 80, 16, 16, 3)


def test_spawned_workers_and_ranks(split_dir):
    ds = ShardDataset(split_dir, fields=["name", "landmarks_2d"])
    ref = [b for b in Loader(ds, batch_size=8, seed=2, rank=1, world_size=3)]
    with Loader(ds, batch_size=8, seed=2, rank=1, world_size=3, num_workers=2, mp_context="spawn") as ld:
        _batches_equal(ref, list(ld))
    names = [set(n for b in Loader(ds, batch_size=8, seed=2, rank=r, world_size=3) for n in b["name"]) for r in range(3)]
    assert set.union(*names) == {f"s{i:03d}" for i in range(87)}
    assert not (names[0] & names[1]) and not (names[1] & names[2]) and not (names[0] & names[2])  # 87 = 3 * 29


def test_abandoned_iteration_and_worker_errors(split_dir):
    ds = ShardDataset(split_dir, fields=["name"])
    with Loader(ds, batch_size=4, seed=1, num_workers=2, mp_context="fork", timeout=20) as ld:
        for cut in (1, 1, 3, 1):                    # break mid-epoch, slots still in flight
            it = iter(ld)
            first = [next(it)["name"].tolist() for _ in range(cut)]
            it.close()
        again = [b["name"].tolist() for b in ld]
        assert again[:1] == first and len(again) == 22
        assert sorted(n for b in again for n in b) == [f"s{i:03d}" for i in range(87)]
    def bad(batch, rng):
        raise ValueError("boom in transform")
    with Loader(ds, batch_size=4, num_workers=1, transform=bad, mp_context="fork") as ld:
        with pytest.raises(LoaderError, match="boom in transform"):
            list(ld)



def test_dead_worker_raises_and_loader_restarts(split_dir):
    """A worker killed mid-epoch: the loader raises LoaderError naming its
    process and exit code (no hang), and the next iteration starts new
    workers that give the same batches as a loader without workers."""
    ds = ShardDataset(split_dir, fields=["name", "landmarks_2d"])
    ref = [b["name"].tolist() for b in Loader(ds, batch_size=4, seed=1)]
    with Loader(ds, batch_size=4, seed=1, num_workers=2, mp_context="fork", timeout=20) as ld:
        it = iter(ld)
        assert next(it)["name"].tolist() == ref[0]
        victim = ld.worker_pids[0]
        os.kill(victim, signal.SIGKILL)
        with pytest.raises(LoaderError, match=f"loader worker process died \\(pid {victim} exit code -9"):
            for _ in it:
                pass
        assert ld.worker_pids == []
        assert [b["name"].tolist() for b in ld] == ref
        assert len(ld.worker_pids) == 2 and victim not in ld.worker_pids

# ------------------------------------------------------------------ mirror / flip
def test_mirror_68_permutation():
    m = MIRROR_68
    assert sorted(m.tolist()) == list(range(68))
    np.testing.assert_array_equal(m[m], np.arange(68))          # involution
    pairs = {0: 16, 1: 15, 7: 9, 17: 26, 21: 22, 31: 35, 32: 34, 36: 45, 37: 44, 38: 43, 39: 42, 40: 47,
             41: 46, 48: 54, 49: 53, 50: 52, 55: 59, 56: 58, 60: 64, 61: 63, 65: 67}
    for a, b in pairs.items():
        assert m[a] == b and m[b] == a
    assert CENTRE_68.tolist() == [8, 27, 28, 29, 30, 33, 51, 57, 62, 66]
    assert sorted(m[RIGHT_EYE].tolist()) == list(range(42, 48))
    assert sorted(m[LEFT_EYE].tolist()) == list(range(36, 42))


def test_mirror_68_on_the_bfm_mean_face(bfm68_dir):
    """The BFM mean landmarks are left-right symmetric: mirroring x -> -x and
    re-labelling with MIRROR_68 lands each point near its own position."""
    mean = np.loadtxt(bfm68_dir / "u_base.txt").reshape(68, 3)
    mirrored = mean[MIRROR_68] * [-1, 1, 1]
    width = np.ptp(mean[:, 0])
    err = np.linalg.norm(mirrored - mean, axis=1)
    assert err.max() < 0.03 * width
    wrong = np.linalg.norm(mean * [-1, 1, 1] - mean, axis=1)   # mirrored without re-labelling
    assert wrong.max() > 0.5 * width


def _grid_sample(S=100):
    """68 landmarks on a 10-px grid (no Gaussian overlaps), integer positions."""
    k = np.arange(68)
    x = 5.0 + 10 * (k % 9)
    y = 5.0 + 10 * (k // 9)
    z = np.linspace(-20, 30, 68)[::-1] * np.where(k % 2, 1, -1)
    return np.stack([x, y, z], 1).astype(np.float32)


def test_horizontal_flip_hand_computed():
    S = 100
    lm3 = _grid_sample(S)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (2, S, S, 3), dtype=np.uint8)
    A = np.array([[2.0, 0.0, -30.0], [0.0, 2.0, -10.0]])
    batch = {
        "image": image.copy(),
        "dhm": np.stack([render_dhm(lm3, S, 1.0)] * 2),
        "landmarks_2d": np.stack([lm3[:, :2]] * 2),
        "landmarks_3d": np.stack([lm3] * 2),
        "crop_affine": np.stack([A, A]),
        "yaw": np.array([30.0, 30.0], np.float32),
    }
    orig = {k: v.copy() for k, v in batch.items()}

    class Rng:
        def random(self, n):
            return np.array([0.1, 0.9])[:n]     # sample 0 flips, sample 1 does not

    out = HorizontalFlip(p=0.5, sigma=1.0)(batch, Rng())
    assert out["hflip"].tolist() == [True, False]
    for k in orig:                               # sample 1 untouched
        np.testing.assert_array_equal(out[k][1], orig[k][1])
    np.testing.assert_array_equal(out["image"][0], image[0][:, ::-1])
    # Landmark m of the mirror is landmark MIRROR_68[m] with x -> 99 - x: e.g. jaw 0 <-> 16.
    assert out["landmarks_2d"][0][0].tolist() == [99 - lm3[16, 0], lm3[16, 1]]
    assert out["landmarks_2d"][0][36].tolist() == [99 - lm3[45, 0], lm3[45, 1]]
    np.testing.assert_array_equal(out["landmarks_3d"][0][:, 2], lm3[MIRROR_68, 2])
    np.testing.assert_array_equal(out["landmarks_3d"][0], mirror_landmarks(lm3, S))
    assert out["yaw"][0] == -30.0
    # Source point (40, 20) -> crop (50, 30) -> mirrored crop (49, 30).
    np.testing.assert_allclose(out["crop_affine"][0] @ [40.0, 20.0, 1.0], [49.0, 30.0])
    # DHM by hand: landmark l at integer (x, y) with normalised coords (xn, yn, zn); after the
    # mirror its Gaussian sits at (99 - x, y) and carries (1 - xn, yn, zn).
    xn = (lm3[:, 0] - lm3[:, 0].min()) / np.ptp(lm3[:, 0])
    yn = (lm3[:, 1] - lm3[:, 1].min()) / np.ptp(lm3[:, 1])
    zn = (lm3[:, 2] - lm3[:, 2].min()) / np.ptp(lm3[:, 2])
    d = out["dhm"][0]
    for l in (0, 16, 30, 36, 45, 67):
        x, y = int(lm3[l, 0]), int(lm3[l, 1])
        mx = 99 - x
        np.testing.assert_allclose(d[y, mx], [1 - xn[l], yn[l], zn[l]], atol=1e-6)
        w = math.exp(-0.5)                                    # one pixel to the side
        np.testing.assert_allclose(d[y, mx + 1], w * np.array([1 - xn[l], yn[l], zn[l]]), atol=1e-6)
        w2 = math.exp(-(4 + 9) / 2)                           # offset (dx, dy) = (2, 3)
        np.testing.assert_allclose(d[y + 3, mx - 2], w2 * np.array([1 - xn[l], yn[l], zn[l]]), atol=1e-6)
    # Relation to the unflipped DHM: x channel = w - x at the mirrored pixel, y and z mirrored.
    orig_d = orig["dhm"][0]
    wmap = np.zeros((S, S))
    yy, xx = np.mgrid[0:S, 0:S]
    for l in range(68):
        dd = (xx - lm3[l, 0]) ** 2 + (yy - lm3[l, 1]) ** 2
        inside = (np.abs(xx - lm3[l, 0]) <= 4) & (np.abs(yy - lm3[l, 1]) <= 4)   # the renderer's 4-sigma square
        wmap = np.maximum(wmap, np.where(inside, np.exp(-dd / 2), 0))
    np.testing.assert_allclose(d[:, :, 0], (wmap - orig_d[:, :, 0])[:, ::-1], atol=1e-6)
    np.testing.assert_allclose(d[:, :, 1:], orig_d[:, ::-1, 1:], atol=1e-6)


def test_flip_uint8_dhm_and_errors():
    S = 100
    lm3 = _grid_sample(S)
    batch = {"dhm": schema.quantise(render_dhm(lm3, S, 1.0)[None]), "landmarks_3d": lm3[None].copy()}
    out = HorizontalFlip(p=1.0, sigma=1.0)(batch, np.random.default_rng(0))
    np.testing.assert_array_equal(out["dhm"][0], schema.quantise(render_dhm(mirror_landmarks(lm3, S), S, 1.0)[None])[0])
    with pytest.raises(LoaderError, match="needs the landmarks_3d"):
        HorizontalFlip(p=1.0, sigma=1.0)({"dhm": np.zeros((1, S, S, 3), np.float32)}, np.random.default_rng(0))


def test_flip_in_loader_is_reproducible_across_workers(split_dir):
    ds = ShardDataset(split_dir, fields=["image", "dhm", "landmarks_2d", "landmarks_3d", "name"])
    flip = HorizontalFlip.for_dataset(ds, p=0.5)
    assert flip.sigma == 1.0
    runs = []
    for w in (0, 2):
        with Loader(ds, batch_size=16, seed=9, num_workers=w, transform=flip, mp_context="fork") as ld:
            runs.append([{k: v.copy() for k, v in b.items()} for b in ld])
    _batches_equal(runs[0], runs[1])
    mask = np.concatenate([b["hflip"] for b in runs[0]])
    assert 20 < mask.sum() < 67
    plain = {n: i for i, n in enumerate(ShardDataset(split_dir, fields=["name"]).read_batch(np.arange(87))["name"])}
    cols = all_columns(split_dir)
    b = runs[0][0]
    for j, n in enumerate(b["name"]):
        i = plain[n]
        want = cols["image"][i][:, ::-1] if b["hflip"][j] else cols["image"][i]
        np.testing.assert_array_equal(b["image"][j], want)


def test_direct_blosc_decode_matches_h5py(split_dir, monkeypatch):
    import dhm_data.shards.blosc as blosc

    idx = [5, 86, 41, 0, 41] + list(range(86, -1, -1))
    fast = ShardDataset(split_dir, fields=["dhm"], dhm_dtype="uint8")
    got = fast.read_batch(idx)["dhm"]
    if blosc.blosc_decoder() is None:
        pytest.skip("hdf5plugin's Blosc library cannot be loaded with ctypes here")
    assert fast.reader(0).access("dhm") == "blosc"                     # the direct path was used
    raw = [r for k in range(3) for r in fast.reader(k)._source("dhm").raw]
    assert any(raw) and not all(raw)   # both Blosc frames and chunks Blosc could not shrink (stored as is)
    monkeypatch.setattr(blosc, "_DECODER", False)                      # force the h5py path
    slow = ShardDataset(split_dir, fields=["dhm"], dhm_dtype="uint8")
    want = slow.read_batch(idx)["dhm"]
    assert slow.reader(0).access("dhm") == "hdf5"
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(want, np.rint(all_columns(split_dir)["dhm"][idx] * 255))


# ------------------------------------------------------------------ empty shards, damage, CRC check
def test_empty_shards_first_and_between(tmp_path):
    d = tmp_path / "val"
    d.mkdir()
    cols = [make_columns(5, size=8, seed=1), make_columns(7, size=8, seed=2)]
    write_shard(d / "shard-00000.h5", {}, {"n_samples": 0})
    write_shard(d / "shard-00001.h5", cols[0])
    write_shard(d / "shard-00002.h5", {}, {"n_samples": 0})
    write_shard(d / "shard-00003.h5", cols[1])
    ds = ShardDataset(d, fields=["image", "landmarks_2d", "name"])
    assert len(ds) == 12 and ds.lengths.tolist() == [5, 7]
    assert [p.name for p in ds.paths] == ["shard-00001.h5", "shard-00003.h5"]
    want = np.concatenate([c["landmarks_2d"] for c in cols])
    np.testing.assert_array_equal(ds.read_batch(np.arange(12))["landmarks_2d"], want)
    np.testing.assert_array_equal(ds[7]["image"], cols[1]["image"][2])
    with Loader(ds, batch_size=5, shuffle=True, seed=3, num_workers=2, mp_context="fork") as ld:
        got = [b for b in ld]
    assert [len(b["name"]) for b in got] == [5, 5, 2]
    names = np.concatenate([b["name"] for b in got])
    assert sorted(names.tolist()) == sorted(np.concatenate([c["name"] for c in cols]).tolist())
    with pytest.raises(ShardError, match="hold no samples"):
        ShardDataset([d / "shard-00000.h5", d / "shard-00002.h5"])


def _flip_byte(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x5A
    path.write_bytes(bytes(data))


@pytest.fixture
def damage_dir(tmp_path):
    """Two shards of 6 samples (crop size 24: every DHM chunk a Blosc frame in the
    first, DHMs stored u8q-raw, memory-mapped, in the second)."""
    d = tmp_path / "train"
    d.mkdir()
    cols = [make_columns(6, size=24, seed=k) for k in (0, 1)]
    for k, c in enumerate(cols):
        write_shard(d / f"shard-{k:05d}.h5", c, storage={"dhm": "u8q-raw"} if k else None)
    return d, cols


def _offset(path, field, sample):
    import h5py

    with h5py.File(path, "r") as h:
        ds = h[field]
        return ds.id.get_offset() + sample * int(np.prod(ds.shape[1:])) * ds.dtype.itemsize


@pytest.mark.parametrize("field", ["image", "dhm", "landmarks_2d", "yaw"])
def test_check_crc_names_file_field_sample_and_name(damage_dir, field):
    d, cols = damage_dir
    victim = d / "shard-00001.h5"
    intact = ShardDataset(d, check_crc=True).read_batch(np.arange(12))
    plain = ShardDataset(d).read_batch(np.arange(12))
    for k in plain:
        np.testing.assert_array_equal(intact[k], plain[k], err_msg=k)
    _flip_byte(victim, _offset(victim, field, 4) + 1)          # sample 4 of the second shard = global 10
    fields = ["image", "dhm", "landmarks_2d", "yaw", "name"]
    # without the check the damaged byte is delivered silently (it decodes fine)
    got = ShardDataset(d, fields=fields, dhm_dtype="uint8").read_batch([10])[field][0]
    written = schema.quantise(cols[1]["dhm"][4:5])[0] if field == "dhm" else cols[1][field][4]
    assert got.shape == written.shape and not np.array_equal(got, written)
    ds = ShardDataset(d, fields=fields, check_crc=True)
    ds.read_batch(np.arange(10))                               # the other samples read fine
    with pytest.raises(ShardError) as e:
        ds.read_batch([0, 11, 10, 3])
    msg = str(e.value)
    assert msg.startswith(f"{victim}: field {field!r}: sample 4 {cols[1]['name'][4]!r}: CRC32 mismatch"), msg
    assert "dhm-data verify" in msg


def test_damaged_chunk_header_h5py_fallback_names_the_sample(damage_dir):
    import h5py
    import hdf5plugin  # noqa: F401

    d, cols = damage_dir
    victim = d / "shard-00000.h5"
    with h5py.File(victim, "r") as h:
        off = h["dhm"].id.get_chunk_info(2).byte_offset
    _flip_byte(victim, off + 5)                                # Blosc header: uncompressed size
    ds = ShardDataset(d, fields=["dhm", "name"])
    np.testing.assert_array_equal(ds.read_batch([0, 1, 3, 11])["name"], [cols[0]["name"][i] for i in (0, 1, 3)]
                                  + [cols[1]["name"][5]])
    assert ds.reader(0).access("dhm") == "hdf5"               # the chunk table was refused: h5py reads
    with pytest.raises(ShardError) as e:
        ds.read_batch([5, 2])
    msg = str(e.value)
    assert msg.startswith(f"{victim}: field 'dhm': sample 2 {cols[0]['name'][2]!r}: unreadable through HDF5"), msg
    assert "dhm-data verify" in msg and isinstance(e.value.__cause__, OSError)
    # without "name" among the fields the name is still looked up in the file
    with pytest.raises(ShardError, match=f"sample 2 {cols[0]['name'][2]!r}"):
        ShardDataset(d, fields=["dhm"]).read_batch([2])


def test_check_crc_in_spawned_workers(split_dir):
    ds = ShardDataset(split_dir, fields=["image", "dhm", "name"], check_crc=True)
    ref = list(Loader(ShardDataset(split_dir, fields=["image", "dhm", "name"]), batch_size=32, seed=4))
    with Loader(ds, batch_size=32, seed=4, num_workers=2, mp_context="spawn") as ld:
        _batches_equal(ref, list(ld))


# ------------------------------------------------------------------ kept batches are never overwritten
@pytest.mark.parametrize("workers", [0, 2])
def test_kept_batches_keep_their_values(split_dir, workers):
    """Batches a caller holds (whole, one array of one, or a view of one) keep
    their values across later iterations and epochs, with the default
    (zero-copy) settings, with and without workers."""
    fields = ["image", "dhm", "landmarks_2d", "yaw", "name"]
    ref = ShardDataset(split_dir, fields=fields)
    ds = ShardDataset(split_dir, fields=fields)
    with Loader(ds, batch_size=8, seed=3, num_workers=workers, mp_context="fork" if workers else None) as ld:
        kept, kept_image, kept_view = [], None, None
        for e in range(3):
            ld.set_epoch(e)
            order = ld.batches()
            for b, batch in enumerate(ld):
                if e == 0 and b in (0, 3):
                    kept.append((order[b], batch))                       # the whole dict
                elif e == 0 and b == 5:
                    kept_image = (order[b], batch["image"])               # one array of it
                elif e == 1 and b == 2:
                    kept_view = (order[b], batch["landmarks_2d"][1:, ::-1])  # a view derived from one
        for idx, batch in kept:
            want = ref.read_batch(idx)
            for k in fields:
                np.testing.assert_array_equal(batch[k], want[k], err_msg=k)
        np.testing.assert_array_equal(kept_image[1], ref.read_batch(kept_image[0])["image"])
        np.testing.assert_array_equal(kept_view[1], ref.read_batch(kept_view[0])["landmarks_2d"][1:, ::-1])
        # a caller keeping every batch gets them all intact (fresh memory once the buffers are all held)
        every = list(ld)
        for idx, batch in zip(ld.batches(), every):
            np.testing.assert_array_equal(batch["image"], ref.read_batch(idx)["image"])
            np.testing.assert_array_equal(batch["dhm"], ref.read_batch(idx)["dhm"])


def test_dropped_batches_reuse_their_buffers(split_dir):
    """Zero copy: a batch dropped by the caller lends its buffer to a later
    one; with workers every batch of such a loop arrives in the shared buffer
    (none is sent pickled)."""
    ds = ShardDataset(split_dir, fields=["image", "dhm", "name"])
    ld = Loader(ds, batch_size=8, seed=3)
    addresses = {b["image"].__array_interface__["data"][0] for b in ld}
    assert len(addresses) <= 3 < len(ld)
    with Loader(ds, batch_size=8, seed=3, num_workers=2, mp_context="fork") as ld:
        for _ in range(2):
            for b in ld:
                assert any(b["image"].base is r for r in ld._slots.roots)
                assert any(b["dhm"].base is r for r in ld._slots.roots)
