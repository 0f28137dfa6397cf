"""Tests of data.py on tiny fixtures written in the REAL on-disk formats, plus opt-in checks on ../shared/data."""
import errno
import gzip
import io
import lzma
import os
import pathlib
import subprocess
import sys
import tarfile
import types
import urllib.error

import h5py
import numpy as np
import pytest
import scipy.io

import data

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SLOW = os.environ.get("DISENTANGLE_SLOW_TESTS", "") not in ("", "0")


@pytest.fixture(autouse=True)
def user_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own per-user cache folder (not yet created), so that no Sprites cache ever lands in the
    real ~/.cache, and no data or cache folder set in the environment leaks in."""
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    monkeypatch.delenv(data.CACHE_DIR_ENV, raising=False)
    xdg = tmp_path_factory.mktemp("xdg") / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(xdg))
    return xdg / "disentangle"


def refuse_writes(monkeypatch, *folders, code=errno.EACCES):
    """Make creating folders and files at or under `folders` fail with OSError(code), as on a read-only (EACCES) or
    full (ENOSPC) disk. Patched rather than chmod-ed: tests may run as root, whom permissions do not stop."""
    folders = [pathlib.Path(f).resolve() for f in folders]
    real_open, real_mkdir = os.open, os.mkdir

    def blocked(path):
        path = pathlib.Path(os.fsdecode(path)).resolve()
        return any(path == f or f in path.parents for f in folders)

    def refuse(path):
        raise OSError(code, os.strerror(code), os.fsdecode(path))

    def guarded_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and blocked(path):
            refuse(path)
        return real_open(path, flags, *args, **kwargs)

    def guarded_mkdir(path, *args, **kwargs):
        if blocked(path):
            refuse(path)
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", guarded_open)
    monkeypatch.setattr(os, "mkdir", guarded_mkdir)


def tree(folder):
    """Every path under folder with its size (None for folders), to show that nothing was written there."""
    return {str(p.relative_to(folder)): (p.stat().st_size if p.is_file() else None) for p in folder.rglob("*")}


# ---------------------------------------------------------------------------------------------------------------
# Fixture writers, one per original format
# ---------------------------------------------------------------------------------------------------------------

def sprite_frames(character):
    """Deterministic, compressible (178, 60, 60, 3) uint8 frames that identify character and frame."""
    frames = np.zeros((data.N_FRAMES, 60, 60, 3), np.uint8)
    frames[:, 10:20, 5:15, 0] = character * 17 + 3
    frames[:, 30, :, 1] = np.arange(data.N_FRAMES)[:, None]
    frames[:, 40:42, 3, 2] = 255
    return frames


def write_sprites_mat(path, frames, labels):
    """A MATLAB v7.3-style file: '#refs#' group of float64 datasets, (21, 1) cells of object references."""
    rows = frames.transpose(0, 3, 2, 1).reshape(data.N_FRAMES, 10800).astype(np.float64) / 255.0
    with h5py.File(path, "w", userblock_size=512) as f:
        refs = f.create_group("#refs#")
        cells, start = [], 0
        for a, n in enumerate(data.FRAMES_PER_ANIMATION):
            cells.append(refs.create_dataset(f"s{a}", data=rows[start:start + n], compression="gzip").ref)
            start += n
        f.create_dataset("sprites", data=np.array(cells, dtype=h5py.ref_dtype).reshape(21, 1))
        f.create_dataset("labels", data=np.asarray(labels, np.float64).reshape(7, 1))


def make_sprites(root, monkeypatch, n=6, layout="folder"):
    """n characters in the tarball layout (data/sprites/...), extracted ("folder") or as
    nips2015-analogy-data.tar.gz ("tar"), or as the compact copy ("compact": sprites_imgs_uint8.npy.xz with
    sprite_large_labels.txt and sprites_splits.mat beside it)."""
    monkeypatch.setattr(data, "N_CHARACTERS", n)
    folder = root / "sprites" / "data" / "sprites"
    folder.mkdir(parents=True)
    labels = np.array([[c % 2, c % 4, c % 3, c % 6, 0, 1, c % 2] for c in range(n)])
    for c in range(n):
        write_sprites_mat(folder / f"sprites_{c}.mat", sprite_frames(c), labels[c])
    ids = np.arange(1, n + 1, dtype=np.uint16)
    scipy.io.savemat(folder / "sprites_splits.mat", {"trainidx": ids[None, : n - 2], "validx": ids[None, n - 2:n - 1],
                                                     "testidx": ids[None, n - 1:]})
    if layout == "tar":
        with tarfile.open(root / "sprites" / data.SPRITES_TARBALL, "w:gz") as tar:
            tar.add(root / "sprites" / "data", arcname="data")
        for file in folder.iterdir():
            file.unlink()
    if layout == "compact":
        buffer = io.BytesIO()
        np.save(buffer, np.stack([sprite_frames(c) for c in range(n)]))
        (root / "sprites" / data.SPRITES_COMPACT).write_bytes(lzma.compress(buffer.getvalue(), preset=0))
        np.savetxt(root / "sprites" / "sprite_large_labels.txt", labels, fmt="%d", delimiter=",")
        (folder / "sprites_splits.mat").rename(root / "sprites" / "sprites_splits.mat")
        for file in folder.iterdir():
            file.unlink()
    return labels


# ---------------------------------------------------------------------------------------------------------------
# MNIST
# ---------------------------------------------------------------------------------------------------------------

def test_mnist_reads_idx_files(tmp_path, offline, make_mnist):
    arrays = make_mnist(tmp_path)
    ds = data.load_mnist(tmp_path)
    assert ds.images.shape == (160, 28, 28, 1) and ds.images.dtype == np.uint8
    np.testing.assert_array_equal(ds.images[:120, ..., 0], arrays["train-images-idx3-ubyte.gz"])
    np.testing.assert_array_equal(ds.labels["digit"][120:], arrays["t10k-labels-idx1-ubyte.gz"])
    assert len(ds.splits["train"]) == 120 and ds.splits["test"][0] == 120


def test_truncated_idx_is_a_clear_error(tmp_path, offline, make_mnist):
    make_mnist(tmp_path)
    path = tmp_path / "mnist" / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:-100]))
    with pytest.raises(data.CorruptDataError, match="truncated"):
        data.load_mnist(tmp_path)
    path.write_bytes(path.read_bytes()[:500])  # a cut-off gzip stream
    with pytest.raises(data.CorruptDataError, match="train-images"):
        data.load_mnist(tmp_path)


def test_missing_files_name_what_and_where(tmp_path, offline):
    (tmp_path / "mnist").mkdir()
    with pytest.raises(data.MissingDataError) as error:
        data.load_mnist(tmp_path)
    message = str(error.value)
    for name in data.MNIST_FILES:
        assert name in message
    assert str(tmp_path / "mnist") in message and "--data-dir" in message


def test_missing_data_dir(tmp_path, monkeypatch):
    with pytest.raises(data.MissingDataError, match="does not exist"):
        data.load_dataset("mnist", tmp_path / "nowhere")
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path / "elsewhere"))
    with pytest.raises(data.MissingDataError, match=data.DATA_DIR_ENV):
        data.load_dataset("mnist")


def test_data_dir_that_is_a_file_is_called_a_file(tmp_path, monkeypatch):
    file = tmp_path / "mnist.tar"
    file.write_bytes(b"not a folder")
    with pytest.raises(data.DataError, match="is a file, not a folder") as error:
        data.load_dataset("mnist", file)
    assert "does not exist" not in str(error.value) and "--data-dir" in str(error.value)
    monkeypatch.setenv(data.DATA_DIR_ENV, str(file))
    with pytest.raises(data.DataError, match=f"is a file, not a folder.*\\${data.DATA_DIR_ENV}"):
        data.load_dataset("mnist")


def test_unknown_dataset_name(tmp_path):
    with pytest.raises(data.UnknownDatasetError, match="mnist, sprites, dsprites"):
        data.load_dataset("cifar", tmp_path)


def _serve(files):
    """A stand-in for urllib.request.urlopen serving bytes by file name (or failing for unknown names)."""
    def urlopen(url, timeout=None):
        name = url.rsplit("/", 1)[-1]
        if name not in files:
            raise urllib.error.URLError("Name or service not known")
        return io.BytesIO(files[name])
    return urlopen


def test_download_fetches_and_verifies_mnist(tmp_path, monkeypatch, make_mnist):
    source = tmp_path / "source"
    make_mnist(source)
    files = {p.name: p.read_bytes() for p in (source / "mnist").iterdir()}
    target = tmp_path / "target"
    target.mkdir()
    # The checksums are the canonical MNIST ones, which the fixture cannot match: accept the fixture's own.
    monkeypatch.setattr(data, "MNIST_FILES", {n: __import__("hashlib").md5(gzip.decompress(b)).hexdigest()
                                              for n, b in files.items()})
    monkeypatch.setattr(data.urllib.request, "urlopen", _serve(files))
    ds = data.load_mnist(target)
    assert len(ds.images) == 160
    assert sorted(p.name for p in (target / "mnist").iterdir()) == sorted(files)


def test_download_into_a_read_only_folder_is_one_clear_error(tmp_path, monkeypatch, make_dsprites):
    source = tmp_path / "source"
    make_dsprites(source)
    target = tmp_path / "target"
    target.mkdir()
    monkeypatch.setattr(data.urllib.request, "urlopen",
                        _serve({data.DSPRITES_FILE: (source / "dsprites" / data.DSPRITES_FILE).read_bytes()}))
    refuse_writes(monkeypatch, target)
    with pytest.raises(data.StorageError) as error:
        data.load_dsprites(target)
    message = str(error.value)
    assert str(target / "dsprites") in message and "read-only" in message and "--data-dir" in message
    assert "\n" not in message and error.value.__cause__ is None and error.value.__suppress_context__
    assert tree(target) == {}


def test_download_into_a_full_disk_is_one_clear_error_and_tries_no_other_mirror(tmp_path, monkeypatch,
                                                                                 make_mnist):
    source = tmp_path / "source"
    make_mnist(source)
    served, calls = _serve({p.name: p.read_bytes() for p in (source / "mnist").iterdir()}), []
    monkeypatch.setattr(data.urllib.request, "urlopen", lambda url, timeout=None: calls.append(url) or served(url))

    def disk_full(src, dst, length=0):
        dst.write(src.read(100))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(data.shutil, "copyfileobj", disk_full)
    target = tmp_path / "target"
    target.mkdir()
    with pytest.raises(data.StorageError) as error:
        data.load_mnist(target)
    message = str(error.value)
    assert str(target / "mnist") in message and "full" in message and "--data-dir" in message
    assert "\n" not in message
    assert len(calls) == 1  # the next mirror would fill the same disk
    assert tree(target) == {"mnist": None}  # no partial file


def test_failed_download_keeps_existing_files(tmp_path, monkeypatch, make_mnist):
    make_mnist(tmp_path)
    folder = tmp_path / "mnist"
    (folder / "t10k-images-idx3-ubyte.gz").unlink()
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    # A server that answers with the wrong content: the checksum rejects it and nothing is written.
    monkeypatch.setattr(data.urllib.request, "urlopen", _serve({"t10k-images-idx3-ubyte.gz": gzip.compress(b"junk")}))
    with pytest.raises(data.MissingDataError, match="t10k-images-idx3-ubyte.gz") as error:
        data.load_mnist(tmp_path)
    assert "Download failed" in str(error.value)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # no partial file, nothing changed
    monkeypatch.setattr(data.urllib.request, "urlopen", _serve({}))
    with pytest.raises(data.MissingDataError, match="Name or service not known"):
        data.load_mnist(tmp_path)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


# ---------------------------------------------------------------------------------------------------------------
# dSprites
# ---------------------------------------------------------------------------------------------------------------

def test_dsprites_subset_and_factor_index(tmp_path, offline, make_dsprites):
    imgs, classes = make_dsprites(tmp_path)
    ds = data.load_dataset("dsprites", tmp_path)
    assert ds.images.shape == (len(imgs), 64, 64, 1) and set(np.unique(ds.images)) <= {0, 255}
    assert ds.factor_names == ("shape", "scale", "orientation", "posX", "posY")
    assert ds.factor_sizes == (3, 6, 40, 32, 32) and ds.info["subset"]
    np.testing.assert_array_equal(ds.labels["factors"], classes[:, 1:])
    np.testing.assert_array_equal(ds.labels[ds.class_label], classes[:, 1])
    index = ds.factor_index()
    # Exact lookup finds the row that holds a combination, whatever its position in the file ...
    for row in (0, 7, len(classes) - 1):
        assert index.lookup(classes[row, 1:][None])[0] == row
    # ... and -1 for a combination of the product that the subset lacks.
    present = {tuple(c) for c in classes[:, 1:]}
    absent = next(c for c in np.stack(np.meshgrid([0, 1, 2], [0, 3], [0, 10, 20, 30], [0, 5, 9, 31], [1, 2, 3, 4],
                                                  indexing="ij"), -1).reshape(-1, 5) if tuple(c) not in present)
    assert index.lookup(absent[None])[0] == -1
    rows = index.rows_with(2, 20)
    assert len(rows) and np.all(ds.labels["factors"][rows, 2] == 20)
    drawn = index.sample_with(0, 1, 500, np.random.default_rng(0))
    assert np.all(ds.labels["factors"][drawn, 0] == 1)
    assert set(ds.splits["train"]).isdisjoint(ds.splits["test"])


def test_truncated_npz_is_a_clear_error(tmp_path, offline, make_dsprites):
    make_dsprites(tmp_path)
    path = tmp_path / "dsprites" / data.DSPRITES_FILE
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(data.CorruptDataError, match="truncated"):
        data.load_dsprites(tmp_path)


# ---------------------------------------------------------------------------------------------------------------
# 2D Sprites
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["folder", "tar", "compact"])
def test_sprites_from_original_layout(tmp_path, monkeypatch, offline, layout):
    labels = make_sprites(tmp_path, monkeypatch, layout=layout)
    ds = data.load_sprites(tmp_path, workers=1)
    assert ds.images.shape == (6 * 178, 60, 60, 3)
    for c in (0, 5):
        np.testing.assert_array_equal(ds.images[c * 178:(c + 1) * 178], sprite_frames(c))
    np.testing.assert_array_equal(ds.labels["attributes"][::178], labels)
    # Official split (1-based ids in the file), hurt frames dropped by default.
    assert np.array_equal(np.unique(ds.labels["identity"][ds.splits["train"]]), [0, 1, 2, 3])
    assert np.array_equal(np.unique(ds.labels["identity"][ds.splits["test"]]), [5])
    assert len(ds.splits["all"]) == 6 * 172 and not np.any(ds.labels["action"][ds.splits["all"]] == 5)
    # Per-frame labels follow the animation table: frame 60 is the first walk frame facing up.
    assert (ds.labels["action"][60], ds.labels["direction"][60], ds.labels["frame"][60]) == (2, 0, 0)
    assert ds.labels["direction"][177] == -1 and ds.labels["frame"][177] == 5
    with_hurt = data.load_sprites(tmp_path, include_hurt=True)
    assert len(with_hurt.splits["all"]) == 6 * 178


def test_sprites_cache_is_reused(tmp_path, monkeypatch, offline, capsys):
    make_sprites(tmp_path, monkeypatch)
    data.load_sprites(tmp_path, workers=1)
    assert "converting" in capsys.readouterr().err
    cache = data.sprites_cache_dir(tmp_path) / "sprites_frames_uint8.npy"
    stamp = cache.stat().st_mtime_ns
    ds = data.load_sprites(tmp_path)
    assert "converting" not in capsys.readouterr().err and cache.stat().st_mtime_ns == stamp
    assert isinstance(ds.images.base, np.memmap) or isinstance(ds.images, np.memmap)


def test_truncated_tarball_leaves_no_cache(tmp_path, monkeypatch, offline):
    make_sprites(tmp_path, monkeypatch, layout="tar")
    tarball = tmp_path / "sprites" / data.SPRITES_TARBALL
    tarball.write_bytes(tarball.read_bytes()[: tarball.stat().st_size // 2])
    size = tarball.stat().st_size
    with pytest.raises(data.CorruptDataError, match="truncated"):
        data.load_sprites(tmp_path)
    cache = data.sprites_cache_dir(tmp_path)
    assert not any(cache.iterdir())  # no partial frames file, no metadata marking a cache as complete
    assert tarball.stat().st_size == size


def test_missing_sprites_names_the_expected_files(tmp_path, offline):
    (tmp_path / "sprites").mkdir()
    with pytest.raises(data.MissingDataError) as error:
        data.load_sprites(tmp_path)
    for expected in ("sprites_0.mat", "sprites_splits.mat", data.SPRITES_TARBALL, data.SPRITES_COMPACT):
        assert expected in str(error.value)


def test_corrupt_mat_file_is_named(tmp_path, monkeypatch, offline):
    make_sprites(tmp_path, monkeypatch)
    bad = tmp_path / "sprites" / "data" / "sprites" / "sprites_3.mat"
    bad.write_bytes(bad.read_bytes()[:3000])
    with pytest.raises(data.CorruptDataError, match="sprites_3.mat"):
        data.load_sprites(tmp_path, workers=1)


def test_sprites_cache_never_goes_into_a_named_data_dir(tmp_path, monkeypatch, offline, user_cache):
    # As root every folder is writable: the cache must still not land in the user's data folder.
    make_sprites(tmp_path, monkeypatch)
    before = tree(tmp_path)
    ds = data.load_sprites(tmp_path, workers=1)
    assert tree(tmp_path) == before
    (meta,) = user_cache.glob("sprites-cache/*/sprites_meta.npz")
    assert ds.info["source"] == str(meta.parent) == str(data.sprites_cache_dir(tmp_path))
    # The same for a data folder from the environment, and $DISENTANGLE_CACHE_DIR moves the cache.
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path))
    monkeypatch.setenv(data.CACHE_DIR_ENV, str(tmp_path.parent / "elsewhere"))
    ds = data.load_sprites(workers=1)
    assert tree(tmp_path) == before
    assert pathlib.Path(ds.info["source"]).parent == tmp_path.parent / "elsewhere" / "sprites-cache"


def test_asking_for_the_sprites_cache_creates_nothing(tmp_path, monkeypatch, user_cache):
    (tmp_path / "sprites").mkdir()
    before = tree(tmp_path)
    assert data.sprites_cache_dir(tmp_path).parent == user_cache / "sprites-cache"
    assert data.sprites_cache_dir() == user_cache / "sprites" / "cache"  # the default data dir is the cache dir
    assert tree(tmp_path) == before and not user_cache.parent.exists()


def test_an_old_sprites_cache_in_the_data_dir_is_still_read(tmp_path, monkeypatch, offline, capsys, user_cache):
    make_sprites(tmp_path, monkeypatch)
    old = tmp_path / "sprites" / "cache"
    data.convert_sprites("mat", tmp_path / "sprites" / "data" / "sprites", old, workers=1)
    capsys.readouterr()
    ds = data.load_sprites(tmp_path)
    assert ds.info["source"] == str(old) and "converting" not in capsys.readouterr().err
    assert not user_cache.parent.exists()
    # An old cache that is not valid (here: incomplete) is neither used nor rebuilt in the data folder.
    (old / "sprites_meta.npz").unlink()
    ds = data.load_sprites(tmp_path, workers=1)
    assert pathlib.Path(ds.info["source"]).parent == user_cache / "sprites-cache"
    assert sorted(p.name for p in old.iterdir()) == ["sprites_frames_uint8.npy"]


def test_the_default_data_dir_keeps_its_sprites_cache_inside(monkeypatch, offline, user_cache):
    make_sprites(user_cache, monkeypatch)
    ds = data.load_sprites(workers=1)
    assert ds.info["source"] == str(user_cache / "sprites" / "cache")
    assert not (user_cache / "sprites-cache").exists()


def _usage(free):
    return types.SimpleNamespace(total=10**12, used=10**12 - free, free=free)


def _compact_disk_full(src, dst, length=0):
    dst.write(src.read(1000))
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _fallocate_disk_full(fd, offset, length):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("layout, patch", [
    ("compact", ("shutil", "copyfileobj", _compact_disk_full)),  # the decompressed copy's writes
    ("tar", ("os", "posix_fallocate", _fallocate_disk_full)),  # the memory-mapped file's blocks
    ("folder", ("shutil", "disk_usage", lambda path: _usage(free=5000))),  # the check before converting
])
def test_a_full_disk_during_sprites_conversion_says_so(tmp_path, monkeypatch, offline, layout, patch):
    make_sprites(tmp_path, monkeypatch, layout=layout)
    cache = data.sprites_cache_dir(tmp_path)
    module, name, replacement = patch
    monkeypatch.setattr(getattr(data, module), name, replacement)
    with pytest.raises(data.StorageError) as error:
        data.load_sprites(tmp_path, workers=1)
    message = str(error.value)
    assert "full" in message and str(cache) in message and data.CACHE_DIR_ENV in message
    assert "truncated" not in message and "\n" not in message
    assert f"{6 * 178 * 60 * 60 * 3:,} bytes" in message  # the frames array's size, from its shape
    assert not any(cache.iterdir())  # no partial frames, no temporary files, no metadata


def test_the_full_disk_message_gives_the_real_cache_size(tmp_path, monkeypatch):
    monkeypatch.setattr(data.shutil, "disk_usage", lambda path: _usage(free=10**8))
    with pytest.raises(data.StorageError, match=r"needs about 1\.3 GB there \(1,291,852,800 bytes\)"):
        data.convert_sprites("tar", tmp_path / data.SPRITES_TARBALL, tmp_path / "cache")


def test_read_only_data_and_cache_folders_give_one_clear_error(tmp_path, monkeypatch, offline, capsys, user_cache):
    make_sprites(tmp_path, monkeypatch)
    user_cache.mkdir(parents=True)
    refuse_writes(monkeypatch, tmp_path, user_cache)
    with pytest.raises(data.StorageError) as error:
        data.load_sprites(tmp_path, workers=1)
    message = str(error.value)
    assert str(data.sprites_cache_dir(tmp_path)) in message and "read-only" in message
    assert data.CACHE_DIR_ENV in message and "1.3 GB" not in message  # the size of THIS (6-character) data
    assert error.value.__cause__ is None and error.value.__suppress_context__  # no chained tracebacks
    # On the command line: one line, exit status 2.
    with pytest.raises(SystemExit) as exit_status:
        data.main(["--dataset", "sprites", "--data-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert exit_status.value.code == 2 and err.count("\n") == 1 and err.startswith("error: Cannot write")
    # Pointing the cache elsewhere, as the message says, works.
    monkeypatch.setenv(data.CACHE_DIR_ENV, str(tmp_path.parent / "writable"))
    assert data.load_sprites(tmp_path, workers=1).images.shape[0] == 6 * 178


def test_two_first_time_conversions_at_once_both_succeed(tmp_path, monkeypatch, offline):
    make_sprites(tmp_path, monkeypatch, layout="tar")
    tarball, cache = tmp_path / "sprites" / data.SPRITES_TARBALL, data.sprites_cache_dir(tmp_path)
    original, started = data.read_sprites_mat, []

    def racing(source):
        # While the first conversion has its frames file open, a second one runs from start to finish.
        if not started:
            started.append(True)
            data.convert_sprites("tar", tarball, cache)
        return original(source)

    monkeypatch.setattr(data, "read_sprites_mat", racing)
    data.convert_sprites("tar", tarball, cache)
    assert sorted(p.name for p in cache.iterdir()) == ["sprites_frames_uint8.npy", "sprites_meta.npz"]
    frames, _, _ = data._read_sprites_cache(cache)
    np.testing.assert_array_equal(frames[5], sprite_frames(5))


def test_metadata_that_does_not_fit_leaves_no_cache(tmp_path, monkeypatch, offline):
    make_sprites(tmp_path, monkeypatch)
    cache = data.sprites_cache_dir(tmp_path)

    def savez(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(data.np, "savez", savez)
    with pytest.raises(data.StorageError, match="full"):
        data.load_sprites(tmp_path, workers=1)
    assert not any(cache.iterdir())  # neither the frames nor a temporary file: nothing looks like a cache


# ---------------------------------------------------------------------------------------------------------------
# Pair and group samplers
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture
def mnist(tmp_path, offline, make_mnist):
    make_mnist(tmp_path, n_train=300)
    return data.load_mnist(tmp_path)


def _epoch(pipeline):
    return [{k: v.numpy() for k, v in batch.items()} for batch in pipeline]


def test_same_class_pairs(mnist):
    pipeline = data.same_class_pairs(mnist, "train", batch_size=32, seed=1)
    first, second = _epoch(pipeline), _epoch(pipeline)
    assert len(first) == 300 // 32
    batch = first[0]
    assert batch["image_a"].shape == (32, 28, 28, 1) and batch["image_a"].dtype == np.float32
    assert 0.0 <= batch["image_b"].min() and batch["image_b"].max() <= 1.0
    np.testing.assert_allclose(batch["image_a"][..., 0], mnist.images[batch["index_a"], ..., 0] / 255.0)
    for epoch in (first, second):
        a = np.concatenate([b["index_a"] for b in epoch])
        b = np.concatenate([b["index_b"] for b in epoch])
        assert np.all(mnist.labels["digit"][a] == mnist.labels["digit"][b])  # same class
        assert np.all(a != b)  # never the image itself
        assert len(np.unique(a)) == len(a)  # every anchor once per epoch
    # Partners (and order) are drawn afresh each epoch, not frozen after the first.
    anchors1 = np.concatenate([b["index_a"] for b in first])
    partner1 = dict(zip(anchors1, np.concatenate([b["index_b"] for b in first])))
    anchors2 = np.concatenate([b["index_a"] for b in second])
    partner2 = dict(zip(anchors2, np.concatenate([b["index_b"] for b in second])))
    shared = set(partner1) & set(partner2)
    assert sum(partner1[k] != partner2[k] for k in shared) > 0.8 * len(shared)
    assert not np.array_equal(anchors1, anchors2)


def test_pairs_are_deterministic_under_a_seed(mnist):
    one = _epoch(data.same_class_pairs(mnist, "train", 32, seed=7))
    two = _epoch(data.same_class_pairs(mnist, "train", 32, seed=7))
    other = _epoch(data.same_class_pairs(mnist, "train", 32, seed=8))
    assert all(np.array_equal(x["index_b"], y["index_b"]) for x, y in zip(one, two))
    assert not all(np.array_equal(x["index_b"], y["index_b"]) for x, y in zip(one, other))


@pytest.mark.parametrize("pipeline", [data.same_class_pairs, data.different_class_pairs])
def test_a_resumed_pipeline_continues_with_the_next_epochs_pairs(mnist, pipeline):
    fresh = pipeline(mnist, "train", 32, seed=5)
    epochs = [_epoch(fresh) for _ in range(3)]
    resumed = pipeline(mnist, "train", 32, seed=5, first_epoch=2)
    assert all(np.array_equal(x["index_b"], y["index_b"]) for x, y in zip(_epoch(resumed), epochs[2]))
    assert not all(np.array_equal(x["index_b"], y["index_b"]) for x, y in zip(epochs[0], epochs[2]))


def test_different_class_pairs(mnist):
    epoch = _epoch(data.different_class_pairs(mnist, "train", 32, seed=0))
    a = np.concatenate([b["index_a"] for b in epoch])
    b = np.concatenate([b["index_b"] for b in epoch])
    assert np.all(mnist.labels["digit"][a] != mnist.labels["digit"][b])
    assert len(np.unique(mnist.labels["digit"][b])) == 10  # partners cover every other class


def test_different_identity_pairs_skip_weapon_twins(tmp_path, monkeypatch, offline):
    make_sprites(tmp_path, monkeypatch)
    ds = data.load_sprites(tmp_path, workers=1)
    epoch = _epoch(data.different_class_pairs(ds, "train", 16, seed=0))
    ida = np.concatenate([b["label_a"] for b in epoch])
    idb = np.concatenate([b["label_b"] for b in epoch])
    assert np.all(ida // 2 != idb // 2)  # train ids 0-3: 0 pairs only with 2 or 3, never with its twin 1


def test_class_groups(mnist):
    epoch = _epoch(data.class_groups(mnist, "train", groups=4, group_size=5, seed=0))
    assert epoch[0]["images"].shape == (4, 5, 28, 28, 1) and epoch[0]["images"].dtype == np.float32
    indices = np.concatenate([b["indices"] for b in epoch])
    digits = mnist.labels["digit"][indices]
    assert np.all(digits == digits[:, :1])  # each group shares one class
    assert len(np.unique(indices)) == indices.size  # distinct members, each image at most once per epoch
    again = _epoch(data.class_groups(mnist, "train", groups=4, group_size=5, seed=0))
    assert np.array_equal(indices, np.concatenate([b["indices"] for b in again]))


def test_images_pipeline_keeps_split_order(mnist):
    batches = _epoch(data.images(mnist, "test", batch_size=16))
    indices = np.concatenate([b["index"] for b in batches])
    np.testing.assert_array_equal(indices, mnist.splits["test"])
    assert batches[-1]["image"].shape[0] == 40 % 16


# ---------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------

def _run(*args, env=None):
    return subprocess.run([sys.executable, str(ROOT / "data.py"), *args], capture_output=True, text=True,
                          env={**os.environ, data.OFFLINE_ENV: "1", **(env or {})}, timeout=120)


def test_cli_summary_and_errors(tmp_path, make_mnist):
    make_mnist(tmp_path)
    result = _run("--dataset", "mnist", "--data-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "160 images of (28, 28, 1)" in result.stdout and "split test: 40 images" in result.stdout
    result = _run("--dataset", "cifar")
    assert result.returncode == 2 and "invalid choice" in result.stderr
    result = _run("--dataset", "dsprites", "--data-dir", str(tmp_path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert data.DSPRITES_FILE in result.stderr


# ---------------------------------------------------------------------------------------------------------------
# The real data in ../shared/data (skipped where it is absent)
# ---------------------------------------------------------------------------------------------------------------

needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is not here")


@needs_shared
def test_real_mnist(offline):
    ds = data.load_mnist(SHARED)
    assert ds.images.shape == (70000, 28, 28, 1)
    assert np.bincount(ds.labels["digit"][ds.splits["test"]]).tolist() == [980, 1135, 1032, 1010, 982, 892, 958,
                                                                           1028, 974, 1009]


@needs_shared
def test_real_dsprites_subset(offline):
    ds = data.load_dsprites(SHARED)
    assert ds.images.shape == (64834, 64, 64, 1)
    assert np.bincount(ds.labels["shape"]).tolist() == [21582, 21564, 21688]
    c = ds.labels["factors"]
    assert ((c[:, 2] % 4 == 0) & (c[:, 3] % 2 == 0) & (c[:, 4] % 2 == 0)).sum() == 46080
    index = ds.factor_index()
    assert np.all(index.lookup(c[:1000]) == np.arange(1000))


@needs_shared
@pytest.mark.skipif(not SLOW, reason="set DISENTANGLE_SLOW_TESTS=1 (converts 1.3 GB of real Sprites)")
def test_real_sprites(tmp_path, monkeypatch, offline):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # the read-only shared copy puts its cache here
    ds = data.load_sprites(SHARED)
    assert ds.images.shape == (672 * 178, 60, 60, 3)
    assert [len(np.unique(ds.labels["identity"][ds.splits[s]])) for s in ("train", "val", "test")] == [500, 72, 100]
    assert len(ds.splits["all"]) == 672 * 172
    assert np.all(ds.images[ds.labels["animation"] == 20][:, 55:, :, :] == 255)  # the "hurt" artefact
