"""Data: CIFAR loading/validation/download, the data root, the synthetic set, augmentation and the
deterministic, resumable batch loader. No network: downloads go through file:// URLs or fake
openers, and the CIFAR files are small ones written here in the canonical format."""
import dataclasses
import hashlib
import io
import os
import pickle
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, strategies as st
from helpers import pickle_dump, write_cifar10, write_cifar100

from minignn.data import (BatchLoader, ChecksumError, CorruptDataError, Dataset, DatasetNotFoundError, channel_stats,
                          crop_flip, load_dataset, normalize, resolve_data_root, synthetic_dataset)
from minignn.data import cifar, loader

SPEC10 = cifar.SPECS["cifar10"]
SPEC100 = cifar.SPECS["cifar100"]


# ----------------------------------------------------------------------------------------------
# canonical-format fixtures written by the tests (write_cifar10 and pickle_dump: helpers.py)
# ----------------------------------------------------------------------------------------------
def make_archive(src_root, folder, out_path):
    with tarfile.open(out_path, "w:gz") as tar:
        tar.add(Path(src_root) / folder, arcname=folder)
    return hashlib.md5(Path(out_path).read_bytes()).hexdigest()


@pytest.fixture
def no_network(monkeypatch):
    """Any real download attempt fails loudly."""
    calls = []

    def refuse(url, *a, **k):
        calls.append(url)
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setattr(cifar, "urlopen", refuse)
    return calls


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    monkeypatch.delenv("MINIGNN_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


# ----------------------------------------------------------------------------------------------
# loading the canonical format
# ----------------------------------------------------------------------------------------------
def test_cifar10_small_files_load_exactly(tmp_path, no_network):
    xtr, ytr, xte, yte = write_cifar10(tmp_path)
    ds = load_dataset("cifar10", data_dir=tmp_path, check_counts=False)
    assert ds.name == "cifar10" and ds.num_classes == 10 and ds.classes[0] == "airplane" and ds.classes[9] == "truck"
    assert ds.x_train.shape == (25, 3, 32, 32) and ds.x_train.dtype == np.uint8 and ds.x_train.flags.c_contiguous
    assert ds.y_train.dtype == np.int64 and ds.x_test.shape == (9, 3, 32, 32)
    # rows are R, G, B planes, each 32x32 row-major
    n, c, i, j = 11, 2, 5, 30
    assert ds.x_train[n, c, i, j] == xtr[n, c * 1024 + i * 32 + j]
    np.testing.assert_array_equal(ds.x_train.reshape(25, -1), xtr)
    np.testing.assert_array_equal(ds.y_train, ytr)
    np.testing.assert_array_equal(ds.x_test.reshape(9, -1), xte)
    np.testing.assert_array_equal(ds.y_test, yte)
    ref = xtr.reshape(25, 3, -1).astype(np.float64) / 255
    np.testing.assert_allclose(ds.mean, ref.mean(axis=(0, 2)), rtol=1e-6)
    np.testing.assert_allclose(ds.std, ref.std(axis=(0, 2)), rtol=1e-5)
    assert no_network == []  # an extracted folder never triggers a download
    assert ds.source == str(tmp_path / SPEC10.folder)


def test_canonical_counts_are_checked_by_default(tmp_path, no_network):
    write_cifar10(tmp_path)
    msg = r"50000 training and 10000 test images, got 25 and 9.*check_counts=False.*--allow-partial-data"
    with pytest.raises(CorruptDataError, match=msg):
        load_dataset("cifar10", data_dir=tmp_path)


def test_data_root_may_be_the_extracted_folder_itself(tmp_path, no_network):
    write_cifar10(tmp_path)
    ds = load_dataset("CIFAR-10", data_dir=tmp_path / SPEC10.folder, check_counts=False)
    assert ds.x_train.shape[0] == 25


def test_cifar100_small_files_use_fine_labels(tmp_path, no_network):
    xtr, ytr, xte, yte = write_cifar100(tmp_path)
    ds = load_dataset("cifar100", data_dir=tmp_path, check_counts=False)
    assert ds.name == "cifar100" and ds.num_classes == 100 and ds.classes[:2] == ("c0", "c1")
    np.testing.assert_array_equal(ds.x_train.reshape(11, -1), xtr)
    np.testing.assert_array_equal(ds.y_train, ytr)
    np.testing.assert_array_equal(ds.y_test, yte)


def test_cifar100_coarse_labels_are_the_20_superclasses_of_the_same_files(tmp_path, no_network):
    xtr, ytr, xte, yte = write_cifar100(tmp_path)
    for name in ("cifar100-coarse", "CIFAR-100-coarse", "cifar100_coarse"):
        ds = load_dataset(name, data_dir=tmp_path, check_counts=False)
        assert ds.name == "cifar100-coarse" and ds.num_classes == 20 and ds.classes[:2] == ("s0", "s1")
        np.testing.assert_array_equal(ds.x_train.reshape(11, -1), xtr)
        np.testing.assert_array_equal(ds.y_train, ytr // 5)      # the files' coarse labels
        np.testing.assert_array_equal(ds.y_test, yte // 5)


def test_a_run_trains_on_cifar100_files(tmp_path, no_network):
    from minignn.train import TrainConfig, train
    write_cifar100(tmp_path / "data", n_train=40, n_test=20)
    for name, classes in (("cifar100", 100), ("cifar100-coarse", 20)):
        s = train(TrainConfig(dataset=name, data_dir=str(tmp_path / "data"), allow_partial_data=True, epochs=1,
                              batch_size=16, width=0.25, pool="gfgp"), out=str(tmp_path / name), progress=False,
                  plots=False, log=lambda m: None)
        assert 0 <= s["final_test_acc"] <= 1
        import minignn
        assert len(minignn.load(str(tmp_path / name)).classes) == classes


def test_old_numpy_core_pickles_load(tmp_path, no_network):
    """The canonical files were pickled by old NumPy (numpy.core.multiarray): they must load."""
    write_cifar10(tmp_path)
    path = tmp_path / SPEC10.folder / "data_batch_2"
    raw = path.read_bytes()
    assert b"numpy._core.multiarray" in raw  # protocol 2 names the class in text
    path.write_bytes(raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    x, y = cifar.read_batch(path, SPEC10)
    assert x.shape == (5, 3, 32, 32) and y.shape == (5,)


def _corrupt(kind, path):
    if kind == "truncated":
        raw = path.read_bytes()
        path.write_bytes(raw[: len(raw) // 2])
        return r"cannot be unpickled.*truncated"
    if kind == "garbage":
        path.write_bytes(b"this is not a pickle at all" * 10)
        return r"cannot be unpickled"
    if kind == "empty":
        path.write_bytes(b"")
        return r"cannot be unpickled"
    if kind == "missing":
        path.unlink()
        return r"missing; the folder .* is incomplete"
    d = pickle.loads(path.read_bytes(), encoding="bytes")
    if kind == "no_data_key":
        del d[b"data"]
        msg = r"missing key\(s\) \[b'data'\]"
    elif kind == "no_labels_key":
        del d[b"labels"]
        msg = r"missing key\(s\) \[b'labels'\]"
    elif kind == "wrong_size":
        d[b"data"] = d[b"data"][:, :3000].copy()
        msg = r"wrong size: expected a uint8 array \(n, 3072\), got uint8 \(6, 3000\)"
    elif kind == "wrong_dtype":
        d[b"data"] = d[b"data"].astype(np.float32)
        msg = r"wrong size: expected a uint8 array \(n, 3072\), got float32"
    elif kind == "label_count":
        d[b"labels"] = d[b"labels"][:-1]
        msg = r"label count mismatch: 6 images but \(5,\) labels"
    elif kind == "label_range":
        d[b"labels"][4] = 10
        msg = r"labels out of range in b'labels': expected 0\.\.9, got \d+\.\.10 \(first bad: 10 at index 4\)"
    elif kind == "label_negative":
        d[b"labels"][1] = -1
        msg = r"labels out of range in b'labels': expected 0\.\.9, got -1\.\.\d \(first bad: -1 at index 1\)"
    elif kind == "label_float":
        d[b"labels"][2] = 2.7  # the list becomes floats; int() would truncate it to class 2
        msg = (r"non-integer labels in b'labels': expected integers 0\.\.9, got 2\.7 at index 2"
               r" \(1 of 6 labels are not integers\)")
    elif kind == "label_float_array":
        d[b"labels"] = np.asarray(d[b"labels"], dtype=np.float32) + np.float32(0.25)
        msg = r"non-integer labels in b'labels'.* at index 0 \(6 of 6 labels are not integers\)"
    elif kind == "label_nan":
        d[b"labels"][3] = float("nan")
        msg = r"non-integer labels in b'labels': expected integers 0\.\.9, got nan at index 3"
    elif kind == "label_str":
        d[b"labels"][0] = "3"
        msg = r"b'labels' is not a list of integers: expected integer labels 0\.\.9, got <U\d+ values"
    elif kind == "label_bool":
        d[b"labels"] = [True] * 6
        msg = r"b'labels' is not a list of integers: expected integer labels 0\.\.9, got bool values"
    elif kind == "label_none":
        d[b"labels"][0] = None
        msg = r"b'labels' is not a list of integers: expected integer labels 0\.\.9, got object values"
    elif kind == "not_a_dict":
        d = [1, 2, 3]
        msg = r"expected a pickled dict, got list"
    pickle_dump(path, d)
    return msg


@pytest.mark.parametrize("kind", ["truncated", "garbage", "empty", "missing", "no_data_key", "no_labels_key",
                                  "wrong_size", "wrong_dtype", "label_count", "label_range", "label_negative",
                                  "label_float", "label_float_array", "label_nan", "label_str", "label_bool",
                                  "label_none", "not_a_dict"])
def test_corrupted_batch_file_names_file_and_problem(tmp_path, no_network, kind):
    write_cifar10(tmp_path)
    path = tmp_path / SPEC10.folder / "data_batch_3"
    msg = _corrupt(kind, path)
    with pytest.raises(CorruptDataError, match=msg) as e:
        load_dataset("cifar10", data_dir=tmp_path, check_counts=False)
    assert str(path) in str(e.value)


def test_whole_number_float_labels_load_as_integers(tmp_path, no_network):
    """A copy that stores its labels as floats holding whole numbers is not corrupt."""
    _, ytr, _, _ = write_cifar10(tmp_path)
    path = tmp_path / SPEC10.folder / "data_batch_1"
    d = pickle.loads(path.read_bytes(), encoding="bytes")
    d[b"labels"] = np.asarray(d[b"labels"], dtype=np.float64)
    pickle_dump(path, d)
    ds = load_dataset("cifar10", data_dir=tmp_path, check_counts=False)
    assert ds.y_train.dtype == np.int64
    np.testing.assert_array_equal(ds.y_train, ytr)


def test_corrupted_meta_file(tmp_path, no_network):
    write_cifar10(tmp_path)
    meta = tmp_path / SPEC10.folder / "batches.meta"
    pickle_dump(meta, {b"label_names": [b"a", b"b"]})
    with pytest.raises(CorruptDataError, match="expected 10 class names, got 2"):
        load_dataset("cifar10", data_dir=tmp_path, check_counts=False)
    pickle_dump(meta, {b"num_vis": 3072})
    with pytest.raises(CorruptDataError, match="missing key b'label_names'"):
        load_dataset("cifar10", data_dir=tmp_path, check_counts=False)


class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (Path.touch, (Path(self.target),))


def test_batch_file_cannot_run_code(tmp_path, no_network):
    write_cifar10(tmp_path)
    path = tmp_path / SPEC10.folder / "data_batch_1"
    target = tmp_path / "pwned"
    pickle_dump(path, {b"data": _Evil(target), b"labels": []})
    with pytest.raises(CorruptDataError, match=r"not a CIFAR batch file \(refusing to load "):
        load_dataset("cifar10", data_dir=tmp_path, check_counts=False)
    assert not target.exists()


# ----------------------------------------------------------------------------------------------
# data root and the offline error
# ----------------------------------------------------------------------------------------------
def test_data_root_order_arg_env_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("MINIGNN_DATA", str(tmp_path / "env"))
    assert resolve_data_root(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_root(str(tmp_path / "arg")) == tmp_path / "arg"
    assert resolve_data_root() == tmp_path / "env"
    monkeypatch.setenv("MINIGNN_DATA", "")  # empty = unset
    assert resolve_data_root() == tmp_path / "xdg" / "minignn" / "data"
    monkeypatch.delenv("MINIGNN_DATA")
    assert resolve_data_root() == tmp_path / "xdg" / "minignn" / "data"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_data_root() == tmp_path / "home" / ".cache" / "minignn" / "data"


def test_env_root_is_used_for_loading(tmp_path, monkeypatch, no_network):
    write_cifar10(tmp_path / "shared")
    monkeypatch.setenv("MINIGNN_DATA", str(tmp_path / "shared"))
    assert load_dataset("cifar10", check_counts=False).x_train.shape[0] == 25


def test_offline_error_lists_every_place_and_the_fix(tmp_path, clean_env, no_network):
    with pytest.raises(DatasetNotFoundError) as e:
        load_dataset("cifar10")
    msg = str(e.value)
    root = tmp_path / "xdg" / "minignn" / "data"
    for part in (str(root / SPEC10.folder), str(root / SPEC10.archive), SPEC10.url, "no network in tests",
                 "per-user cache", "--data-dir", "MINIGNN_DATA"):
        assert part in msg, f"{part!r} missing from: {msg}"
    assert no_network == [SPEC10.url]
    assert not (root / SPEC10.archive).exists() and not (root / (SPEC10.archive + ".part")).exists()


def test_no_download_error_names_the_source(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("MINIGNN_DATA", str(tmp_path / "env"))
    with pytest.raises(DatasetNotFoundError, match=r"(?s)download=False.*environment variable MINIGNN_DATA"):
        load_dataset("cifar100", download=False)
    assert no_network == []
    with pytest.raises(DatasetNotFoundError, match=r"data_dir argument"):
        load_dataset("cifar100", data_dir=tmp_path / "arg", download=False)


def test_load_dataset_bad_arguments():
    with pytest.raises(ValueError, match=r"expected one of \('cifar10', 'cifar100', 'cifar100-coarse', 'synthetic'\), got 'mnist'"):
        load_dataset("mnist")
    with pytest.raises(TypeError, match="apply to 'synthetic' only"):
        load_dataset("cifar10", n_train=5)


# ----------------------------------------------------------------------------------------------
# download, checksum and extraction
# ----------------------------------------------------------------------------------------------
@pytest.fixture
def small_archive(tmp_path):
    """A small cifar-10-python.tar.gz (canonical layout) and its MD5, outside the data root."""
    src = tmp_path / "src"
    arrays = write_cifar10(src)
    archive = tmp_path / "served" / SPEC10.archive
    archive.parent.mkdir()
    md5 = make_archive(src, SPEC10.folder, archive)
    return archive, md5, arrays


def _serve(monkeypatch, archive, md5):
    monkeypatch.setitem(cifar.SPECS, "cifar10", dataclasses.replace(SPEC10, url=archive.as_uri(), md5=md5))


def test_download_verify_extract_then_reuse(tmp_path, monkeypatch, small_archive):
    archive, md5, (xtr, ytr, _, _) = small_archive
    _serve(monkeypatch, archive, md5)
    root = tmp_path / "root"
    ds = load_dataset("cifar10", data_dir=root, check_counts=False, progress=False)
    np.testing.assert_array_equal(ds.x_train.reshape(len(xtr), -1), xtr)
    np.testing.assert_array_equal(ds.y_train, ytr)
    assert (root / SPEC10.archive).is_file() and (root / SPEC10.folder).is_dir()
    assert sorted(p.name for p in root.iterdir()) == sorted([SPEC10.archive, SPEC10.folder])  # no .part, no temp folder
    # once extracted: no download, no archive check (a different archive is ignored)
    (root / SPEC10.archive).write_bytes(b"not the archive any more")
    monkeypatch.setattr(cifar, "urlopen", lambda *a, **k: pytest.fail("downloaded again"))
    ds2 = load_dataset("cifar10", data_dir=root, check_counts=False)
    np.testing.assert_array_equal(ds2.x_train, ds.x_train)


def test_existing_archive_is_verified_and_extracted(tmp_path, monkeypatch, small_archive, no_network):
    archive, md5, (xtr, _, _, _) = small_archive
    _serve(monkeypatch, archive, md5)
    root = tmp_path / "root"
    root.mkdir()
    (root / SPEC10.archive).write_bytes(archive.read_bytes())
    ds = load_dataset("cifar10", data_dir=root, check_counts=False)
    assert ds.x_train.shape[0] == len(xtr) and no_network == []


def test_existing_archive_with_wrong_md5(tmp_path, monkeypatch, small_archive, no_network):
    archive, md5, _ = small_archive
    _serve(monkeypatch, archive, "0" * 32)
    root = tmp_path / "root"
    root.mkdir()
    (root / SPEC10.archive).write_bytes(archive.read_bytes())
    with pytest.raises(ChecksumError, match=rf"MD5 mismatch: expected 0{{32}} .* got {md5}"):
        load_dataset("cifar10", data_dir=root, check_counts=False)
    assert (root / SPEC10.archive).exists()  # a file the user put there is not deleted
    assert not (root / SPEC10.folder).exists()


def test_download_md5_mismatch_removes_the_file(tmp_path, monkeypatch, small_archive):
    archive, md5, _ = small_archive
    _serve(monkeypatch, archive, "f" * 32)
    root = tmp_path / "root"
    with pytest.raises(ChecksumError, match=rf"MD5 mismatch: expected f{{32}}, got {md5}.*removed"):
        load_dataset("cifar10", data_dir=root, check_counts=False, progress=False)
    assert list(root.iterdir()) == []


class _FlakyResponse:
    """Serves ``payload`` in small chunks and fails with ``exc`` after ``fail_after`` reads."""

    def __init__(self, payload, fail_after, exc, length=None, on_read=None):
        self.on_read = on_read
        self.stream = io.BytesIO(payload)
        self.reads = 0
        self.fail_after, self.exc = fail_after, exc
        self.headers = {"Content-Length": str(len(payload) if length is None else length)}

    def read(self, n=-1):
        self.reads += 1
        if self.on_read is not None:
            self.on_read()
        if self.fail_after is not None and self.reads > self.fail_after:
            raise self.exc
        return self.stream.read(min(n, 997))

    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


@pytest.mark.parametrize("exc", [ConnectionResetError("connection reset by peer"), KeyboardInterrupt()])
def test_interrupted_download_leaves_no_complete_looking_file(tmp_path, monkeypatch, small_archive, exc):
    archive, md5, _ = small_archive
    _serve(monkeypatch, archive, md5)
    payload = archive.read_bytes()
    root = tmp_path / "root"
    seen = []

    def on_read():  # a hard kill at any moment must not leave a file under the final name
        seen.append(((root / SPEC10.archive).exists(), (root / (SPEC10.archive + ".part")).exists()))

    monkeypatch.setattr(cifar, "urlopen", lambda url, timeout=None: _FlakyResponse(payload, 3, exc, on_read=on_read))
    expected = KeyboardInterrupt if isinstance(exc, KeyboardInterrupt) else DatasetNotFoundError
    with pytest.raises(expected, match="connection reset" if expected is DatasetNotFoundError else None):
        load_dataset("cifar10", data_dir=root, check_counts=False, progress=False)
    assert list(root.iterdir()) == []  # no archive, no .part, no folder
    assert seen[0] == (False, True) and set(seen) == {(False, True)}
    # and a later run starts cleanly
    monkeypatch.setattr(cifar, "urlopen", lambda url, timeout=None: _FlakyResponse(payload, None, None))
    assert load_dataset("cifar10", data_dir=root, check_counts=False, progress=False).x_train.shape[0] == 25


def test_short_download_is_rejected(tmp_path, monkeypatch, small_archive):
    archive, md5, _ = small_archive
    _serve(monkeypatch, archive, md5)
    payload = archive.read_bytes()
    monkeypatch.setattr(cifar, "urlopen",
                        lambda url, timeout=None: _FlakyResponse(payload[:500], None, None, length=len(payload)))
    root = tmp_path / "root"
    with pytest.raises(CorruptDataError, match=rf"incomplete: got 500 of {len(payload)} bytes"):
        load_dataset("cifar10", data_dir=root, check_counts=False, progress=False)
    assert list(root.iterdir()) == []


def _tar_with(path, add):
    with tarfile.open(path, "w:gz") as tar:
        add(tar)


def _add_file(tar, name, data=b"x"):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("evil", ["dotdot", "absolute", "symlink", "hardlink", "device"])
def test_safe_extraction_rejects_members_outside_the_root(tmp_path, evil):
    archive = tmp_path / "evil.tar.gz"

    def add(tar):
        _add_file(tar, f"{SPEC10.folder}/batches.meta")
        if evil == "dotdot":
            _add_file(tar, f"{SPEC10.folder}/../../escaped")
        elif evil == "absolute":
            _add_file(tar, str(tmp_path / "escaped"))
        else:
            info = tarfile.TarInfo(f"{SPEC10.folder}/link")
            info.type = {"symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE, "device": tarfile.CHRTYPE}[evil]
            info.linkname = "/etc/passwd"
            tar.addfile(info)

    _tar_with(archive, add)
    root = tmp_path / "root"
    with pytest.raises(CorruptDataError, match=r"unsafe member|is a link|special file|outside"):
        cifar.safe_extract(archive, root, SPEC10.folder)
    assert not (tmp_path / "escaped").exists()
    assert list(root.iterdir()) == []  # nothing extracted, temp folder removed


def test_extraction_of_a_corrupt_or_wrong_archive(tmp_path):
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(CorruptDataError, match="cannot be extracted"):
        cifar.safe_extract(bad, tmp_path / "root", SPEC10.folder)
    wrong = tmp_path / "wrong.tar.gz"
    _tar_with(wrong, lambda tar: _add_file(tar, "something-else/file"))
    with pytest.raises(CorruptDataError, match=r"has no cifar-10-batches-py/ folder"):
        cifar.safe_extract(wrong, tmp_path / "root", SPEC10.folder)
    assert list((tmp_path / "root").iterdir()) == []


# ----------------------------------------------------------------------------------------------
# the real data (skips with a reason when absent)
# ----------------------------------------------------------------------------------------------
REAL_ROOT = Path(os.environ.get("MINIGNN_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")


@pytest.mark.data
@pytest.mark.skipif(not (REAL_ROOT / SPEC10.folder).is_dir(), reason=f"no CIFAR-10 folder in {REAL_ROOT}")
def test_real_cifar10(no_network):
    ds = load_dataset("cifar10", data_dir=REAL_ROOT, download=False)
    assert ds.x_train.shape == (50000, 3, 32, 32) and ds.x_test.shape == (10000, 3, 32, 32)
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int64
    assert len(ds.classes) == 10 and ds.classes[0] == "airplane"
    for y in (ds.y_train, ds.y_test):
        assert y.min() == 0 and y.max() == 9
        assert np.bincount(y, minlength=10).min() > 0.09 * len(y)
    # the familiar CIFAR-10 statistics (this copy is a JPEG re-encoding: close, not equal)
    np.testing.assert_allclose(ds.mean, [0.4914, 0.4822, 0.4465], atol=0.01)
    np.testing.assert_allclose(ds.std, [0.2470, 0.2435, 0.2616], atol=0.01)
    assert no_network == []


# ----------------------------------------------------------------------------------------------
# the synthetic dataset
# ----------------------------------------------------------------------------------------------
def test_synthetic_is_named_deterministic_and_balanced():
    a = synthetic_dataset(n_train=60, n_test=20, seed=3)
    b = load_dataset("synthetic", n_train=60, n_test=20, seed=3)
    c = synthetic_dataset(n_train=60, n_test=20, seed=4)
    assert a.name == b.name == "synthetic" and "synthetic" in a.source
    assert all(name.startswith("synthetic_") for name in a.classes) and len(a.classes) == 10
    for f in ("x_train", "y_train", "x_test", "y_test", "mean", "std"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    assert not np.array_equal(a.x_train, c.x_train)
    assert a.x_train.shape == (60, 3, 32, 32) and a.x_train.dtype == np.uint8 and a.y_train.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(a.y_train), [6] * 10)
    # the test set does not depend on n_train
    np.testing.assert_array_equal(synthetic_dataset(n_train=10, n_test=20, seed=3).x_test, a.x_test)
    s = synthetic_dataset(n_train=8, n_test=4, num_classes=3, image_size=8)
    assert s.x_train.shape == (8, 3, 8, 8) and s.y_train.max() < 3


def test_synthetic_is_learnable():
    """A nearest-class-mean classifier on 4x4-pooled images already separates the classes."""
    ds = synthetic_dataset(n_train=400, n_test=200, seed=1)

    def feat(x):
        return x.reshape(len(x), 3, 4, 8, 4, 8).mean(axis=(3, 5)).reshape(len(x), -1)

    ftr, fte = feat(ds.x_train.astype(np.float64)), feat(ds.x_test.astype(np.float64))
    centroids = np.stack([ftr[ds.y_train == k].mean(0) for k in range(10)])
    pred = np.argmin(((fte[:, None, :] - centroids[None]) ** 2).sum(-1), axis=1)
    acc = (pred == ds.y_test).mean()
    assert acc > 0.8, acc
    # and it is not trivially constant within a class: pixel noise is present
    assert ds.x_train[ds.y_train == 0].std(axis=0).mean() > 10


def test_synthetic_bad_arguments():
    with pytest.raises(ValueError, match="num_classes: expected an integer >= 2, got 1"):
        synthetic_dataset(num_classes=1)
    with pytest.raises(ValueError, match="n_train: expected an integer >= 1, got 0"):
        synthetic_dataset(n_train=0)


def test_dataset_limit_keeps_statistics():
    ds = synthetic_dataset(n_train=40, n_test=20)
    small = ds.limit(n_train=10, n_test=5)
    assert small.x_train.shape[0] == 10 and small.y_test.shape == (5,) and small.name == "synthetic"
    np.testing.assert_array_equal(small.mean, ds.mean)
    # a seeded random subset in the original order, the same for the same seed
    idx = [int(np.flatnonzero((ds.x_train == img).all(axis=(1, 2, 3)))[0]) for img in small.x_train]
    assert idx == sorted(idx) and len(set(idx)) == 10
    np.testing.assert_array_equal(small.y_train, ds.y_train[idx])
    np.testing.assert_array_equal(ds.limit(n_train=10, n_test=5).x_train, small.x_train)
    np.testing.assert_array_equal(ds.limit(n_test=5).y_test, small.y_test)   # independent of n_train
    assert ds.limit().x_train.shape[0] == 40 and ds.limit(n_train=40).x_train.shape[0] == 40


def test_dataset_limit_is_not_the_first_images_of_a_class_sorted_split():
    x = np.zeros((100, 3, 2, 2), np.uint8)
    y = np.repeat(np.arange(10), 10)                      # sorted by class, like the shared test split
    ds = synthetic_dataset(n_train=40, n_test=20)
    sorted_ds = type(ds)(**{**ds.__dict__, "x_test": x, "y_test": y})
    assert len(np.unique(sorted_ds.limit(n_test=30).y_test)) >= 5


@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 5), h=st.integers(1, 6), w=st.integers(1, 6))
def test_channel_stats_match_numpy(seed, n, h, w):
    x = np.random.default_rng(seed).integers(0, 256, (n, 3, h, w), dtype=np.uint8)
    mean, std = channel_stats(x, chunk=2)
    ref = x.transpose(1, 0, 2, 3).reshape(3, -1).astype(np.float64) / 255
    np.testing.assert_allclose(mean, ref.mean(1), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(std, ref.std(1), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# augmentation
# ----------------------------------------------------------------------------------------------
def crop_flip_per_image(x, dy, dx, flip, pad):
    """The plain per-image recipe: zero-pad, slice, maybe flip."""
    out = np.empty_like(x)
    h, w = x.shape[2:]
    for k in range(len(x)):
        p = np.pad(x[k], ((0, 0), (pad, pad), (pad, pad)))
        crop = p[:, dy[k]:dy[k] + h, dx[k]:dx[k] + w]
        out[k] = crop[:, :, ::-1] if flip[k] else crop
    return out


@given(seed=st.integers(0, 2**31 - 1), n=st.integers(0, 6), c=st.integers(1, 3), h=st.integers(1, 7),
       w=st.integers(1, 7), pad=st.integers(0, 4))
def test_crop_flip_matches_per_image_reference(seed, n, c, h, w, pad):
    rng = np.random.default_rng(seed)
    x = rng.integers(1, 256, (n, c, h, w), dtype=np.uint8)  # no zeros: padding is visible
    dy, dx, flip = loader.augment_params(rng, n, pad)
    got = crop_flip(x, dy, dx, flip, pad)
    assert got.shape == x.shape and got.dtype == np.uint8
    np.testing.assert_array_equal(got, crop_flip_per_image(x, dy, dx, flip, pad))


@given(seed=st.integers(0, 2**31 - 1), n=st.integers(0, 6), c=st.integers(1, 3), h=st.integers(1, 7),
       w=st.integers(1, 7), pad=st.integers(0, 9), augment=st.booleans())
def test_fused_cpu_kernel_matches_xp_path_and_reference(seed, n, c, h, w, pad, augment):
    rng = np.random.default_rng(seed)
    x = rng.integers(1, 256, (n + 3, c, h, w), dtype=np.uint8)
    idx = rng.permutation(n + 3)[:n]
    mean, std = rng.uniform(0.2, 0.8, c), rng.uniform(0.1, 0.4, c)
    params = loader.augment_params(rng, n, pad) if augment else (None, None, None)
    got = loader.make_batch_cpu(x, idx, *params, pad, mean, std)
    xp_path = loader.make_batch_xp(x, idx, *params, pad, mean, std)
    ref = crop_flip_per_image(x[idx], *params, pad) if augment else x[idx]
    assert got.dtype == np.float32 and got.shape == (n, c, h, w)
    np.testing.assert_array_equal(got, xp_path)
    np.testing.assert_allclose(got, normalize(ref, mean, std), rtol=0, atol=0)


def test_crop_flip_known_cases():
    x = np.arange(1, 17, dtype=np.uint8).reshape(1, 1, 4, 4)
    same = crop_flip(x, np.array([2]), np.array([2]), np.array([False]), 2)
    np.testing.assert_array_equal(same, x)  # offset == pad: no shift
    np.testing.assert_array_equal(crop_flip(x, np.array([2]), np.array([2]), np.array([True]), 2), x[..., ::-1])
    down_right = crop_flip(x, np.array([0]), np.array([0]), np.array([False]), 1)  # content moves down-right
    np.testing.assert_array_equal(down_right[0, 0, 0], [0, 0, 0, 0])
    np.testing.assert_array_equal(down_right[0, 0, 1:, 0], [0, 0, 0])
    np.testing.assert_array_equal(down_right[0, 0, 1:, 1:], x[0, 0, :3, :3])


def test_augment_params_ranges():
    dy, dx, flip = loader.augment_params(np.random.default_rng(0), 4000, 4)
    for v in (dy, dx):
        assert v.min() == 0 and v.max() == 8 and len(np.unique(v)) == 9
    assert 0.45 < flip.mean() < 0.55


def test_normalize_matches_formula():
    x = np.random.default_rng(0).integers(0, 256, (3, 3, 4, 5), dtype=np.uint8)
    mean, std = [0.1, 0.5, 0.9], [0.2, 0.3, 0.25]
    got = normalize(x, mean, std)
    ref = (x / 255.0 - np.array(mean)[None, :, None, None]) / np.array(std)[None, :, None, None]
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# the batch loader
# ----------------------------------------------------------------------------------------------
MEAN, STD = np.array([0.4, 0.5, 0.6]), np.array([0.2, 0.25, 0.3])


def id_images(n, h=4, w=4):
    """Image k is constant k (k < 256), so a normalised batch tells which images it holds."""
    return np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, 3, h, w)).copy()


def decode_ids(xb):
    return np.rint((xb[:, 0, 0, 0] * STD[0] + MEAN[0]) * 255).astype(int)


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("drop_last", [True, False])
def test_loader_covers_every_sample_once(train, drop_last):
    n, b = 23, 5
    x, y = id_images(n), np.arange(n) * 7 % 10
    ld = BatchLoader(x, y, b, train=train, augment=False, mean=MEAN, std=STD, seed=1, drop_last=drop_last)
    assert ld.num_batches(0) == (4 if drop_last else 5) == len(ld)
    seen = []
    for xb, yb in ld.batches(2):
        assert xb.dtype == np.float32 and xb.shape[1:] == (3, 4, 4) and yb.dtype == np.int64
        ids = decode_ids(xb)
        np.testing.assert_array_equal(yb, y[ids])
        np.testing.assert_allclose(xb, normalize(x[ids], MEAN, STD))
        seen += list(ids)
    assert len(seen) == (20 if drop_last else 23) and len(set(seen)) == len(seen)
    if train:
        assert seen != sorted(seen)
        np.testing.assert_array_equal(seen, loader.epoch_permutation(n, 1, 2)[:len(seen)])
    else:
        assert seen == list(range(len(seen)))


@given(seed=st.integers(0, 2**31 - 1), epoch=st.integers(0, 1000), n=st.integers(1, 40), b=st.integers(1, 9),
       augment=st.booleans(), drop_last=st.booleans(), data=st.data())
def test_batches_are_pure_functions_of_seed_epoch_index(seed, epoch, n, b, augment, drop_last, data):
    x = np.random.default_rng(0).integers(0, 256, (n, 3, 6, 6), dtype=np.uint8)
    y = np.arange(n) % 10
    kw = dict(batch_size=b, train=True, augment=augment, mean=MEAN, std=STD, seed=seed, drop_last=drop_last)
    one, two = BatchLoader(x, y, **kw), BatchLoader(x, y, **kw)
    full = list(one.batches(epoch))
    assert len(full) == one.num_batches(epoch)
    start = data.draw(st.integers(0, len(full)), label="start")
    resumed = list(two.batches(epoch, start=start))  # a fresh loader, as after a restart
    assert len(resumed) == len(full) - start
    for (xa, ya), (xb, yb) in zip(full[start:], resumed):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    if full:
        i = data.draw(st.integers(0, len(full) - 1), label="i")
        xi, yi = two.batch(epoch, i)
        np.testing.assert_array_equal(xi, full[i][0])
        np.testing.assert_array_equal(yi, full[i][1])


def test_augmented_batch_follows_the_documented_recipe():
    """Batch i uses crop/flip parameters from SeedSequence([seed, epoch, i, AUG_TAG]) on the
    permutation from SeedSequence([seed, epoch, PERM_TAG]), zero padding in pixel space."""
    ds = synthetic_dataset(n_train=50, n_test=1, image_size=8)
    ld = BatchLoader(ds.x_train, ds.y_train, 16, train=True, augment=True, mean=ds.mean, std=ds.std, seed=9)
    seed, epoch, i = 9, 3, 2
    order = np.random.default_rng(np.random.SeedSequence([seed, epoch, loader.PERM_TAG])).permutation(50)
    idx = order[i * 16:(i + 1) * 16]
    rng = np.random.default_rng(np.random.SeedSequence([seed, epoch, i, loader.AUG_TAG]))
    dy, dx, flip = loader.augment_params(rng, 16, 4)
    expected = normalize(crop_flip_per_image(ds.x_train[idx], dy, dx, flip, 4), ds.mean, ds.std)
    xb, yb = ld.batch(epoch, i)
    np.testing.assert_array_equal(xb, expected)
    np.testing.assert_array_equal(yb, ds.y_train[idx])
    # black (pixel 0) padding becomes -mean/std after normalisation
    assert flip.any() and (~flip).any() and (dy != 4).any()
    pad_value = (-ds.mean / ds.std).astype(np.float32)
    k = int(np.argmax(dy == 0))  # an image shifted down: its first rows are padding
    np.testing.assert_allclose(xb[k, :, 0, :], np.broadcast_to(pad_value[:, None], (3, 8)), rtol=1e-6)


def test_epochs_and_seeds_differ_and_augmentation_varies():
    ds = synthetic_dataset(n_train=64, n_test=1, image_size=8)
    kw = dict(batch_size=64, train=True, augment=True, mean=ds.mean, std=ds.std)
    a = BatchLoader(ds.x_train, ds.y_train, seed=0, **kw)
    b = BatchLoader(ds.x_train, ds.y_train, seed=1, **kw)
    assert not np.array_equal(a.order(0), a.order(1))
    assert not np.array_equal(a.order(0), b.order(0))
    x0, _ = a.batch(0, 0)
    plain = BatchLoader(ds.x_train, ds.y_train, seed=0, **{**kw, "augment": False}).batch(0, 0)[0]
    assert not np.array_equal(x0, plain)  # augmentation did something
    np.testing.assert_array_equal(a.batch(0, 0)[0], x0)  # and is repeatable


def test_flip_and_crop_controls():
    x = np.random.default_rng(0).integers(0, 256, (6, 3, 5, 5), dtype=np.uint8)
    y = np.zeros(6, int)
    base = dict(batch_size=6, train=False, augment=True, mean=MEAN, std=STD)
    always = BatchLoader(x, y, pad=0, flip_p=1.0, **base).batch(0, 0)[0]
    never = BatchLoader(x, y, pad=0, flip_p=0.0, **base).batch(0, 0)[0]
    np.testing.assert_array_equal(never, normalize(x, MEAN, STD))
    np.testing.assert_array_equal(always, normalize(x[..., ::-1], MEAN, STD))


def test_start_skips_without_computing(monkeypatch):
    ds = synthetic_dataset(n_train=40, n_test=1, image_size=8)
    ld = BatchLoader(ds.x_train, ds.y_train, 4, train=True, augment=True, mean=ds.mean, std=ds.std, seed=0)
    calls = []
    real = loader.make_batch
    monkeypatch.setattr(loader, "make_batch", lambda *a: calls.append(1) or real(*a))
    assert len(list(ld.batches(0, start=7))) == 3 and len(calls) == 3
    assert list(ld.batches(0, start=10)) == []


def test_loader_bad_arguments():
    x, y = np.zeros((4, 3, 4, 4), np.uint8), np.zeros(4, int)
    ok = dict(batch_size=2, train=True, augment=False, mean=MEAN, std=STD)
    with pytest.raises(TypeError, match=r"x: expected a uint8 array \(N, C, H, W\) of raw pixels, got float32"):
        BatchLoader(x.astype(np.float32), y, **ok)
    with pytest.raises(TypeError, match="x: expected a uint8 array"):
        BatchLoader(x[0], y, **ok)
    with pytest.raises(ValueError, match=r"y: expected shape \(4,\) \(one label per image\), got \(3,\)"):
        BatchLoader(x, y[:3], **ok)
    with pytest.raises(TypeError, match="y: expected integer class labels, got dtype float64"):
        BatchLoader(x, y.astype(float), **ok)
    with pytest.raises(ValueError, match=r"mean, std: expected 3 values each \(one per channel\), got 2 and 3"):
        BatchLoader(x, y, **{**ok, "mean": [0.5, 0.5]})
    with pytest.raises(ValueError, match="std must be > 0"):
        BatchLoader(x, y, **{**ok, "std": [0.2, 0.0, 0.2]})
    with pytest.raises(ValueError, match="batch_size: expected an integer >= 1, got 0"):
        BatchLoader(x, y, **{**ok, "batch_size": 0})
    with pytest.raises(ValueError, match="seed: expected an integer >= 0, got -1"):
        BatchLoader(x, y, seed=-1, **ok)
    with pytest.raises(ValueError, match=r"flip_p: expected a number in \[0, 1\], got 1.5"):
        BatchLoader(x, y, flip_p=1.5, **ok)
    ld = BatchLoader(x, y, **ok)
    with pytest.raises(ValueError, match=r"start: expected 0 <= start <= 2, got 3"):
        next(ld.batches(0, start=3))
    with pytest.raises(ValueError, match="epoch: expected an integer >= 0, got -1"):
        next(ld.batches(-1))
    with pytest.raises(IndexError, match=r"i: expected 0 <= i < 2 \(batches per epoch\), got 2"):
        ld.batch(0, 2)


def test_dataset_repr_is_short():
    ds = synthetic_dataset(n_train=4, n_test=2, image_size=4)
    assert isinstance(ds, Dataset) and "synthetic" in repr(ds) and len(repr(ds)) < 300


# --- the sequence protocol: len(ds), ds[i], ds.train / ds.test, for xb, yb in loader -------------
def test_a_dataset_is_a_sequence_of_its_training_pairs():
    ds = synthetic_dataset(n_train=40, n_test=12, seed=3)
    assert len(ds) == 40 and len(ds.train) == 40 and len(ds.test) == 12
    x, y = ds[5]
    assert x.dtype == np.uint8 and x.shape == (3, 32, 32) and type(y) is int
    assert np.array_equal(x, ds.x_train[5]) and y == ds.y_train[5]
    x, y = ds.test[-1]
    assert np.array_equal(x, ds.x_test[11]) and y == ds.y_test[11]
    xs, ys = ds[2:6]
    assert np.array_equal(xs, ds.x_train[2:6]) and np.array_equal(ys, ds.y_train[2:6])
    xs, ys = ds.test[[0, 3, -1]]
    assert np.array_equal(xs, ds.x_test[[0, 3, 11]]) and ys.dtype == np.int64
    pairs = list(ds.test)
    assert len(pairs) == 12 and all(np.array_equal(a, ds.x_test[i]) and b == ds.y_test[i]
                                    for i, (a, b) in enumerate(pairs))
    with pytest.raises(IndexError, match=r"train\[index\]: expected -40 <= index < 40 .* got 40"):
        ds[40]
    with pytest.raises(IndexError, match=r"test\[index\]: indices must lie in \[-12, 12\)"):
        ds.test[[0, 12]]
    for bad in (True, 1.5, "a", [[0, 1]]):
        with pytest.raises(TypeError, match="expected an integer, a slice or a list of integers"):
            ds[bad]


def test_iterating_a_loader_runs_epoch_after_epoch():
    ds = synthetic_dataset(n_train=40, n_test=12, seed=3)
    loader = ds.loader("train", batch_size=16)
    assert loader.train and loader.augment and len(loader) == 3 and loader.epoch == 0
    for epoch in range(3):
        got = list(loader)
        want = list(loader.batches(epoch))
        assert len(got) == 3 and loader.epoch == epoch + 1
        for (xa, ya), (xb, yb) in zip(got, want):
            assert np.array_equal(xa, xb) and np.array_equal(ya, yb)
    first = [y for _, y in loader.batches(0)]
    loader.set_epoch(0)
    assert all(np.array_equal(a, b) for a, b in zip([y for _, y in loader], first))
    with pytest.raises(ValueError, match="set_epoch: epoch: expected an integer >= 0"):
        loader.set_epoch(-1)
    test = ds.loader("test", batch_size=5)
    assert not test.train and not test.augment
    xb, yb = next(iter(test))
    np.testing.assert_array_equal(yb, ds.y_test[:5])
    np.testing.assert_allclose(xb, ((ds.x_test[:5] / 255.0 - ds.mean[None, :, None, None])
                                    / ds.std[None, :, None, None]), rtol=1e-6, atol=1e-5)
    assert not ds.loader("train", 16, augment=False).augment
    with pytest.raises(ValueError, match="split: expected 'train' or 'test', got 'val'"):
        ds.loader("val")
