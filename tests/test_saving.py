"""minignn.save / minignn.load and ``minignn predict``: a model round-trips with its class names and
normalisation, a run's best.npz / checkpoint.npz / folder loads as a model, predictions equal a
plain NumPy preparation of the pixels and a softmax of the model's outputs, and bad input gets a
one-line error naming what is wrong."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import minignn
from minignn import init
from minignn.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from minignn.models import build_model
from minignn.module import Sequential
from minignn.predict import predict, read_image
from minignn.train import TrainConfig, Trainer

ROOT = Path(__file__).resolve().parents[1]
CLASSES = [f"class{i}" for i in range(10)]
MEAN, STD = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]


def _model(name="tiny", pool="gfgp", seed=0, **kw):
    init.manual_seed(seed)
    m = build_model(name, pool=pool, width=kw.pop("width", 0.25), **kw)
    # move the batch-norm running statistics off their initial values, so a load that forgot the
    # buffers would show
    x = np.random.default_rng(seed).standard_normal((4, 3, 32, 32)).astype(np.float32)
    m.train()
    m.forward(x)
    return m


def _outputs(model, x):
    model.eval()
    return model.forward(x)


@pytest.mark.parametrize("name,pool,kw", [("tiny", "gfgp", {"hidden": 0.5, "stat": "max"}),
                                          ("tiny", "maxent-param", {"lam_init": 2.0}),
                                          ("resnet20", "skip", {}), ("vgg11", "max", {"width": 0.125})])
def test_a_saved_model_loads_with_the_same_outputs(tmp_path, name, pool, kw):
    m = _model(name, pool, **kw)
    x = np.random.default_rng(1).standard_normal((3, 3, 32, 32)).astype(np.float32)
    want = _outputs(m, x)
    path = minignn.save(m, tmp_path / "m.npz", classes=CLASSES, mean=MEAN, std=STD)
    assert path == str(tmp_path / "m.npz")
    m2 = minignn.load(tmp_path / "m.npz")
    assert not m2.training
    assert m2.build_spec == m.build_spec
    assert m2.classes == tuple(CLASSES) and m2.image_shape == (3, 32, 32)
    np.testing.assert_array_equal(m2.mean, np.float32(MEAN))
    np.testing.assert_array_equal(m2.std, np.float32(STD))
    for (k, a), (k2, b) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert k == k2 and np.array_equal(a, b), k
    np.testing.assert_array_equal(m2.forward(x), want)
    # and the loaded model saves again with what it carries
    minignn.save(m2, tmp_path / "again.npz")
    m3 = minignn.load(tmp_path / "again.npz")
    assert m3.classes == tuple(CLASSES) and np.array_equal(m3.std, m2.std)
    np.testing.assert_array_equal(m3.forward(x), want)


def test_build_model_records_how_to_build_it_again():
    m = build_model("resnet20", pool="gfgp", num_classes=7, width=0.5, hidden=0.25)
    assert m.build_spec == {"model": "resnet20", "pool": "gfgp", "num_classes": 7, "width": 0.5,
                            "pool_kw": {"hidden": 0.25}}


def test_save_defaults_and_what_the_file_holds(tmp_path):
    m = _model()
    minignn.save(m, tmp_path / "m.npz")
    state = load_checkpoint(str(tmp_path / "m.npz"))
    assert state["kind"] == "model" and state["spec"] == m.build_spec
    assert state["classes"] == [str(i) for i in range(10)] and state["mean"] is None and state["std"] is None
    m2 = minignn.load(tmp_path / "m.npz")
    assert m2.mean is None and m2.classes == tuple(str(i) for i in range(10))
    with pytest.raises(ValueError, match="no normalisation statistics"):
        predict(m2, np.zeros((1, 3, 32, 32), np.uint8))


def test_save_refuses_what_it_cannot_describe(tmp_path):
    from minignn.layers import Flatten, Linear
    with pytest.raises(TypeError, match="without build_spec"):
        minignn.save(Sequential(Flatten(), Linear(4, 2)), tmp_path / "m.npz")
    m = _model()
    with pytest.raises(ValueError, match="classes: the model has 10 outputs but 3"):
        minignn.save(m, tmp_path / "m.npz", classes=["a", "b", "c"])
    with pytest.raises(TypeError, match="classes: expected a sequence of class names"):
        minignn.save(m, tmp_path / "m.npz", classes="abcdefghij")
    with pytest.raises(ValueError, match=r"std: expected finite values > 0"):
        minignn.save(m, tmp_path / "m.npz", mean=MEAN, std=[0.2, 0.0, 0.2])
    with pytest.raises(ValueError, match=r"mean: expected 3 values"):
        minignn.save(m, tmp_path / "m.npz", mean=[0.5], std=STD)
    with pytest.raises(ValueError, match="give both"):
        minignn.save(m, tmp_path / "m.npz", mean=MEAN)
    with pytest.raises(IsADirectoryError, match="is a folder"):
        minignn.save(m, tmp_path)
    with pytest.raises(TypeError, match="model: expected a minignn Module"):
        minignn.save({"w": 1}, tmp_path / "m.npz")
    assert not (tmp_path / "m.npz").exists()


def test_an_interrupted_save_keeps_the_earlier_file(tmp_path, monkeypatch):
    m = _model()
    minignn.save(m, tmp_path / "m.npz", classes=CLASSES, mean=MEAN, std=STD)
    before = (tmp_path / "m.npz").read_bytes()

    def boom(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(KeyboardInterrupt):
        minignn.save(_model(seed=5), tmp_path / "m.npz", classes=CLASSES, mean=MEAN, std=STD)
    assert (tmp_path / "m.npz").read_bytes() == before
    assert os.listdir(tmp_path) == ["m.npz"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished one-epoch run on synthetic data: its folder and the trainer (model, dataset)."""
    out = tmp_path_factory.mktemp("run") / "r"
    config = TrainConfig(dataset="synthetic", limit_train=48, limit_test=32, batch_size=16, width=0.25, epochs=1,
                         pool="gfgp")
    t = Trainer(config, out=str(out), progress=False, plots=False, log=lambda *_: None)
    t.run()
    return out, t


@pytest.mark.parametrize("which", ["folder", "best.npz", "checkpoint.npz"])
def test_a_run_loads_as_a_model(run, which):
    out, t = run
    m = minignn.load(out if which == "folder" else out / which)
    x = t.dataset.loader("test", 16).batch(0, 0)[0]
    np.testing.assert_array_equal(m.forward(x), _outputs(t.model, x))   # one epoch: best = last
    assert m.classes == tuple(t.dataset.classes)
    np.testing.assert_array_equal(m.mean, t.dataset.mean)
    np.testing.assert_array_equal(m.std, t.dataset.std)
    assert m.image_shape == t.dataset.image_shape
    assert m.build_spec["pool"] == "gfgp" and m.build_spec["width"] == 0.25


def test_load_errors_name_the_file_and_the_problem(tmp_path, run):
    with pytest.raises(CheckpointError, match="no file at"):
        minignn.load(tmp_path / "nothing.npz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="folder without best.npz or checkpoint.npz"):
        minignn.load(tmp_path / "empty")
    save_checkpoint(str(tmp_path / "other.npz"), {"a": 1})
    with pytest.raises(CheckpointError, match="holds no model"):
        minignn.load(tmp_path / "other.npz")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match="not an .npz archive"):
        minignn.load(tmp_path / "notes.txt")
    # weights that do not fit the architecture the file names
    state = load_checkpoint(str(run[0] / "best.npz"))
    state["config"]["width"] = 0.5
    save_checkpoint(str(tmp_path / "wrong.npz"), state)
    with pytest.raises(CheckpointError, match=r"weights do not fit|load_state_dict"):
        minignn.load(tmp_path / "wrong.npz")
    state["config"]["width"], state["config"]["pool"] = 0.25, "no-such-pool"
    save_checkpoint(str(tmp_path / "wrong.npz"), state)
    with pytest.raises(CheckpointError, match="cannot rebuild"):
        minignn.load(tmp_path / "wrong.npz")
    with pytest.raises(ValueError, match="device: expected one of"):
        minignn.load(run[0], device="tpu")
    if not minignn.gpu_available():
        with pytest.raises(RuntimeError, match="device='gpu'"):
            minignn.load(run[0], device="gpu")


# --- predict --------------------------------------------------------------------------------------
def _png(path, pixels_chw):
    Image.fromarray(np.ascontiguousarray(pixels_chw.transpose(1, 2, 0))).save(path)
    return str(path)


def _reference_probs(model, pixels, mean, std):
    """Preparation and softmax written out plainly, image by image and channel by channel."""
    rows = []
    for img in pixels:
        x = np.empty(img.shape, np.float64)
        for c in range(img.shape[0]):
            x[c] = (img[c].astype(np.float64) / 255.0 - float(mean[c])) / float(std[c])
        model.eval()
        z = model.forward(x[None].astype(np.float32))[0].astype(np.float64)
        e = np.exp(z - z.max())
        rows.append(e / e.sum())
    return np.array(rows)


def test_predict_equals_the_plain_preparation_and_softmax(tmp_path):
    m = _model()
    minignn.save(m, tmp_path / "m.npz", classes=CLASSES, mean=MEAN, std=STD)
    m = minignn.load(tmp_path / "m.npz")
    pixels = np.random.default_rng(3).integers(0, 256, (4, 3, 32, 32), dtype=np.uint8)
    files = [_png(tmp_path / f"{i}.png", p) for i, p in enumerate(pixels)]
    for f, p in zip(files, pixels):
        got, size = read_image(f)
        assert size == (32, 32) and np.array_equal(got, p)   # PNG is lossless
    want = _reference_probs(m, pixels, MEAN, STD)
    for row, pred in zip(want, predict(m, files, top=10)):
        order = np.argsort(-row, kind="stable")
        assert [name for name, _ in pred] == [CLASSES[i] for i in order]
        np.testing.assert_allclose([p for _, p in pred], row[order], rtol=1e-6, atol=1e-9)
    assert [len(p) for p in predict(m, pixels, top=2)] == [2] * 4


def test_read_image_crops_the_centre_square_and_converts_modes(tmp_path):
    # a 40 wide, 64 tall image: blue in the centre 40x40 square, red above and below it
    img = np.zeros((64, 40, 3), np.uint8)
    img[:, :, 0] = 255
    img[12:52] = (0, 0, 255)
    Image.fromarray(img).save(tmp_path / "tall.png")
    got, size = read_image(tmp_path / "tall.png")
    assert size == (40, 64) and got.shape == (3, 32, 32)
    assert (got[0] == 0).all() and (got[2] == 255).all(), "the margins outside the centre square were kept"
    # grey levels and RGBA become RGB; a one-channel model gets grey levels
    Image.fromarray(np.full((32, 32), 77, np.uint8), "L").save(tmp_path / "grey.png")
    assert (read_image(tmp_path / "grey.png")[0] == 77).all()
    Image.fromarray(np.full((32, 32, 4), (10, 20, 30, 0), np.uint8), "RGBA").save(tmp_path / "rgba.png")
    assert read_image(tmp_path / "rgba.png")[0][:, 0, 0].tolist() == [10, 20, 30]
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(tmp_path / "small.jpg")
    got, size = read_image(tmp_path / "small.jpg", (1, 16, 16))
    assert size == (8, 8) and got.shape == (1, 16, 16) and abs(int(got.mean()) - 200) <= 2
    with pytest.raises(FileNotFoundError, match="no image file at"):
        read_image(tmp_path / "none.png")
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match="not an image file Pillow can read"):
        read_image(tmp_path / "notes.txt")


def _cli(args, cwd):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "minignn", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_the_predict_command(tmp_path, run):
    out, t = run
    pixels = t.dataset.x_test[:3]
    files = [_png(tmp_path / f"img{i}.png", p) for i, p in enumerate(pixels)]
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(tmp_path / "big.jpg")
    r = _cli(["predict", str(out), *files, "big.jpg", "--top", "3"], tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 4 and lines[0].startswith(files[0] + ": ") and lines[0].count("%") == 3
    assert lines[3].startswith("big.jpg: ") and lines[3].endswith("(resized from 64x48)")
    r = _cli(["predict", str(out / "best.npz"), *files, "--top", "50", "--json"], tmp_path)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["checkpoint"] == str(out / "best.npz")
    want = _reference_probs(t.model, pixels, t.dataset.mean, t.dataset.std)
    for pred, row, f in zip(doc["predictions"], want, files):
        assert pred["image"] == f and pred["size"] == [32, 32]
        assert len(pred["top"]) == t.dataset.num_classes       # --top beyond the classes: all of them
        assert [e["label"] for e in pred["top"]] == list(np.argsort(-row, kind="stable"))
        assert [e["class"] for e in pred["top"]] == [t.dataset.classes[e["label"]] for e in pred["top"]]
        np.testing.assert_allclose([e["prob"] for e in pred["top"]], np.sort(row)[::-1], rtol=1e-5, atol=1e-8)
    # the text form agrees with the JSON
    assert lines[0] == files[0] + ": " + ", ".join(f"{e['class']} {100 * e['prob']:.1f}%"
                                                     for e in doc["predictions"][0]["top"][:3])


@pytest.mark.parametrize("args,msg", [
    (["RUN", "missing.png"], "no image file at 'missing.png'"),
    (["RUN", "notes.txt"], "'notes.txt' is not an image file Pillow can read"),
    (["RUN", "img.png", "--top", "0"], "--top: expected an integer >= 1, got '0'"),
    (["notes.txt", "img.png"], "is not a minignn checkpoint"),
    (["nowhere", "img.png"], "no file at 'nowhere'"),
    (["RUN"], "the following arguments are required: IMAGE"),
])
def test_predict_errors_are_one_line(tmp_path, run, args, msg):
    (tmp_path / "notes.txt").write_text("hello")
    _png(tmp_path / "img.png", np.zeros((3, 32, 32), np.uint8))
    r = _cli(["predict", *[str(run[0]) if a == "RUN" else a for a in args]], tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("minignn predict: error: "), r.stderr
    assert msg in r.stderr and "Traceback" not in r.stderr
