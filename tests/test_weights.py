"""engine.load_weights / Module.load / convtune convert: PyTorch zip and legacy .pth,
.safetensors and .npz, without PyTorch and without ever running code from a file.

Files come from three writers: tests/torchfile.py (PyTorch's layouts written with
pickle and zipfile, no torch), real torch.save (when torch is installed), and the
safetensors package's own save_file. Expected values come from the data written,
never from the loader."""
import os
import pickle
import shlex
import struct
import subprocess
import sys
import zipfile
from collections import OrderedDict

import numpy as np
import pytest

import engine
from engine.nn.weights import UnsafeWeightsError, WeightsError, load_weights, remap_keys

import torchfile as tf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ml_dtypes():
    return pytest.importorskip("ml_dtypes", reason="bfloat16/float8 tensors need ml_dtypes")


def flip_byte(path, member, at=0):
    """Flip one byte of the stored zip member's data in place (reading the local header)."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(member)
    with open(path, "r+b") as f:
        f.seek(info.header_offset + 26)
        n, m = struct.unpack("<HH", f.read(4))
        pos = info.header_offset + 30 + n + m + at
        f.seek(pos)
        b = f.read(1)
        f.seek(pos)
        f.write(bytes([b[0] ^ 0xFF]))


def tiny_net(seed=0):
    torch_free = engine.Sequential(OrderedDict(
        conv=engine.Conv2d(3, 4, 3, padding=1, seed=seed), bn=engine.BatchNorm2d(4),
        relu=engine.ReLU(), pool=engine.AdaptiveAvgPool2d(1), flat=engine.Flatten(),
        fc=engine.Linear(4, 5, seed=seed + 1)))
    rng = np.random.default_rng(seed)
    torch_free.bn.running_mean = rng.standard_normal(4).astype(np.float32)
    torch_free.bn.running_var = rng.random(4).astype(np.float32) + 0.5
    return torch_free


# ----------------------------------------------------- the layout, written without torch
def table_of_tensors():
    """(object to save, {name: expected array}): dtypes, views, a shared storage, a
    parameter, a scalar, an empty tensor, in an OrderedDict with _metadata."""
    rng = np.random.default_rng(7)
    base = tf.Storage("0", rng.standard_normal(30).astype(np.float32))
    tensors = OrderedDict([
        ("full", tf.Tensor(base, 0, (5, 6), (6, 1))),
        ("view", tf.Tensor(base, 7, (3, 2), (6, 2))),            # offset + strides, same storage
        ("transposed", tf.Tensor(base, 0, (6, 5), (1, 6))),
        ("broadcast", tf.Tensor(base, 3, (2, 3), (0, 1))),
        ("scalar", tf.Tensor(base, 29, (), ())),
        ("empty", tf.Tensor(base, 0, (0, 4), (4, 1))),
        ("f64", tf.contiguous("1", rng.standard_normal((2, 3)))),
        ("f16", tf.contiguous("2", rng.standard_normal(5).astype(np.float16))),
        ("i64", tf.contiguous("3", np.array([-(2 ** 40), 0, 7], np.int64))),
        ("i32", tf.contiguous("4", np.array([-5, 9], np.int32))),
        ("i16", tf.contiguous("5", np.array([-300, 300], np.int16))),
        ("i8", tf.contiguous("6", np.array([-128, 127], np.int8))),
        ("u8", tf.contiguous("7", np.array([0, 255], np.uint8))),
        ("bool", tf.contiguous("8", np.array([True, False, True]))),
        ("param", tf.contiguous("9", rng.standard_normal(4).astype(np.float32), parameter=True)),
    ])
    tensors._metadata = OrderedDict([("", {"version": 1}), ("conv", {"version": 2})])
    want = {k: tf.expected(t) for k, t in tensors.items()}
    return tensors, want


def assert_same(out, want):
    assert list(out) == list(want)
    for k, v in want.items():
        assert out[k].dtype == v.dtype, k
        assert out[k].shape == v.shape, k
        np.testing.assert_array_equal(out[k], v, err_msg=k)
        assert out[k].flags.c_contiguous and out[k].flags.writeable and out[k].flags.owndata, k


@pytest.mark.parametrize("fmt", ["zip", "zip-deflated", "zip-protocol4", "legacy"])
def test_layout_without_torch(tmp_path, fmt):
    obj, want = table_of_tensors()
    path = tmp_path / "w.pth"
    if fmt == "legacy":
        tf.write_legacy(path, obj)
    else:
        tf.write_zip(path, obj, folder="any-folder_name",
                     compression=zipfile.ZIP_DEFLATED if fmt == "zip-deflated" else zipfile.ZIP_STORED,
                     protocol=4 if fmt == "zip-protocol4" else 2)
    assert engine.nn.weights.detect_format(path) == ("torch-legacy" if fmt == "legacy" else "torch-zip")
    out = load_weights(path)
    assert_same(out, want)
    out["full"][0, 0] = 123.0                          # arrays are the caller's own
    assert out["view"][0, 0] != 123.0 and load_weights(path)["full"][0, 0] == want["full"][0, 0]


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_bfloat16_and_v3_dtypes(tmp_path, fmt):
    mld = ml_dtypes()
    bf = np.array([1.5, -2.0, 3.25e-3, 65280.0], dtype=mld.bfloat16)
    u16 = np.array([1, 65535, 300], np.uint16)
    f8 = np.array([0.5, -1.0, 448.0], dtype=mld.float8_e4m3fn)
    obj = {"bf": tf.contiguous("0", bf),
           # _rebuild_tensor_v3: an untyped (byte) storage plus the tensor's dtype
           "u16": tf.Tensor(tf.Storage("1", u16.view(np.uint8), "UntypedStorage"), 0, (3,), (1,),
                            rebuild="_rebuild_tensor_v3", dtype="uint16"),
           "f8": tf.Tensor(tf.Storage("2", f8.view(np.uint8), "UntypedStorage"), 1, (2,), (1,),
                           rebuild="_rebuild_tensor_v3", dtype="float8_e4m3fn")}
    path = tf.write_legacy(tmp_path / "w.pth", obj) if fmt == "legacy" else \
        tf.write_zip(tmp_path / "w.pth", obj)
    out = load_weights(path)
    assert out["bf"].dtype == mld.bfloat16 and np.array_equal(out["bf"].astype(np.float32), bf.astype(np.float32))
    assert out["u16"].dtype == np.uint16 and out["u16"].tolist() == [1, 65535, 300]
    assert out["f8"].dtype == mld.float8_e4m3fn and out["f8"].astype(np.float32).tolist() == [-1.0, 448.0]


def test_bfloat16_bits_and_missing_ml_dtypes(tmp_path):
    """bfloat16 written as raw bits (0x3fc0 = 1.5, 0xc000 = -2.0, 0x7f80 = inf); without
    ml_dtypes the load is an ImportError naming the file, the tensor and the package."""
    bits = np.array([0x3FC0, 0xC000, 0x7F80], np.uint16)
    path = tf.write_zip(tmp_path / "bf.pth", {"w": tf.Tensor(tf.Storage("0", bits, "BFloat16Storage"),
                                                             0, (3,), (1,))})
    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.startswith('ml_dtypes'):\n"
            "            raise ModuleNotFoundError(name)\n"
            "sys.meta_path.insert(0, Block())\n"
            "import engine\n"
            "try:\n"
            "    engine.load_weights(sys.argv[1])\n"
            "except ImportError as e:\n"
            "    print(e)\n")
    r = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": ROOT}, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "bf.pth: tensor 'w' is bfloat16" in r.stdout and "pip install ml_dtypes" in r.stdout
    ml_dtypes()
    assert load_weights(path)["w"].astype(np.float32).tolist() == [1.5, -2.0, float("inf")]


def test_big_endian_byteorder_record(tmp_path):
    rng = np.random.default_rng(3)
    f32 = rng.standard_normal(6).astype(np.float32)
    obj = {"f32": tf.Tensor(tf.Storage("0", f32), 1, (2, 2), (1, 2)),
           "i64": tf.contiguous("1", np.array([1, -2, 2 ** 50], np.int64)),
           "f16": tf.contiguous("2", np.array([0.5, -3.0], np.float16))}
    want = {k: tf.expected(t) for k, t in obj.items()}
    path = tf.write_zip(tmp_path / "big.pth", obj, byteorder="big")
    out = load_weights(path)
    assert_same(out, want)
    assert all(v.dtype.isnative for v in out.values())
    # the same bytes read as little-endian would differ: the record is honoured
    path2 = tf.write_zip(tmp_path / "nobo.pth", obj, byteorder="big", byteorder_record=False)
    assert not np.array_equal(load_weights(path2)["i64"], want["i64"])


def test_big_endian_bfloat16(tmp_path):
    mld = ml_dtypes()
    bf = np.array([1.5, -2.0, 0.1], dtype=mld.bfloat16)
    out = load_weights(tf.write_zip(tmp_path / "big.pth", {"bf": tf.contiguous("0", bf)}, byteorder="big"))
    assert out["bf"].astype(np.float32).tolist() == bf.astype(np.float32).tolist()


def test_state_dict_round_trip_without_torch(tmp_path):
    net = tiny_net()
    sd = net.state_dict()
    for legacy in (False, True):
        path = tf.state_dict_file(tmp_path / f"net{legacy}.pth", sd, legacy=legacy)
        out = load_weights(path)
        assert list(out) == list(sd)
        for k in sd:
            assert out[k].dtype == np.asarray(sd[k]).dtype and np.array_equal(out[k], sd[k]), k
        other = tiny_net(seed=5)
        assert not np.array_equal(other.conv.weight, net.conv.weight)
        assert other.load(path) == ([], [])
        for k, v in other.state_dict().items():
            np.testing.assert_array_equal(v, sd[k], err_msg=k)
        x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)
        np.testing.assert_array_equal(other(x), net(x))


# ------------------------------------------------------------- nested checkpoints, key=
def test_nested_checkpoint_and_key(tmp_path):
    a = np.arange(6, dtype=np.float32)
    b = -np.arange(4, dtype=np.float32)
    model = {"w": tf.contiguous("0", a)}
    ema = {"w": tf.contiguous("1", b)}
    path = tf.write_zip(tmp_path / "ckpt.pth", {"state_dict": model, "epoch": 3, "lr": 0.1,
                                                "optimizer": {"state": {0: {"m": tf.contiguous("2", a)}},
                                                              "param_groups": [{"lr": 0.1}]}})
    assert load_weights(path)["w"].tolist() == a.tolist()        # the one state_dict found
    assert load_weights(path, key="state_dict")["w"].tolist() == a.tolist()
    with pytest.raises(KeyError, match="no entry 'model'"):
        load_weights(path, key="model")
    with pytest.raises(WeightsError, match="not a mapping of name -> tensor"):
        load_weights(path, key="optimizer")
    with pytest.raises(TypeError, match="key must be a str"):
        load_weights(path, key=3)

    two = tf.write_zip(tmp_path / "two.pth", {"model": model, "ema": {"inner": ema}, "ema2": ema})
    with pytest.raises(WeightsError, match=r"several entries hold weights: \['model', 'ema2'\].*key="):
        load_weights(two)
    assert load_weights(two, key="ema2")["w"].tolist() == b.tolist()
    assert load_weights(two, key=["ema", "inner"])["w"].tolist() == b.tolist()

    nothing = tf.write_zip(tmp_path / "none.pth", {"epoch": 3, "names": ["a"]})
    with pytest.raises(WeightsError, match=r"found no mapping of name -> tensor.*'epoch': int"):
        load_weights(nothing)


def test_only_the_chosen_entry_is_read(tmp_path):
    """A corrupt storage outside the selected entry is never read (memory and time are
    those of the chosen tensors); inside it, the corruption is caught by the CRC."""
    a = np.arange(8, dtype=np.float32)
    path = tf.write_zip(tmp_path / "ckpt.pth", {"model": {"w": tf.contiguous("0", a)},
                                                "optimizer": {"m": tf.contiguous("1", a + 1)}})
    flip_byte(path, "archive/data/1", at=5)
    assert load_weights(path, key="model")["w"].tolist() == a.tolist()
    with pytest.raises(WeightsError, match=r"ckpt.pth: storage member 'archive/data/1' fails its CRC"):
        load_weights(path, key="optimizer")


# ------------------------------------------------------------------------ safety
class RunsACommand:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(self.marker)}",))


class OpensAFile:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("fmt", ["zip", "legacy", "protocol4", "plain-pickle"])
@pytest.mark.parametrize("payload", [RunsACommand, OpensAFile])
def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path, fmt, payload):
    marker = tmp_path / "pwned"
    w = tf.contiguous("0", np.ones(3, np.float32))
    obj = OrderedDict([("weight", w), ("bias", payload(marker))])   # after a real tensor
    path = tmp_path / "evil.pth"
    if fmt == "legacy":
        tf.write_legacy(path, obj)
    elif fmt == "plain-pickle":
        path.write_bytes(pickle.dumps(obj, protocol=2))
    else:
        tf.write_zip(path, obj, protocol=4 if fmt == "protocol4" else 2)
    func = os.system if payload is RunsACommand else open
    name = f"{func.__module__}.{func.__name__}"      # posix.system, io.open
    if fmt == "plain-pickle":   # refused before its first global: not a torch.save file
        with pytest.raises(WeightsError, match="not a PyTorch checkpoint"):
            load_weights(path)
    else:
        with pytest.raises(UnsafeWeightsError, match=rf"evil.pth: refused.*global {name}\b.*nothing was built"):
            load_weights(path)
        with pytest.raises(ValueError, match="refused"):      # the same through Module.load
            tiny_net().load(path)
    assert not marker.exists()
    # The payload is live: plain pickle would have run it.
    pickle.loads(pickle.dumps(payload(marker), protocol=2))
    assert marker.exists()


def test_refusal_names_the_global_with_hints(tmp_path):
    cases = [(tf.Global("torch.nn.modules.conv", "Conv2d"), "torch.nn.modules.conv.Conv2d", "model.state_dict()"),
             (tf.Global("__torch__.Net", "Net"), "__torch__.Net.Net", "TorchScript"),
             (tf.Global("builtins", "eval"), "builtins.eval", "re-save only the state_dict"),
             (tf.Global("numpy.core.multiarray", "scalar"), "numpy.core.multiarray.scalar", ""),
             (tf.Global("torch", "load"), "torch.load", "")]
    for glob, name, hint in cases:
        path = tf.write_zip(tmp_path / "x.pth", {"w": tf.contiguous("0", np.ones(2, np.float32)),
                                                 "x": glob})
        with pytest.raises(UnsafeWeightsError) as e:
            load_weights(path)
        assert f"global {name}," in str(e.value) and hint in str(e.value)


def test_pickle_cannot_change_the_stand_ins(tmp_path):
    """BUILD (set state) on an allowed function, e.g. to change its defaults for every
    later load, is refused; so is _codecs.encode with anything but Latin-1."""
    for target in (b"ctorch._utils\n_rebuild_tensor_v2\n", b"ctorch\nFloatStorage\n"):
        state = b"N}X\x0c\x00\x00\x00__defaults__)s\x86"   # (None, {"__defaults__": ()})
        crafted = b"\x80\x02" + target + state + b"b."          # GLOBAL, state, BUILD, STOP
        with zipfile.ZipFile(tmp_path / "b.pth", "w") as zf:
            zf.writestr("archive/data.pkl", crafted)
        with pytest.raises(WeightsError, match="tries to set the state"):
            load_weights(tmp_path / "b.pth")
    ok = tf.write_zip(tmp_path / "ok.pth", {"w": tf.contiguous("0", np.arange(3, dtype=np.float32))})
    assert load_weights(ok)["w"].tolist() == [0, 1, 2]                   # defaults intact

    # protocol 2 pickles bytes as _codecs.encode(str, "latin1"): allowed, nothing else is
    blob = tf.write_zip(tmp_path / "blob.pth", {"state_dict": {"w": tf.contiguous("0", np.ones(2, np.float32))},
                                                "extra": b"\x00\xffbytes"})
    assert list(load_weights(blob)) == ["w"]
    rot = tf.write_zip(tmp_path / "rot.pth", {"x": tf._Reduced((tf.Global("_codecs", "encode"), ("abc", "rot13")))})
    with pytest.raises(WeightsError, match=r"only as encode\(str, 'latin1'\)"):
        load_weights(rot)


def test_crafted_views_out_of_bounds_are_refused(tmp_path):
    s = tf.Storage("0", np.arange(10, dtype=np.float32))
    bad = {"past the end": tf.Tensor(s, 5, (2, 3), (3, 1)),        # last element 5+3+2 = 10
           "offset": tf.Tensor(s, 10, (1,), (1,)),
           "huge stride": tf.Tensor(s, 0, (2,), (2 ** 62,))}
    for what, t in bad.items():
        path = tf.write_zip(tmp_path / "v.pth", {"w": t})
        with pytest.raises(WeightsError, match=r"v.pth: tensor 'w'.*holds only 10 float32 elements"):
            load_weights(path)
    ok = tf.write_zip(tmp_path / "ok.pth", {"w": tf.Tensor(s, 4, (2, 3), (3, 1))})   # last = 9
    assert load_weights(ok)["w"].tolist() == [[4, 5, 6], [7, 8, 9]]
    for size, stride, msg in [((2, 3), (3,), "differ in length"), ((2,), (-1,), "must not be negative"),
                              ((2.0,), (1,), "must be an int")]:
        path = tf.write_zip(tmp_path / "v.pth", {"w": tf.Tensor(s, 0, size, stride)})
        with pytest.raises(WeightsError, match=rf"v.pth: archive/data.pkl is corrupt: .*{msg}"):
            load_weights(path)


# ------------------------------------------------------------ wrong, truncated, corrupt
def test_corrupt_and_wrong_files(tmp_path):
    good = tf.state_dict_file(tmp_path / "good.pth", {"w": np.arange(1000, dtype=np.float32)})
    legacy = tf.state_dict_file(tmp_path / "legacy.pth", {"w": np.arange(1000, dtype=np.float32)}, legacy=True)
    data, ldata = good.read_bytes(), legacy.read_bytes()
    cases = {
        "empty.pth": (b"", "empty file; expected a PyTorch checkpoint"),
        "text.pth": (b"just some text, not weights\n", "not a recognised weights file.*expected"),
        "json.safetensors": (b'{"a": 1}', "not a recognised weights file"),
        "half.pth": (data[:len(data) // 2], "truncated or corrupt zip archive"),
        "tail.pth": (data[:-10], "truncated or corrupt zip archive"),
        "legacy-half.pth": (ldata[:len(ldata) - 2000], "truncated: storage '0' needs 4000 bytes"),
        "legacy-header.pth": (ldata[:30], "truncated or corrupt"),
        "plain.pkl": (pickle.dumps({"w": [1.0, 2.0]}), "not a PyTorch checkpoint"),
        "array.npy": (b"\x93NUMPY\x01\x00" + b" " * 100, "a single .npy array"),
        "st-short.safetensors": (struct.pack("<Q", 10 ** 6) + b'{"w": {}}', "truncated or corrupt"),
    }
    for name, (content, msg) in cases.items():
        p = tmp_path / name
        p.write_bytes(content)
        with pytest.raises(WeightsError, match=msg) as e:
            load_weights(p)
        assert str(p) in str(e.value), name

    flip_byte(good, "archive/data/0", at=100)
    with pytest.raises(WeightsError, match="good.pth: storage member 'archive/data/0' fails its CRC"):
        load_weights(good)

    nodata = tmp_path / "nodata.pth"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(nodata, "w") as dst:
        for n in src.namelist():
            if n != "archive/data/0":
                dst.writestr(n, src.read(n))
    with pytest.raises(WeightsError, match="no member 'archive/data/0'"):
        load_weights(nodata)

    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(WeightsError, match="neither a PyTorch checkpoint.*nor an .npz"):
        load_weights(other)
    with pytest.raises(FileNotFoundError):
        load_weights(tmp_path / "missing.pth")


def test_short_storage_member_is_caught(tmp_path):
    """The pickle promises more elements than the member holds."""
    s = tf.Storage("0", np.arange(4, dtype=np.float32))
    path = tf.write_zip(tmp_path / "s.pth", {"w": tf.Tensor(s, 0, (4,), (1,))})
    short = tmp_path / "short.pth"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(short, "w") as dst:
        for n in src.namelist():
            dst.writestr(n, src.read(n)[:8] if n == "archive/data/0" else src.read(n))
    with pytest.raises(WeightsError, match=r"holds 8 bytes, but the pickle says 4 float32 elements"):
        load_weights(short)


# --------------------------------------------------------------------------- npz
def test_npz(tmp_path):
    arrays = {"a.weight": np.arange(6, dtype=np.float32).reshape(2, 3), "n": np.array(3, np.int64)}
    np.savez(tmp_path / "w.npz", **arrays)
    out = load_weights(tmp_path / "w.npz")
    assert list(out) == list(arrays) and all(np.array_equal(out[k], v) for k, v in arrays.items())
    os.rename(tmp_path / "w.npz", tmp_path / "w.pth")                 # told by content
    assert engine.nn.weights.detect_format(tmp_path / "w.pth") == "npz"
    with pytest.raises(ValueError, match="key= picks an entry of a nested PyTorch checkpoint"):
        load_weights(tmp_path / "w.pth", key="a")
    np.savez(tmp_path / "obj.npz", o=np.array([{"x": 1}], dtype=object))
    with pytest.raises(WeightsError, match="obj.npz: an .npz that cannot be read without pickle"):
        load_weights(tmp_path / "obj.npz")


# ------------------------------------------------------------------- safetensors
def test_safetensors_written_by_save_file(tmp_path):
    st = pytest.importorskip("safetensors.numpy", reason="the safetensors package reads .safetensors")
    rng = np.random.default_rng(2)
    arrays = {"conv.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
              "bn.num_batches_tracked": np.array(5, np.int64),
              "f16": rng.standard_normal(3).astype(np.float16)}
    path = tmp_path / "model.safetensors"
    st.save_file(arrays, str(path))
    assert engine.nn.weights.detect_format(path) == "safetensors"
    out = load_weights(path)
    assert set(out) == set(arrays)
    for k, v in arrays.items():
        assert out[k].dtype == v.dtype and np.array_equal(out[k], v), k
        assert out[k].flags.writeable
    net = tiny_net()
    st.save_file(dict(net.state_dict()), str(tmp_path / "net.safetensors"))
    other = tiny_net(seed=9)
    other.load(tmp_path / "net.safetensors")
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(other.state_dict()[k], v)
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:len(data) - 20])
    with pytest.raises(WeightsError, match="cut.safetensors: truncated or corrupt .safetensors"):
        load_weights(tmp_path / "cut.safetensors")


# ------------------------------------------------------------------- key mapping
def test_remap_keys_and_module_load_options(tmp_path):
    net = tiny_net()
    sd = net.state_dict()
    dp = tf.state_dict_file(tmp_path / "dp.pth", {"module." + k: v for k, v in sd.items()})
    with pytest.raises(ValueError, match=r"dp.pth: .*missing keys.*pass prefix='module.'"):
        tiny_net(1).load(dp)
    other = tiny_net(1)
    assert other.load(dp, prefix="module.") == ([], [])
    np.testing.assert_array_equal(other.fc.weight, sd["fc.weight"])

    renamed = tf.state_dict_file(tmp_path / "r.pth", {k.replace("fc.", "head."): v for k, v in sd.items()})
    other = tiny_net(2)
    other.load(renamed, rename={"head.weight": "fc.weight", "head.bias": "fc.bias"})
    np.testing.assert_array_equal(other.fc.bias, sd["fc.bias"])
    other = tiny_net(3)
    other.load(renamed, rename=lambda k: k.replace("head.", "fc."))
    np.testing.assert_array_equal(other.fc.weight, sd["fc.weight"])

    partial = tf.state_dict_file(tmp_path / "p.pth", {"conv.weight": sd["conv.weight"],
                                                     "extra.w": np.ones(2, np.float32)})
    other = tiny_net(4)
    before = other.fc.weight.copy()
    missing, unexpected = other.load(partial, strict=False)
    assert unexpected == ["extra.w"] and "fc.weight" in missing and "conv.weight" not in missing
    np.testing.assert_array_equal(other.conv.weight, sd["conv.weight"])
    np.testing.assert_array_equal(other.fc.weight, before)
    with pytest.raises(ValueError, match=r"p.pth: .*unexpected keys: extra.w"):
        tiny_net(4).load(partial)

    assert remap_keys({"a.x": 1, "b.x": 2}, rename=lambda k: None if k.startswith("b") else k) == {"a.x": 1}
    assert remap_keys({"m.a": 1, "n.b": 2}, prefix=["m.", "n."]) == {"a": 1, "b": 2}
    with pytest.raises(ValueError, match="'module.a' and 'a' both become 'a'"):
        remap_keys({"module.a": 1, "a": 2}, prefix="module.")
    with pytest.raises(TypeError, match="rename must be"):
        remap_keys({"a": 1}, rename=3)


# --------------------------------------------------------------------------- CLI
def test_convert_cli(tmp_path, capsys):
    from tuner.cli import main
    net = tiny_net()
    sd = net.state_dict()
    pth = tf.state_dict_file(tmp_path / "net.pth", dict(sd), legacy=True)
    assert main(["convert", str(pth), str(tmp_path / "net.npz")]) == 0
    assert "wrote" in capsys.readouterr().out
    with np.load(tmp_path / "net.npz", allow_pickle=False) as z:
        assert list(z.files) == list(sd)
        for k, v in sd.items():
            np.testing.assert_array_equal(z[k], v)
    with pytest.raises(SystemExit) as e:    # argparse usage error
        main(["convert", str(pth)])
    assert e.value.code == 2
    capsys.readouterr()
    for args, msg in [([str(pth), str(tmp_path / "x.bin")], "expected a name ending in .npz or .safetensors"),
                      ([str(tmp_path / "nope.pth"), str(tmp_path / "y.npz")], "No such file"),
                      ([str(tmp_path / "net.npz"), str(tmp_path / "y.npz"), "--key", "a"], "key= picks")]:
        assert main(["convert", *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("convtune: error: ") and msg in err and err.count("\n") == 1, err
    evil = tf.write_zip(tmp_path / "evil.pth", {"x": RunsACommand(tmp_path / "pwned")})
    assert main(["convert", str(evil), str(tmp_path / "e.npz")]) == 2
    assert "refused" in capsys.readouterr().err and not (tmp_path / "pwned").exists()
    assert not (tmp_path / "e.npz").exists()


def test_convert_cli_safetensors_and_bfloat16(tmp_path, capsys):
    pytest.importorskip("safetensors.numpy", reason="writing .safetensors needs safetensors")
    mld = ml_dtypes()
    from tuner.cli import main
    bf = np.array([1.5, -2.0, 0.1], dtype=mld.bfloat16)
    pth = tf.write_zip(tmp_path / "ckpt.pth", {"model": {"module.w": tf.contiguous("0", bf)}, "step": 1})
    assert main(["convert", str(pth), str(tmp_path / "w.safetensors"), "--key", "model",
                 "--prefix", "module."]) == 0
    out = load_weights(tmp_path / "w.safetensors")
    assert list(out) == ["w"] and out["w"].dtype == mld.bfloat16
    assert main(["convert", str(pth), str(tmp_path / "w.npz")]) == 0
    assert "float32" in capsys.readouterr().out           # says bfloat16 was widened
    with np.load(tmp_path / "w.npz", allow_pickle=False) as z:
        assert z["module.w"].dtype == np.float32
        assert z["module.w"].tolist() == bf.astype(np.float32).tolist()


# ------------------------------------------------------------------ real torch.save
def torch_table(torch):
    torch.manual_seed(0)
    base = torch.randn(5, 6)
    sd = OrderedDict(
        f32=torch.randn(3, 4), f64=torch.randn(2, 2).double(), f16=torch.randn(7).half(),
        i64=torch.arange(5), i32=torch.arange(3, dtype=torch.int32),
        i8=torch.tensor([-1, 2], dtype=torch.int8), u8=torch.tensor([250, 3], dtype=torch.uint8),
        b=torch.tensor([True, False]), view=base[1:, ::2], tview=base.t(), base=base,
        scalar=torch.tensor(3.5), empty=torch.zeros(0, 3), expanded=torch.randn(3, 1).expand(3, 4),
        u16=torch.tensor([1, 65535], dtype=torch.uint16),
        c64=torch.randn(3, dtype=torch.complex64), conj=torch.randn(3, dtype=torch.complex64).conj(),
        param=torch.nn.Parameter(torch.randn(2)))
    sd._metadata = OrderedDict([("", {"version": 1})])
    return sd


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_files_written_by_torch_save(torch, tmp_path, legacy):
    sd = torch_table(torch)
    path = tmp_path / "t.pth"
    torch.save(sd, path, _use_new_zipfile_serialization=not legacy)
    assert engine.nn.weights.detect_format(path) == ("torch-legacy" if legacy else "torch-zip")
    out = load_weights(path)
    assert list(out) == list(sd)
    for k, v in sd.items():
        want = v.detach().resolve_conj().numpy()
        assert out[k].dtype == want.dtype and out[k].shape == want.shape, k
        np.testing.assert_array_equal(out[k], want, err_msg=k)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_torch_save_low_precision(torch, tmp_path, legacy):
    mld = ml_dtypes()
    t = {"bf16": torch.randn(4, 3).bfloat16(), "f8": torch.randn(5).to(torch.float8_e4m3fn),
         "f8e5": torch.randn(5).to(torch.float8_e5m2)}
    torch.save(t, tmp_path / "t.pth", _use_new_zipfile_serialization=not legacy)
    out = load_weights(tmp_path / "t.pth")
    assert out["bf16"].dtype == mld.bfloat16 and out["f8"].dtype == mld.float8_e4m3fn
    for k, v in t.items():
        np.testing.assert_array_equal(out[k].astype(np.float32), v.float().numpy(), err_msg=k)


def test_torch_module_state_dict_and_checkpoint(torch, tmp_path):
    import torch_reference as ref
    torch.manual_seed(1)
    tm = ref.randomize_bn(ref.BUILDERS["seed_cnn"]()).eval()
    sd = tm.state_dict()
    params = list(tm.parameters())
    optimizer = {"state": {i: {"momentum_buffer": torch.randn_like(p)} for i, p in enumerate(params)},
                 "param_groups": [{"lr": 0.1, "momentum": 0.9, "params": list(range(len(params)))}]}
    torch.save({"epoch": 4, "state_dict": sd, "optimizer": optimizer}, tmp_path / "ckpt.pth")
    torch.save(torch.nn.DataParallel(tm).state_dict(), tmp_path / "dp.pth")
    em = engine.from_torch(tm)
    for path, kw in [("ckpt.pth", {}), ("dp.pth", {"prefix": "module."})]:
        fresh = engine.from_torch(ref.BUILDERS["seed_cnn"]())
        assert fresh.load(tmp_path / path, **kw) == ([], [])
        for k, v in em.state_dict().items():
            np.testing.assert_array_equal(fresh.state_dict()[k], v, err_msg=k)
    out = load_weights(tmp_path / "ckpt.pth")
    assert list(out) == list(sd)

    torch.save(tm, tmp_path / "model.pth")                       # a whole pickled model
    with pytest.raises(UnsafeWeightsError, match=r"model.pth: refused.*global torch\.nn\.modules\..*torch\.save\(model\)"):
        load_weights(tmp_path / "model.pth")


def test_engine_state_dict_through_torch_save(torch, tmp_path):
    """engine state_dict -> torch.save (zip and legacy) -> load_weights == state_dict."""
    net = tiny_net()
    sd = {k: torch.from_numpy(np.array(v)) for k, v in net.state_dict().items()}
    for legacy in (False, True):
        torch.save(sd, tmp_path / "n.pth", _use_new_zipfile_serialization=not legacy)
        out = load_weights(tmp_path / "n.pth")
        assert list(out) == list(net.state_dict())
        for k, v in net.state_dict().items():
            assert out[k].dtype == v.dtype and np.array_equal(out[k], v), k


MEASURE_PEAK = r"""
import sys, engine

def status(field):                   # /proc/self/status, in MiB
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) / 1024

try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")                 # reset the peak (VmHWM) to the current resident size
except OSError:
    print("skip")
    raise SystemExit(0)
before = status("VmRSS")
w = engine.load_weights(sys.argv[1])
assert [float(a[0, 0]) for a in w.values()] == [0, 1, 2, 3]
print(status("VmHWM") - before, sum(a.nbytes for a in w.values()) / 2 ** 20)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self")
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_memory_is_that_of_the_tensors(tmp_path, legacy):
    """Loading 64 MiB of tensors raises the peak resident memory by about 64 MiB, not by
    the file on top (the memory map's pages are released as tensors are built; without
    that it is 128 MiB)."""
    arrays = {f"w{i}": np.full((1024, 4096), i, np.float32) for i in range(4)}     # 4 x 16 MiB
    path = tf.state_dict_file(tmp_path / "big.pth", arrays, legacy=legacy)
    del arrays
    r = subprocess.run([sys.executable, "-c", MEASURE_PEAK, str(path)], capture_output=True,
                       text=True, env={**os.environ, "PYTHONPATH": ROOT}, timeout=120)
    assert r.returncode == 0, r.stderr
    if r.stdout.strip() == "skip":
        pytest.skip("/proc/self/clear_refs is not writable here")
    grown, tensors = map(float, r.stdout.split())
    assert tensors == 64 and grown < 1.5 * tensors, f"peak RSS grew {grown:.0f} MiB for {tensors:.0f} MiB"


# ------------------------------------------------------------------------- target
BLOCK_TORCH = r"""
import sys

class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError("No module named 'torch' (torch is blocked in this process)")

sys.meta_path.insert(0, _NoTorch())
try:
    import torch
except ImportError:
    pass
else:
    raise SystemExit("the torch blocker does not work")
"""

README_EXAMPLE = BLOCK_TORCH + r"""
import numpy as np
import engine

model = engine.models.resnet18()            # torchvision's architecture and key names
model.load(sys.argv[1])                     # e.g. resnet18-f37072fd.pth, as torchvision saved it
x = np.load(sys.argv[2])
logits = model(x)
fused = engine.fuse(model)(x)
assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules), "torch was imported"
np.save(sys.argv[3], np.stack([logits, fused]))
"""


def test_target_torchvision_resnet18_pth_without_torch(torch, tmp_path):
    """torch.save(tv_model.state_dict()) of a torchvision-format ResNet-18, loaded into
    engine.models.resnet18() in a process where `import torch` fails: PyTorch's logits
    within 1e-5 relative to max|logits|."""
    import torch_reference as ref
    torch.manual_seed(0)
    tm = ref.randomize_bn(ref.BUILDERS["resnet18"]()).eval()    # 1000 classes, as torchvision
    path = tmp_path / "resnet18-tv.pth"
    torch.save(tm.state_dict(), path)
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    torch.set_num_threads(2)
    with torch.no_grad():
        expected = tm(torch.from_numpy(x)).numpy()
    env = {**os.environ, "PYTHONPATH": ROOT, "CONVTUNE_PLAN": "none"}
    r = subprocess.run([sys.executable, "-c", README_EXAMPLE, str(path), str(tmp_path / "x.npy"),
                        str(tmp_path / "out.npy")], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    logits, fused = np.load(tmp_path / "out.npy")
    scale = np.abs(expected).max()
    for out in (logits, fused):
        assert out.shape == (1, 1000)
        err = np.abs(out - expected).max() / scale
        assert err <= 1e-5, f"relative error {err:.3g} > 1e-5"
    assert np.argmax(logits) == np.argmax(expected)


def test_the_torch_blocker_blocks(tmp_path):
    r = subprocess.run([sys.executable, "-c", BLOCK_TORCH + "import torch.nn\n"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "torch is blocked" in r.stderr
