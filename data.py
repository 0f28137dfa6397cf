"""Real datasets for disentanglement: MNIST, the 2D Sprites of Reed et al. (2015) and dSprites.

Every loader reads the ORIGINAL on-disk format and returns a `Dataset`: uint8 images (N, H, W, C) in 0..255,
integer labels per row, and named splits as row-index arrays. On top of that come the samplers the models need,
as `tf.data` pipelines yielding dicts of float32 images in [0, 1]:

    same_class_pairs(ds, "train", batch_size=64, seed=0)      # {image_a, image_b, label_a, label_b, index_a, index_b}
    different_class_pairs(ds, "train", batch_size=64, seed=0) # same keys, classes guaranteed to differ
    class_groups(ds, "train", groups=32, group_size=8)         # {images (G, k, H, W, C), labels (G, k), indices (G, k)}
    images(ds, "test", batch_size=256, shuffle=False)          # {image, label, index}

"Class" is the digit on MNIST, the character identity on Sprites and one chosen factor (default: shape) on dSprites.
Partners and groups are drawn afresh every epoch (the public PyTorch references wrap their loader in
`itertools.cycle`, which freezes the first epoch's pairs; we deliberately do not).

A `Dataset` also tells an evaluation what it needs to know about the data: the probe targets (`label_columns`), the
ones the class fixes (`specified_targets`), the label the splits keep apart (`split_label`), the t-SNE colourings
and the labels saved with the codes.

Data directory: `--data-dir DIR`, else $DISENTANGLE_DATA_DIR, else ~/.cache/disentangle (or $XDG_CACHE_HOME).
Inside it: `mnist/` (the four idx .gz files), `dsprites/` (the original npz) and `sprites/` (the extracted
`nips2015-analogy-data` folder, its tarball, or the compact `sprites_imgs_uint8.npy.xz` copy). Missing files are
downloaded there where a public source exists; nothing already there is ever overwritten by a failed download or
conversion (everything is written to a unique temporary name and renamed when complete).

Derived files (the 1.3 GB Sprites cache) never go into a data directory the user named, which may be a shared or
read-only copy (and as root every write "succeeds"): they go to the cache directory, $DISENTANGLE_CACHE_DIR, else
~/.cache/disentangle, in `sprites-cache/<key of the data folder>/`. Only when the data directory IS the cache
directory (no --data-dir, no $DISENTANGLE_DATA_DIR) does the cache sit beside the data, in `sprites/cache/`; a
valid cache already there from older versions is still read, whatever the data directory. A full or read-only
folder is reported as such (`StorageError`), with the space needed and the setting that moves the files elsewhere.

Command line:  python data.py --dataset sprites [--data-dir DIR] [--bench]
"""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import errno
import gzip
import hashlib
import io
import lzma
import os
import pathlib
import re
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.request
import zipfile
import zlib

import numpy as np

DATASETS = ("mnist", "sprites", "dsprites")
# Per dataset, the targets that colour the t-SNE plots of the codes and the labels saved with the codes.
TSNE_COLOURINGS = {"mnist": ("digit",), "sprites": ("body", "hair", "action", "direction"),
                   "dsprites": ("shape", "scale", "posX")}
SAVED_LABELS = {"mnist": ("digit",), "sprites": ("identity", "attributes", "action", "direction", "frame"),
                "dsprites": ("factors",)}
DATA_DIR_ENV = "DISENTANGLE_DATA_DIR"
CACHE_DIR_ENV = "DISENTANGLE_CACHE_DIR"  # where derived files (the Sprites cache) go; default default_data_dir()
OFFLINE_ENV = "DISENTANGLE_OFFLINE"  # set to 1 to never try a download


class DataError(Exception):
    """A problem with the data on disk, explained in one paragraph that says how to fix it."""


class MissingDataError(DataError, FileNotFoundError):
    pass


class CorruptDataError(DataError, ValueError):
    pass


class UnknownDatasetError(DataError, ValueError):
    pass


class StorageError(DataError):
    """A folder that data must be written to is full or read-only. Not an OSError on purpose: the loaders catch
    OSError to try the next mirror or to call a source file truncated, and neither helps when the disk is the cause.
    """


@dataclasses.dataclass
class Dataset:
    """A whole dataset in memory (or memory-mapped), with splits as row-index arrays."""

    name: str
    images: np.ndarray  # (N, H, W, C) uint8, 0..255; read-only, possibly a memory map.
    labels: dict  # label name -> per-row array, (N,) int or (N, K) for multi-column labels.
    splits: dict  # split name -> sorted int64 row indices.
    class_label: str  # The label that defines "same class" for pairs and groups.
    factor_names: tuple = ()  # Ground-truth factors (dSprites), the columns of labels["factors"].
    factor_sizes: tuple = ()
    info: dict = dataclasses.field(default_factory=dict)  # Value names, source files, notes.

    @property
    def image_shape(self):
        return tuple(self.images.shape[1:])

    def rows(self, split):
        if split not in self.splits:
            raise ValueError(f"{self.name} has no split {split!r}; it has {', '.join(self.splits)}")
        return self.splits[split]

    def factor_index(self, split="all"):
        """Conditional sampling over the rows that exist (see `FactorIndex`); dSprites only."""
        if not self.factor_names:
            raise ValueError(f"{self.name} has no ground-truth factors")
        rows = self.rows(split)
        return FactorIndex(self.labels["factors"][rows], self.factor_sizes, rows)

    # What an evaluation needs to know about the dataset (docs/evaluation.md Sec. 1-2). It asks these methods, so
    # that a new dataset is described here, beside its loader, and nowhere else.

    def label_columns(self):
        """The probe targets as name -> per-row integer labels over the whole dataset.

        MNIST: the digit. Sprites: the 7 attributes (ATTRIBUTES), action, direction and identity. dSprites: each
        ground-truth factor."""
        if self.name == "mnist":
            return {"digit": self.labels["digit"]}
        if self.name == "sprites":
            columns = {name: self.labels["attributes"][:, k] for k, name in enumerate(ATTRIBUTES)}
            columns.update(action=self.labels["action"], direction=self.labels["direction"],
                           identity=self.labels["identity"])
            return columns
        return {name: self.labels["factors"][:, k] for k, name in enumerate(self.factor_names)}

    def specified_targets(self):
        """The targets that only the specified code s should carry: what two images of the same class share.

        The class label itself, and on Sprites also the 7 attributes, which the identity fixes (they come first:
        the first target's probe split is the one the predictor networks use)."""
        if self.name == "sprites":
            return list(ATTRIBUTES) + [self.class_label]
        return [self.class_label]

    def split_label(self):
        """The label whose classes the splits keep apart (Sprites: identity, by the official identity split), or
        None where every split holds every class."""
        return "identity" if self.name == "sprites" else None

    def tsne_colourings(self):
        """The targets (`label_columns` names) that colour the t-SNE plots of the codes."""
        return list(TSNE_COLOURINGS[self.name])

    def saved_labels(self):
        """The label arrays written beside the codes (codes.npz), so that other tools can score the codes."""
        return list(SAVED_LABELS[self.name])


# ----------------------------------------------------------------------------------------------------------------
# Data directory, downloads and safe writes
# ----------------------------------------------------------------------------------------------------------------

def default_data_dir():
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(cache) / "disentangle"


def cache_root():
    """Where derived files go: $DISENTANGLE_CACHE_DIR, else the per-user cache folder (default_data_dir()).

    Never a data directory the user passed: that may be a shared copy, and a write bit (or being root, as in every
    container) says nothing about whether its owner wants 1.3 GB of cache in it. Not created here."""
    value = os.environ.get(CACHE_DIR_ENV)
    return pathlib.Path(value).expanduser() if value else default_data_dir()


def resolve_data_dir(data_dir=None):
    """--data-dir, else $DISENTANGLE_DATA_DIR, else the per-user cache folder.

    Nothing is created: asking where the data are must not leave folders behind (a download creates the folder
    it writes into)."""
    for value, origin in ((data_dir, "--data-dir"), (os.environ.get(DATA_DIR_ENV), f"${DATA_DIR_ENV}")):
        if value:
            path = pathlib.Path(value).expanduser()
            if path.exists() and not path.is_dir():
                raise DataError(
                    f"The data directory {path} (from {origin}) is a file, not a folder. Point {origin} at the "
                    f"folder that holds mnist/, sprites/ and dsprites/ (perhaps {path.parent}).")
            if not path.is_dir():
                raise MissingDataError(
                    f"The data directory {path} (from {origin}) does not exist. Create it, or point {origin} at the "
                    f"folder that holds mnist/, sprites/ and dsprites/.")
            return path
    return default_data_dir()


def _downloads_allowed(download):
    return download and os.environ.get(OFFLINE_ENV, "") in ("", "0")


_NO_ROOM = {errno.ENOSPC, errno.EDQUOT}
_NO_WRITE = {errno.EACCES, errno.EPERM, errno.EROFS}


def _human_size(n):
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n:,} bytes"


def _storage_error(error, folder, what, fix, needed=None):
    """The StorageError that explains `error` when it says `folder` is full or read-only, else None.

    Only errors from creating and writing files may be passed here: a source that cannot be read also fails with
    EACCES, and that is no reason to blame the folder being written."""
    code = getattr(error, "errno", None)
    if code in _NO_ROOM:
        size = f" {what[0].upper() + what[1:]} needs about {_human_size(needed)} there ({needed:,} bytes)." \
            if needed else ""
        return StorageError(f"The disk holding {folder} is full ({error.strerror}): cannot write {what}.{size} Free "
                            f"space there, or {fix}.")
    if code in _NO_WRITE:
        return StorageError(f"Cannot write {what} into {folder}: the folder is read-only ({error.strerror}). "
                            f"{fix[0].upper() + fix[1:]}.")
    return None


def _check_free_space(folder, needed):
    """Fail early (ENOSPC) when the file system holding folder has less than `needed` bytes free, rather than after
    minutes of conversion; fallocate and the writes themselves still catch quotas and races."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    if free < needed:
        raise OSError(errno.ENOSPC, f"only {_human_size(free)} free")


def _temporary_file(folder, name):
    """A new empty file .{name}.XXXXXXXX.partial in folder, unique so that two processes never share one, with the
    permissions a plain open() gives (mkstemp's 0600 would hide a shared download or cache from the other users).
    Returns (fd, path)."""
    fd, path = tempfile.mkstemp(prefix=f".{name}.", suffix=".partial", dir=folder)
    umask = os.umask(0o077)  # reading the umask means setting it; meanwhile other threads get stricter, not looser
    os.umask(umask)
    try:
        os.fchmod(fd, 0o666 & ~umask)
    except OSError:
        pass  # a file system without modes (vfat, some mounts): the file stays as mkstemp made it
    return fd, pathlib.Path(path)


def _download(url, dest, validate=None):
    """Fetch url into dest through a uniquely named temporary file; dest only appears once complete and valid.

    A folder that is read-only or full raises StorageError, which names the folder and the fix; any other failure
    (network, server, validation) propagates as it is, for the caller to try the next mirror."""
    dest = pathlib.Path(dest)
    fix = (f"pass --data-dir DIR (or set ${DATA_DIR_ENV}) to a writable folder with room, where {dest.name} goes "
           f"under {dest.parent.name}/ (or put it there by hand)")

    def storage_error(error):
        return _storage_error(error, dest.parent, f"the download {dest.name}", fix)

    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _temporary_file(dest.parent, dest.name)
    except OSError as error:
        problem = storage_error(error)
        if problem is None:
            raise
        raise problem from None
    try:
        with os.fdopen(fd, "wb") as out:
            print(f"downloading {url} -> {dest}", file=sys.stderr, flush=True)
            with urllib.request.urlopen(url, timeout=60) as response:
                shutil.copyfileobj(response, out, length=1 << 20)
        if validate is not None:
            validate(tmp)
        os.replace(tmp, dest)
    except OSError as error:
        # urlopen wraps network failures in URLError (errno None); a full or read-only disk keeps its errno.
        problem = storage_error(error)
        if problem is None:
            raise
        raise problem from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _fetch_missing(files, folder, urls, what, hint, download, validate=None):
    """Make sure every file in `files` is in `folder`, downloading from `urls` (name -> url list) if allowed.

    A full or read-only folder stops at once with its StorageError: another mirror would fail the same way."""
    missing = [f for f in files if not (folder / f).is_file()]
    reasons = []
    if missing and _downloads_allowed(download):
        for name in list(missing):
            for url in urls.get(name, ()):
                try:
                    _download(url, folder / name, validate=(lambda p, n=name: validate(p, n)) if validate else None)
                    missing.remove(name)
                    break
                except StorageError:
                    raise
                except (OSError, ValueError, DataError) as error:  # URLError is an OSError.
                    reasons.append(f"{url}: {error}")
    if missing:
        why = f" Download failed ({'; '.join(reasons[:2])})." if reasons else (
            " Downloads are switched off." if not _downloads_allowed(download) else "")
        raise MissingDataError(
            f"{what} not found: expected {', '.join(missing)} in {folder}.{why} {hint} Or pass --data-dir DIR (or set "
            f"${DATA_DIR_ENV}) to a folder that has them under {folder.name}/.")
    return [folder / f for f in files]


# ----------------------------------------------------------------------------------------------------------------
# MNIST: the four original idx files (LeCun et al. 1998)
# ----------------------------------------------------------------------------------------------------------------

MNIST_FILES = {  # file -> MD5 of the uncompressed content (mirrors recompress, so the .gz bytes differ)
    "train-images-idx3-ubyte.gz": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte.gz": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte.gz": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte.gz": "27ae3e4e09519cfbb04c329615203637",
}
MNIST_MIRRORS = ("https://storage.googleapis.com/cvdf-datasets/mnist/", "https://ossci-datasets.s3.amazonaws.com/mnist/")


def read_idx(path):
    """Parse one (gzipped) idx file: big-endian magic (0, 0, dtype 0x08, ndim), ndim int32 sizes, uint8 data."""
    try:
        with (gzip.open(path, "rb") if str(path).endswith(".gz") else open(path, "rb")) as f:
            raw = f.read()
    except (OSError, EOFError) as error:
        raise CorruptDataError(f"{path} is not a readable idx file ({error}). Delete it and download it again.")
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or not 1 <= raw[3] <= 4:
        raise CorruptDataError(f"{path} does not start with an idx uint8 magic number; it is not an MNIST idx file.")
    ndim = raw[3]
    shape = tuple(int(n) for n in np.frombuffer(raw, ">i4", ndim, 4))
    expected = 4 + 4 * ndim + int(np.prod(shape))
    if len(raw) != expected:
        raise CorruptDataError(
            f"{path} is truncated or padded: its header announces shape {shape} ({expected} bytes) but it holds "
            f"{len(raw)} bytes. Delete it and download it again.")
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _check_mnist_md5(path, name):
    with gzip.open(path, "rb") as f:
        digest = hashlib.md5(f.read()).hexdigest()
    if digest != MNIST_FILES[name]:
        raise CorruptDataError(f"downloaded {name} has content MD5 {digest}, expected {MNIST_FILES[name]}")


def load_mnist(data_dir=None, download=True):
    folder = resolve_data_dir(data_dir) / "mnist"
    urls = {name: [mirror + name for mirror in MNIST_MIRRORS] for name in MNIST_FILES}
    _fetch_missing(list(MNIST_FILES), folder, urls, "MNIST", "The four idx files are at "
                           "http://yann.lecun.com/exdb/mnist/.", download, validate=_check_mnist_md5)
    x_train, y_train, x_test, y_test = (read_idx(folder / name) for name in (
        "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz"))
    if len(x_train) != len(y_train) or len(x_test) != len(y_test):
        raise CorruptDataError(f"MNIST images and labels in {folder} have different lengths; the files do not belong "
                               f"together.")
    images = np.concatenate([x_train, x_test])[..., None]
    n_train = len(x_train)
    return Dataset(
        name="mnist", images=images, labels={"digit": np.concatenate([y_train, y_test]).astype(np.int64)},
        splits={"train": np.arange(n_train), "test": np.arange(n_train, len(images)), "all": np.arange(len(images))},
        class_label="digit", info={"source": str(folder), "digit_names": [str(d) for d in range(10)]})


# ----------------------------------------------------------------------------------------------------------------
# dSprites (Matthey et al. 2017): the original npz, possibly a SUBSET of the 737,280-image product
# ----------------------------------------------------------------------------------------------------------------

DSPRITES_FILE = "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"
DSPRITES_URL = "https://github.com/google-deepmind/dsprites-dataset/raw/master/" + DSPRITES_FILE
DSPRITES_FACTORS = ("shape", "scale", "orientation", "posX", "posY")  # colour (constant) dropped


def _read_dsprites(path):
    try:
        with np.load(path, allow_pickle=True, encoding="latin1") as z:
            missing = {"imgs", "latents_classes", "latents_values", "metadata"} - set(z.files)
            if missing:
                raise CorruptDataError(f"{path} lacks the keys {sorted(missing)}; it is not the dSprites npz.")
            imgs, classes, values = z["imgs"], z["latents_classes"], z["latents_values"]
            metadata = z["metadata"][()]
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as error:
        if isinstance(error, DataError):
            raise
        raise CorruptDataError(f"{path} cannot be read as an npz file ({error}); it is probably truncated. Delete it "
                               f"and download it again from {DSPRITES_URL}.")
    if imgs.shape[1:] != (64, 64) or classes.shape != (len(imgs), 6) or values.shape != (len(imgs), 6):
        raise CorruptDataError(f"{path} holds imgs {imgs.shape} and latents {classes.shape}; expected (N, 64, 64) and "
                               f"(N, 6).")
    return imgs, classes, values, metadata


def load_dsprites(data_dir=None, download=True, class_factor="shape", test_fraction=0.1):
    """dSprites with the five varying factors. Rows are whatever the file holds: never assume row i is the image
    with mixed-radix index i (a copy may hold a real subset of the product)."""
    if class_factor not in DSPRITES_FACTORS:
        raise ValueError(f"unknown dSprites factor {class_factor!r}; choose one of {', '.join(DSPRITES_FACTORS)}")
    folder = resolve_data_dir(data_dir) / "dsprites"
    (path,) = _fetch_missing([DSPRITES_FILE], folder, {DSPRITES_FILE: [DSPRITES_URL]}, "dSprites",
                             "It is published at https://github.com/deepmind/dsprites-dataset.", download,
                             validate=lambda p, n: _read_dsprites(p))
    imgs, classes, values, metadata = _read_dsprites(path)
    factors = classes[:, 1:].astype(np.int64)
    sizes = tuple(int(s) for s in metadata["latents_sizes"][1:])
    labels = {"factors": factors, "factor_values": values[:, 1:]}
    labels.update({name: factors[:, k] for k, name in enumerate(DSPRITES_FACTORS)})
    # No official split: a fixed random 10 % of rows is held out for tests (seed 0, independent of the run seed).
    permutation = np.random.default_rng(0).permutation(len(imgs))
    n_test = int(round(test_fraction * len(imgs)))
    return Dataset(
        name="dsprites", images=(imgs * np.uint8(255))[..., None], labels=labels,
        splits={"train": np.sort(permutation[n_test:]), "test": np.sort(permutation[:n_test]),
                "all": np.arange(len(imgs))},
        class_label=class_factor, factor_names=DSPRITES_FACTORS, factor_sizes=sizes,
        info={"source": str(path), "subset": len(imgs) < int(np.prod(sizes)), "full_size": int(np.prod(sizes)),
              "shape_names": ["square", "ellipse", "heart"]})


class FactorIndex:
    """Conditional sampling over the rows of a (possibly partial) factor product, by index lists.

    `rows_with(k, v)` lists the rows whose factor k equals v; `lookup(factors)` finds the row holding an exact
    factor combination (or -1). Mixed-radix arithmetic would be wrong on a subset, so nothing here uses it to
    address rows: the radix key is only used to sort and search the combinations that exist.
    """

    def __init__(self, factors, sizes, rows=None):
        self.factors = np.asarray(factors, dtype=np.int64)
        self.sizes = tuple(int(s) for s in sizes)
        self.dataset_rows = np.arange(len(self.factors)) if rows is None else np.asarray(rows)
        self._by_value = [[np.flatnonzero(self.factors[:, k] == v) for v in range(size)]
                          for k, size in enumerate(self.sizes)]
        self._bases = np.cumprod((1,) + self.sizes[::-1])[:-1][::-1]
        keys = self.factors @ self._bases
        self._order = np.argsort(keys, kind="stable")
        self._sorted_keys = keys[self._order]

    def __len__(self):
        return len(self.factors)

    def rows_with(self, factor, value):
        """Positions (into this index) of the rows whose `factor` equals `value`."""
        return self._by_value[factor][value]

    def sample(self, n, rng):
        """n positions drawn uniformly among existing rows (never factors drawn independently)."""
        return rng.integers(0, len(self.factors), n)

    def sample_with(self, factor, value, n, rng):
        """n positions with replacement among the rows whose `factor` equals `value`."""
        candidates = self._by_value[factor][value]
        if len(candidates) == 0:
            raise ValueError(f"no row has factor {factor} = {value}")
        return candidates[rng.integers(0, len(candidates), n)]

    def lookup(self, factors):
        """Positions of exact factor combinations, -1 where the combination is not in the data."""
        keys = np.asarray(factors, dtype=np.int64) @ self._bases
        at = np.clip(np.searchsorted(self._sorted_keys, keys), 0, len(self._sorted_keys) - 1)
        found = self._sorted_keys[at] == keys
        return np.where(found, self._order[at], -1)

    def min_group_size(self):
        return min(len(r) for per_factor in self._by_value for r in per_factor if len(r))


# ----------------------------------------------------------------------------------------------------------------
# 2D Sprites (Reed, Zhang, Zhang and Lee 2015, "Deep Visual Analogy-Making")
# ----------------------------------------------------------------------------------------------------------------

SPRITES_URL = "http://www.scottreed.info/files/nips2015-analogy-data.tar.gz"
SPRITES_TARBALL = "nips2015-analogy-data.tar.gz"
SPRITES_COMPACT = "sprites_imgs_uint8.npy.xz"  # lossless compact copy of the frames
N_CHARACTERS = 672
FRAMES_PER_ANIMATION = (7,) * 4 + (8,) * 4 + (9,) * 4 + (6,) * 4 + (13,) * 4 + (6,)
N_FRAMES = sum(FRAMES_PER_ANIMATION)  # 178 frames per character, 21 animations
ACTIONS = ("spellcast", "thrust", "walk", "slash", "shoot", "hurt")
DIRECTIONS = ("up", "left", "down", "right")  # the four views of each action, in file order
# Column meanings are not named in the files; this reading is inferred from rendered characters.
# Characters 2k and 2k+1 differ only in column 6 (weapon).
ATTRIBUTES = ("sex", "body", "armor", "hair", "arm", "greaves", "weapon")
SPRITES_CACHE_VERSION = 1


def _frame_table():
    """Per frame of a character: animation, action, direction (-1 for hurt, which has one view), frame index."""
    animation = np.repeat(np.arange(len(FRAMES_PER_ANIMATION)), FRAMES_PER_ANIMATION)
    frame = np.concatenate([np.arange(n) for n in FRAMES_PER_ANIMATION])
    action = animation // 4
    direction = np.where(animation == 20, -1, animation % 4)
    return animation, action, direction, frame


def _mat_rows_to_images(rows):
    """(frames, 10800) float64 MATLAB column-major rows with values k/255 -> (frames, 60, 60, 3) uint8 upright."""
    images = rows.reshape(-1, 3, 60, 60).transpose(0, 3, 2, 1)
    return np.rint(images * 255.0).astype(np.uint8)


def read_sprites_mat(source):
    """One character from a v7.3 (HDF5) sprites_{i}.mat: (178, 60, 60, 3) uint8 frames and the 7 labels."""
    import h5py

    try:
        with h5py.File(source, "r") as f:
            cells = f["sprites"]
            if cells.shape[0] * cells.shape[1] != len(FRAMES_PER_ANIMATION):
                raise CorruptDataError(f"{source}: 'sprites' holds {cells.shape} cells, expected 21 animations")
            frames = [f[cells[a, 0] if cells.shape[1] == 1 else cells[0, a]][()] for a in range(21)]
            labels = f["labels"][()].ravel().astype(np.int64)
    except (OSError, KeyError) as error:
        raise CorruptDataError(f"{source} is not a readable Reed sprites .mat (MATLAB v7.3/HDF5) file ({error}). "
                               f"It may be truncated: extract or rebuild it again.")
    for a, rows in enumerate(frames):
        if rows.shape != (FRAMES_PER_ANIMATION[a], 10800):
            raise CorruptDataError(f"{source}: animation {a} has shape {rows.shape}, expected "
                                   f"({FRAMES_PER_ANIMATION[a]}, 10800)")
    return _mat_rows_to_images(np.concatenate(frames)), labels


def read_sprites_splits(source):
    """Official identity split from sprites_splits.mat (MATLAB v5, 1-based ids) -> 0-based arrays."""
    import scipy.io

    try:
        mat = scipy.io.loadmat(source)
        return {name: np.sort(mat[key].ravel().astype(np.int64) - 1)
                for name, key in (("train", "trainidx"), ("val", "validx"), ("test", "testidx"))}
    except (OSError, KeyError, ValueError) as error:
        raise CorruptDataError(f"{source} is not a readable sprites_splits.mat ({error}).")


def _find_sprites_source(root):
    """The best available copy of the Reed data under root: ('mat', folder), ('tar', file) or ('compact', folder)."""
    for folder in (root, root / "data" / "sprites", root / "nips2015-analogy-data" / "data" / "sprites"):
        if (folder / "sprites_0.mat").is_file():
            return "mat", folder
    for tarball in (root / SPRITES_TARBALL, root.parent / SPRITES_TARBALL):
        if tarball.is_file():
            return "tar", tarball
    if (root / SPRITES_COMPACT).is_file():
        return "compact", root
    return None, None


def _convert_mat_chunk(args):
    folder, characters, out_path = args
    out = np.load(out_path, mmap_mode="r+")
    labels = np.empty((len(characters), 7), np.int64)
    for j, c in enumerate(characters):
        out[c], labels[j] = read_sprites_mat(folder / f"sprites_{c}.mat")
    out.flush()
    return characters, labels


def _sprites_frames_bytes():
    """The size of the frames cache, from its array shape: 672 x 178 x 60 x 60 x 3 uint8 = 1.29 GB."""
    return N_CHARACTERS * N_FRAMES * 60 * 60 * 3


def _reserve_space(path):
    """Allocate the blocks of a freshly created (sparse) memory-mapped file now.

    Writing through a memory map into a full disk does not raise: the kernel kills the process with SIGBUS. With
    the blocks reserved first, a full disk (or quota) fails here, as an ENOSPC OSError that can be explained."""
    if not hasattr(os, "posix_fallocate"):
        return
    with open(path, "r+b") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
        except OSError as error:
            if error.errno in _NO_ROOM:
                raise
            # A file system without fallocate: the free-space check made before converting has to do.


def _convert_from_mat(folder, out_path, workers):
    missing = [f"sprites_{c}.mat" for c in range(N_CHARACTERS) if not (folder / f"sprites_{c}.mat").is_file()]
    if missing:
        raise MissingDataError(f"The Reed sprites folder {folder} is incomplete: {len(missing)} of the 672 files "
                               f"sprites_0.mat ... sprites_671.mat are missing (first: {missing[0]}). Extract the "
                               f"whole nips2015-analogy-data tarball (or rerun rebuild_reed_sprites.py).")
    np.lib.format.open_memmap(out_path, "w+", np.uint8, (N_CHARACTERS, N_FRAMES, 60, 60, 3)).flush()
    _reserve_space(out_path)
    chunks = [(folder, list(range(i, N_CHARACTERS, workers * 4)), out_path) for i in range(workers * 4)]
    labels = np.empty((N_CHARACTERS, 7), np.int64)
    with concurrent.futures.ProcessPoolExecutor(workers) as pool:
        for characters, chunk_labels in pool.map(_convert_mat_chunk, chunks):
            labels[characters] = chunk_labels
    return labels, read_sprites_splits(folder / "sprites_splits.mat")


def _convert_from_tar(tarball, out_path):
    out = np.lib.format.open_memmap(out_path, "w+", np.uint8, (N_CHARACTERS, N_FRAMES, 60, 60, 3))
    out.flush()
    _reserve_space(out_path)
    labels, splits, seen = np.empty((N_CHARACTERS, 7), np.int64), None, set()
    try:
        with tarfile.open(tarball, "r:*") as tar:
            for member in tar:  # streamed in archive order: the tarball is read once
                match = re.search(r"sprites/sprites_(\d+)\.mat$", member.name)
                if match:
                    c = int(match.group(1))
                    out[c], labels[c] = read_sprites_mat(io.BytesIO(tar.extractfile(member).read()))
                    seen.add(c)
                elif member.name.endswith("sprites/sprites_splits.mat"):
                    splits = read_sprites_splits(io.BytesIO(tar.extractfile(member).read()))
    except (tarfile.TarError, EOFError, zlib.error) as error:
        raise CorruptDataError(f"{tarball} cannot be read to the end ({error}); it is probably truncated. Delete it "
                               f"and download it again from {SPRITES_URL}.")
    if len(seen) != N_CHARACTERS or splits is None:
        raise CorruptDataError(f"{tarball} holds {len(seen)} of the 672 sprites_*.mat files"
                               f"{'' if splits else ' and no sprites_splits.mat'}; it is not the complete "
                               f"nips2015-analogy-data tarball.")
    out.flush()
    return labels, splits


def _convert_from_compact(folder, out_path):
    # The compact copy is an xz-compressed .npy of the same (672, 178, 60, 60, 3) uint8 array: decompressing
    # it is the whole conversion.
    try:
        with lzma.open(folder / SPRITES_COMPACT) as src, open(out_path, "wb") as dst:
            shutil.copyfileobj(src, dst, length=1 << 24)
        array = np.load(out_path, mmap_mode="r")
    except (lzma.LZMAError, EOFError, ValueError, OSError) as error:
        if getattr(error, "errno", None) in _NO_ROOM:  # the cache's disk is full: the copy is not to blame
            raise
        raise CorruptDataError(f"{folder / SPRITES_COMPACT} cannot be decompressed ({error}); it is probably "
                               f"truncated. Copy it again.")
    if array.shape != (N_CHARACTERS, N_FRAMES, 60, 60, 3) or array.dtype != np.uint8:
        raise CorruptDataError(f"{folder / SPRITES_COMPACT} holds {array.shape} {array.dtype}, expected "
                               f"(672, 178, 60, 60, 3) uint8.")
    labels_file = folder / "sprite_large_labels.txt"
    if not labels_file.is_file() or not (folder / "sprites_splits.mat").is_file():
        raise MissingDataError(f"{folder} has {SPRITES_COMPACT} but not sprite_large_labels.txt and "
                               f"sprites_splits.mat beside it; copy the whole sprites/ folder it came from.")
    labels = np.loadtxt(labels_file, delimiter=",", dtype=np.int64).reshape(N_CHARACTERS, 7)
    return labels, read_sprites_splits(folder / "sprites_splits.mat")


def sprites_cache_dir(data_dir=None):
    """Where the Sprites cache is read from, or written to on first use. Creates nothing.

    An existing valid cache in <data dir>/sprites/cache (where older versions wrote it) is used. Otherwise the
    cache goes to <cache dir>/sprites/cache when the data directory is the cache directory (the default, no
    --data-dir), else to <cache dir>/sprites-cache/<key of the data folder>: a derived file never goes into a data
    folder the user named (see cache_root)."""
    root = resolve_data_dir(data_dir) / "sprites"
    cache = cache_root()
    if root.parent.resolve() == cache.resolve():
        return root / "cache"
    if _read_sprites_cache(root / "cache") is not None:
        return root / "cache"
    return cache / "sprites-cache" / hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:12]


def convert_sprites(source_kind, source, cache_dir, workers=2):
    """Convert the original data once into cache_dir: frames .npy (uint8, memory-mappable) + labels/splits .npz.

    Both files are written under unique temporary names (two first-time conversions may run at once: each one
    renames its own complete files into place, the later one replacing the earlier's identical ones). The frames
    file is renamed first and the metadata file, which marks the cache as complete, last, so an interrupted
    conversion never leaves a cache that looks valid. A full or read-only cache folder raises StorageError.
    """
    frames_path, meta_path = cache_dir / "sprites_frames_uint8.npy", cache_dir / "sprites_meta.npz"
    needed = _sprites_frames_bytes()
    fix = (f"set ${CACHE_DIR_ENV} to a writable folder with about {_human_size(needed)} free (e.g. "
           f"{CACHE_DIR_ENV}=/scratch/cache; the data folder itself is only read)")

    def raise_explained(error, codes=_NO_ROOM | _NO_WRITE):
        """Raise the StorageError that explains error when its errno is one of codes, else error itself."""
        problem = _storage_error(error, cache_dir, "the Sprites cache", fix, needed) if error.errno in codes else None
        if problem is None:
            raise error
        raise problem from None

    temporary = []
    try:
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            _check_free_space(cache_dir, needed)
            for name in ("sprites_frames_uint8.npy", "sprites_meta.npz"):
                fd, path = _temporary_file(cache_dir, name)
                os.close(fd)
                temporary.append(path)
        except OSError as error:
            raise_explained(error)
        tmp, meta_tmp = temporary
        started = time.time()
        print(f"converting Reed sprites from {source} into {cache_dir} (once)", file=sys.stderr, flush=True)
        try:
            if source_kind == "mat":
                labels, splits = _convert_from_mat(source, tmp, workers)
            elif source_kind == "tar":
                labels, splits = _convert_from_tar(source, tmp)
            else:
                labels, splits = _convert_from_compact(source, tmp)
        except OSError as error:
            raise_explained(error, _NO_ROOM)  # a source can fail with EACCES too: not the cache folder's fault
        covered = np.sort(np.concatenate(list(splits.values())))
        if not np.array_equal(covered, np.arange(N_CHARACTERS)):
            raise CorruptDataError(f"the splits in {source} do not partition the 672 identities")
        try:
            # The metadata is written (not yet renamed) before the frames are renamed: if it does not fit, nothing
            # of this conversion is left behind.
            with open(meta_tmp, "wb") as f:
                np.savez(f, version=SPRITES_CACHE_VERSION, labels=labels, source=str(source), **splits)
            os.replace(tmp, frames_path)
            os.replace(meta_tmp, meta_path)
        except OSError as error:
            raise_explained(error)
    finally:
        for path in temporary:
            if path.exists():
                path.unlink()
    print(f"converted in {time.time() - started:.1f} s", file=sys.stderr, flush=True)
    return frames_path, meta_path


def _read_sprites_cache(cache_dir):
    frames_path, meta_path = cache_dir / "sprites_frames_uint8.npy", cache_dir / "sprites_meta.npz"
    if not (frames_path.is_file() and meta_path.is_file()):
        return None
    try:
        with np.load(meta_path) as meta:
            if int(meta["version"]) != SPRITES_CACHE_VERSION:
                return None
            labels, splits = meta["labels"], {k: meta[k] for k in ("train", "val", "test")}
        frames = np.load(frames_path, mmap_mode="r")
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None
    if frames.shape != (N_CHARACTERS, N_FRAMES, 60, 60, 3) or labels.shape != (N_CHARACTERS, 7):
        return None
    return frames, labels, splits


def load_sprites(data_dir=None, download=True, include_hurt=False, workers=2):
    """All 672 Reed characters x 178 frames, memory-mapped from a uint8 cache built on first use.

    Rows are character-major: row = identity * 178 + frame. Labels per row: identity, attributes (7 columns, see
    ATTRIBUTES), action, direction (-1 for "hurt"), animation, frame. Splits are the official 500/72/100 identity
    split (train/val/test) plus "all"; with include_hurt=False (the default, as in most papers) the splits leave
    out the "hurt" frames, whose bottom five pixel rows are solid white in the original data.
    """
    root = resolve_data_dir(data_dir) / "sprites"
    cache_dir = sprites_cache_dir(data_dir)
    cached = _read_sprites_cache(cache_dir)
    if cached is None:
        kind, source = _find_sprites_source(root)
        if kind is None and _downloads_allowed(download):
            try:
                _download(SPRITES_URL, root / SPRITES_TARBALL)
                kind, source = "tar", root / SPRITES_TARBALL
            except OSError as error:
                reason = f" Download from {SPRITES_URL} failed ({error})."
        else:
            reason = "" if kind else " Downloads are switched off."
        if kind is None:
            raise MissingDataError(
                f"Reed 2D Sprites not found in {root}.{reason} Put one of these there: the extracted tarball "
                f"(data/sprites/sprites_0.mat ... sprites_671.mat with sprites_splits.mat), the tarball "
                f"{SPRITES_TARBALL} itself, or the compact copy ({SPRITES_COMPACT} with sprite_large_labels.txt and "
                f"sprites_splits.mat beside it; `python rebuild_reed_sprites.py {root}` rebuilds "
                f"the .mat layout from it). Or pass --data-dir DIR pointing at a folder with sprites/ inside.")
        convert_sprites(kind, source, cache_dir, workers)
        cached = _read_sprites_cache(cache_dir)
    frames, attributes, identity_splits = cached
    animation, action, direction, frame = _frame_table()
    identity = np.repeat(np.arange(N_CHARACTERS), N_FRAMES)
    labels = {
        "identity": identity, "attributes": np.repeat(attributes, N_FRAMES, axis=0),
        "action": np.tile(action, N_CHARACTERS), "direction": np.tile(direction, N_CHARACTERS),
        "animation": np.tile(animation, N_CHARACTERS), "frame": np.tile(frame, N_CHARACTERS)}
    keep = np.ones(len(identity), bool) if include_hurt else labels["animation"] != 20
    splits = {name: np.flatnonzero(np.isin(identity, ids) & keep) for name, ids in identity_splits.items()}
    splits["all"] = np.flatnonzero(keep)
    return Dataset(
        name="sprites", images=frames.reshape(-1, 60, 60, 3), labels=labels, splits=splits, class_label="identity",
        info={"source": str(cache_dir), "attribute_names": list(ATTRIBUTES), "action_names": list(ACTIONS),
              "direction_names": list(DIRECTIONS), "identity_splits": {k: v.tolist() for k, v in
                                                                       identity_splits.items()},
              "include_hurt": include_hurt})


def load_dataset(name, data_dir=None, download=True, **options):
    """Load one of DATASETS by name; options go to its loader (include_hurt, class_factor, ...)."""
    loaders = {"mnist": load_mnist, "sprites": load_sprites, "dsprites": load_dsprites}
    if name not in loaders:
        raise UnknownDatasetError(f"Unknown dataset {name!r}: choose one of {', '.join(DATASETS)}.")
    return loaders[name](data_dir=data_dir, download=download, **options)


# ----------------------------------------------------------------------------------------------------------------
# Pair and group sampling
# ----------------------------------------------------------------------------------------------------------------

class _ClassBlocks:
    """Rows of one split sorted by a grouping key, so that each key's rows form one contiguous block."""

    def __init__(self, keys):
        _, dense = np.unique(keys, return_inverse=True)
        self.key = dense.ravel()
        self.order = np.argsort(self.key, kind="stable")
        self.count = np.bincount(self.key)
        self.start = np.concatenate([[0], np.cumsum(self.count)[:-1]])
        self.position = np.empty_like(self.order)
        self.position[self.order] = np.arange(len(self.order))


def _exclusion_keys(dataset, classes, class_label):
    # On Sprites, characters 2k and 2k+1 differ only in the weapon, which most frames do not show: a
    # "different identity" partner must not be the weapon twin either.
    if dataset.name == "sprites" and class_label == "identity":
        return classes // 2
    return classes


def _pair_sampler(dataset, split, kind, class_label):
    rows = dataset.rows(split)
    classes = np.asarray(dataset.labels[class_label])[rows]
    if classes.ndim != 1:
        raise ValueError(f"label {class_label!r} has several columns; pick a single-column class label")
    if kind == "same":
        blocks = _ClassBlocks(classes)
        if blocks.count.min() < 2:
            raise ValueError(f"some {class_label} class in split {split!r} has a single image: no same-class partner")

        def partners(anchors, rng):
            # Uniform over the OTHER members of the anchor's class: offset 1..count-1 within the class block.
            key = blocks.key[anchors]
            offset = (blocks.position[anchors] - blocks.start[key] + rng.integers(1, blocks.count[key])) % \
                blocks.count[key]
            return blocks.order[blocks.start[key] + offset]
    else:
        blocks = _ClassBlocks(_exclusion_keys(dataset, classes, class_label))
        if len(blocks.count) < 2:
            raise ValueError(f"split {split!r} has a single {class_label} class: no different-class partner")

        def partners(anchors, rng):
            # Uniform over all rows outside the anchor's block: draw among the N - count others, skip the block.
            key = blocks.key[anchors]
            draw = rng.integers(0, len(rows) - blocks.count[key])
            return blocks.order[draw + (draw >= blocks.start[key]) * blocks.count[key]]
    return rows, classes, partners


def _to_float(batch, image_keys):
    import tensorflow as tf

    return {k: (tf.cast(v, tf.float32) * (1.0 / 255.0) if k in image_keys else v) for k, v in batch.items()}


def _pipeline(make_epoch, signature, image_keys, n_batches, first_epoch=0):
    """tf.data pipeline over a Python epoch generator: make_epoch(epoch) yields n_batches dicts of NumPy batches.

    The k-th pass over the dataset is epoch first_epoch + k, so a resumed run draws new pairs, not epoch 0's again.
    """
    import tensorflow as tf

    epochs_started = [first_epoch]

    def generate():
        epoch = epochs_started[0]
        epochs_started[0] += 1
        yield from make_epoch(epoch)

    dataset = tf.data.Dataset.from_generator(generate, output_signature=signature)
    # Declare the epoch length so that fit() knows it (progress bar, no "ran out of data" warning).
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(n_batches))
    dataset = dataset.map(lambda batch: _to_float(batch, image_keys), num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


def _pair_pipeline(dataset, split, batch_size, seed, kind, class_label, first_epoch):
    import tensorflow as tf

    class_label = class_label or dataset.class_label
    rows, classes, partners = _pair_sampler(dataset, split, kind, class_label)
    n_batches = len(rows) // batch_size
    if n_batches == 0:
        raise ValueError(f"split {split!r} has {len(rows)} images, fewer than one batch of {batch_size}")
    images = dataset.images

    def make_epoch(epoch):
        # A fresh permutation and fresh partners every epoch, reproducible from (seed, epoch).
        rng = np.random.default_rng([seed, epoch])
        anchors = rng.permutation(len(rows))
        partner = partners(anchors, rng)
        for b in range(n_batches):
            a, p = anchors[b * batch_size:(b + 1) * batch_size], partner[b * batch_size:(b + 1) * batch_size]
            yield {"image_a": images[rows[a]], "image_b": images[rows[p]], "label_a": classes[a].astype(np.int32),
                   "label_b": classes[p].astype(np.int32), "index_a": rows[a], "index_b": rows[p]}

    shape = (batch_size,) + dataset.image_shape
    signature = {"image_a": tf.TensorSpec(shape, tf.uint8), "image_b": tf.TensorSpec(shape, tf.uint8),
                 "label_a": tf.TensorSpec((batch_size,), tf.int32), "label_b": tf.TensorSpec((batch_size,), tf.int32),
                 "index_a": tf.TensorSpec((batch_size,), tf.int64), "index_b": tf.TensorSpec((batch_size,), tf.int64)}
    return _pipeline(make_epoch, signature, ("image_a", "image_b"), n_batches, first_epoch)


def same_class_pairs(dataset, split="train", batch_size=64, seed=0, class_label=None, first_epoch=0):
    """Batches of pairs (a, b) of the same class with b != a, b drawn afresh every epoch.

    One epoch visits every image of the split once as `a` (in a new random order), dropping the last partial batch.
    Epoch k's pairs depend only on (seed, k); `first_epoch` is the epoch a resumed run continues from.
    """
    return _pair_pipeline(dataset, split, batch_size, seed, "same", class_label, first_epoch)


def different_class_pairs(dataset, split="train", batch_size=64, seed=0, class_label=None, first_epoch=0):
    """Batches of pairs (a, b) whose classes differ (on Sprites also never the weapon twin 2k / 2k+1)."""
    return _pair_pipeline(dataset, split, batch_size, seed, "different", class_label, first_epoch)


def class_groups(dataset, split="train", groups=32, group_size=8, seed=0, class_label=None, first_epoch=0):
    """Batches of `groups` groups of `group_size` distinct images of one class each (ML-VAE).

    Every epoch the images of each class are shuffled and cut into disjoint groups (the remainder of each class
    is left out of that epoch); the groups are shuffled and batched, so each image appears at most once.
    """
    import tensorflow as tf

    class_label = class_label or dataset.class_label
    rows = dataset.rows(split)
    classes = np.asarray(dataset.labels[class_label])[rows]
    _, dense = np.unique(classes, return_inverse=True)
    per_class = np.bincount(dense.ravel())
    if (per_class // group_size).sum() < groups:
        raise ValueError(f"split {split!r} cannot fill one batch of {groups} groups of {group_size} same-{class_label} "
                         f"images")
    images = dataset.images
    n_batches = int((per_class // group_size).sum()) // groups

    def make_epoch(epoch):
        rng = np.random.default_rng([seed, epoch])
        shuffled = rng.permutation(len(rows))
        by_class = shuffled[np.argsort(dense[shuffled], kind="stable")]
        key = dense[by_class]
        start = np.concatenate([[0], np.cumsum(per_class)[:-1]])
        within = np.arange(len(by_class)) - start[key]
        kept = by_class[within < (per_class[key] // group_size) * group_size]
        members = rng.permutation(kept.reshape(-1, group_size))
        for b in range(n_batches):
            chosen = members[b * groups:(b + 1) * groups]
            yield {"images": images[rows[chosen.ravel()]].reshape((groups, group_size) + dataset.image_shape),
                   "labels": classes[chosen].astype(np.int32), "indices": rows[chosen]}

    signature = {"images": tf.TensorSpec((groups, group_size) + dataset.image_shape, tf.uint8),
                 "labels": tf.TensorSpec((groups, group_size), tf.int32),
                 "indices": tf.TensorSpec((groups, group_size), tf.int64)}
    return _pipeline(make_epoch, signature, ("images",), n_batches, first_epoch)


def grid_rows(dataset, n=8):
    """n test images of n different classes where possible, the same ones in every grid of the run.

    Each class contributes an image from a different place in its list (on Sprites: a different animation and
    direction), so that the grid also shows whether z keeps the pose."""
    rows = dataset.rows("test")
    classes = np.asarray(dataset.labels[dataset.class_label])[rows]
    members = [np.flatnonzero(classes == c) for c in np.unique(classes)[:n]]
    picked = [rows[m[(k * len(m)) // n]] for k, m in enumerate(members)]
    extra = [r for r in rows[:: max(1, len(rows) // n)] if r not in picked]
    return (picked + extra)[:n]


def images(dataset, split="test", batch_size=256, shuffle=False, seed=0, drop_remainder=False, first_epoch=0):
    """Single images {image, label, index} in split order (or shuffled each epoch), for encoding and plain VAEs."""
    import tensorflow as tf

    rows = dataset.rows(split)
    labels = np.asarray(dataset.labels[dataset.class_label])
    data = dataset.images

    def make_epoch(epoch):
        order = np.random.default_rng([seed, epoch]).permutation(rows) if shuffle else rows
        stop = len(order) - (len(order) % batch_size if drop_remainder else 0)
        for b in range(0, stop, batch_size):
            chosen = order[b:b + batch_size]
            yield {"image": data[chosen], "label": labels[chosen].astype(np.int32), "index": chosen}

    n = batch_size if drop_remainder else None
    n_batches = len(rows) // batch_size if drop_remainder else -(-len(rows) // batch_size)
    signature = {"image": tf.TensorSpec((n,) + dataset.image_shape, tf.uint8),
                 "label": tf.TensorSpec((n,), tf.int32), "index": tf.TensorSpec((n,), tf.int64)}
    return _pipeline(make_epoch, signature, ("image",), n_batches, first_epoch)


# ----------------------------------------------------------------------------------------------------------------
# Command line: summary and throughput
# ----------------------------------------------------------------------------------------------------------------

def summary(dataset):
    lines = [f"dataset {dataset.name}: {len(dataset.images)} images of {dataset.image_shape} {dataset.images.dtype} "
             f"(source: {dataset.info.get('source')})"]
    for split, rows in dataset.splits.items():
        line = f"  split {split}: {len(rows)} images"
        if dataset.name == "sprites" and split != "all":
            line += f", {len(np.unique(dataset.labels['identity'][rows]))} identities"
        lines.append(line)
    every = dataset.splits["all"]
    for name, values in dataset.labels.items():
        if np.issubdtype(values.dtype, np.floating):
            continue
        values = values[every]
        columns = values.reshape(len(values), -1)
        names = dataset.info.get("attribute_names", []) if name == "attributes" else [name] * columns.shape[1]
        if name in ("identity",):
            lines.append(f"  label {name}: {len(np.unique(values))} values, {np.bincount(values).min()}-"
                         f"{np.bincount(values).max()} images each")
            continue
        if name == "factors":
            continue
        for j in range(columns.shape[1]):
            v, c = np.unique(columns[:, j], return_counts=True)
            counts = ", ".join(f"{a}:{b}" for a, b in zip(v, c)) if len(v) <= 12 else f"{len(v)} values"
            lines.append(f"  label {names[j] if j < len(names) else name}: {counts}")
    if dataset.factor_names:
        index = dataset.factor_index()
        product = int(np.prod(dataset.factor_sizes))
        lines.append(f"  factors {dict(zip(dataset.factor_names, dataset.factor_sizes))}: {len(index)} of {product} "
                     f"combinations present ({100 * len(index) / product:.1f} %), smallest conditional group "
                     f"{index.min_group_size()} rows")
    lines.append(f"  (label counts over split 'all'); class label for pairs: {dataset.class_label}")
    return "\n".join(lines)


def _throughput(pipeline, items_per_batch, seconds=4.0):
    iterator = iter(pipeline.repeat())
    for _ in range(20):  # warm-up: threads started, pages touched
        next(iterator)
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        next(iterator)
        count += 1
    return count * items_per_batch / (time.perf_counter() - started)


def bench(dataset, data_dir=None):
    batch = 64
    for name, pipeline in (("same_class_pairs", same_class_pairs(dataset, "train", batch)),
                           ("different_class_pairs", different_class_pairs(dataset, "train", batch))):
        print(f"bench {dataset.name}/{name}: {_throughput(pipeline, batch):.0f} pairs/s", flush=True)
    size = 8 if dataset.name != "sprites" else 4
    groups = class_groups(dataset, "train", groups=batch // size, group_size=size)
    print(f"bench {dataset.name}/class_groups({batch // size}x{size}): {_throughput(groups, batch):.0f} images/s",
          flush=True)
    if dataset.name == "sprites":
        started = time.perf_counter()
        load_sprites(data_dir)
        print(f"bench sprites cached load: {time.perf_counter() - started:.2f} s", flush=True)
        kind, source = _find_sprites_source(resolve_data_dir(data_dir) / "sprites")
        if kind is not None:
            # A scratch conversion is a derived file too: it goes to the cache directory, never the data folder.
            cache_root().mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=cache_root(), prefix=".sprites-bench-") as scratch:
                started = time.perf_counter()
                convert_sprites(kind, source, pathlib.Path(scratch))
                print(f"bench sprites cold load (conversion from {kind} source {source}): "
                      f"{time.perf_counter() - started:.1f} s", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Summarise (and benchmark) one of the real datasets.")
    parser.add_argument("--dataset", required=True, choices=DATASETS, help="which dataset to load")
    parser.add_argument("--data-dir", default=None,
                        help=f"data directory, only read apart from downloads (default: ${DATA_DIR_ENV}, else "
                             f"{default_data_dir()}); the Sprites cache goes to ${CACHE_DIR_ENV}, else "
                             f"{default_data_dir()}")
    parser.add_argument("--include-hurt", action="store_true", help="Sprites: keep the single-view 'hurt' frames")
    parser.add_argument("--no-download", action="store_true", help="never try to download missing files")
    parser.add_argument("--bench", action="store_true",
                        help="also print pipeline throughput (and Sprites cold/cached load times)")
    args = parser.parse_args(argv)
    options = {"include_hurt": args.include_hurt} if args.dataset == "sprites" else {}
    try:
        started = time.perf_counter()
        dataset = load_dataset(args.dataset, args.data_dir, download=not args.no_download, **options)
        print(summary(dataset))
        print(f"  loaded in {time.perf_counter() - started:.2f} s")
        if args.bench:
            bench(dataset, args.data_dir)
    except DataError as error:
        parser.exit(2, f"error: {error}\n")


if __name__ == "__main__":
    main()
