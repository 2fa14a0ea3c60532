"""Weight files without PyTorch: ``load_weights(path) -> {name: numpy.ndarray}``.

The format is told from the file's first bytes, never from its name:

    PK\\x03\\x04 ... + "<dir>/data.pkl"  PyTorch's zip format (``torch.save`` since 1.6)
    PK\\x03\\x04 ... + only "*.npy"      numpy's ``.npz`` (read with allow_pickle=False)
    \\x80 + pickled magic number        PyTorch's legacy format (before 1.6, or
                                       ``_use_new_zipfile_serialization=False``)
    <u64 little-endian n> "{" ...      ``.safetensors`` (read by the safetensors package)

PyTorch zip format (one archive, members stored uncompressed and 64-byte aligned)::

    <dir>/data.pkl        the pickled object; each storage is a persistent id
                          ("storage", <torch.FloatStorage ...>, key, location, numel)
    <dir>/data/<key>      the storage's raw bytes: numel elements of its dtype
    <dir>/byteorder       "little" or "big" (absent in old files: little)
    <dir>/version, <dir>/.data/...   not read

PyTorch legacy format (one stream of consecutive pickles, then raw storages)::

    pickle(0x1950a86a20f9469cfc6c)  pickle(1001)  pickle(sys_info dict)
    pickle(object)   persistent ids ("storage", type, key, location, numel, view)
    pickle(sorted list of storage keys)
    for each key in that list: int64 little-endian numel, numel * itemsize bytes
                               (little-endian)

A tensor in either pickle is ``torch._utils._rebuild_tensor_v2(storage, offset, size,
stride, requires_grad, hooks[, metadata])`` (``_rebuild_tensor_v3`` adds a dtype for
storages without a typed class, e.g. uint16 and float8), a parameter is
``_rebuild_parameter(tensor, requires_grad, hooks)``. Offset and strides count
elements of the storage; several tensors may view one storage.

Safety: the pickle is read by an ``Unpickler`` whose ``find_class`` knows only the
names a weights file needs: the storage classes (``torch.FloatStorage``, ...,
``torch.UntypedStorage``), the tensor and parameter rebuild functions above,
``collections.OrderedDict``, torch's dtype names (the v3 dtype argument) and
``_codecs.encode`` for Latin-1 only (how protocol 2 spells a bytes object). Each but
OrderedDict (a plain container) is replaced by an inert stand-in of this module that
only records what to build and whose state the pickle cannot set; nothing from torch
or anywhere else is imported or called. Any other global is refused with
``UnsafeWeightsError`` naming it, during unpickling, before any tensor is built.
Tensor data is read only after the whole pickle was accepted, straight from a memory
map of the file (every view's bounds and each zip member's CRC checked), and copied
once into each returned array; the map's pages are released as they are used, so
resident memory is the size of the tensors returned (for a nested checkpoint, of the
selected entry only), not that plus the file.

Every returned array is C-contiguous, writable and owns its data (no view of the
file). dtypes: float32/64, float16, bfloat16 and float8 (those two need ``ml_dtypes``),
int8/16/32/64, uint8/16/32/64, bool, complex64/128.
"""
import io
import mmap
import os
import pickle
import struct
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np

__all__ = ["load_weights", "save_weights", "remap_keys", "detect_format",
           "WeightsError", "UnsafeWeightsError"]

_TORCH_MAGIC = 0x1950A86A20F9469CFC6C
_TORCH_LEGACY_PROTOCOL = 1001
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_MAX_PICKLE = 256 << 20    # data.pkl holds names and shapes only
_EXPECTED = ("a PyTorch checkpoint (zip or legacy), a .safetensors file or an .npz of "
             "named arrays")


class WeightsError(ValueError):
    """A weights file that cannot be read: wrong format, truncated, corrupt or
    inconsistent. The message names the file and what was expected."""


class UnsafeWeightsError(WeightsError):
    """The file's pickle references a global that is not on the allow-list: loading
    it would have imported or run code from the file. Nothing was built."""


# ----------------------------------------------------------------------- dtypes
# torch storage class -> numpy dtype name ("bfloat16" etc. come from ml_dtypes)
_STORAGE_DTYPES = {
    "FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8",
    "BoolStorage": "bool", "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128",
    "UntypedStorage": "uint8",   # bytes, with the dtype in _rebuild_tensor_v3 (pickled as
}                                # torch.storage.UntypedStorage)
# torch dtype name (pickled as the global torch.<name>) -> numpy dtype name
_TORCH_DTYPES = {
    "float32": "float32", "float": "float32", "float64": "float64", "double": "float64",
    "float16": "float16", "half": "float16", "bfloat16": "bfloat16",
    "int64": "int64", "long": "int64", "int32": "int32", "int": "int32",
    "int16": "int16", "short": "int16", "int8": "int8", "uint8": "uint8",
    "uint16": "uint16", "uint32": "uint32", "uint64": "uint64", "bool": "bool",
    "complex64": "complex64", "cfloat": "complex64", "complex128": "complex128",
    "cdouble": "complex128",
    "float8_e4m3fn": "float8_e4m3fn", "float8_e5m2": "float8_e5m2",
    "float8_e4m3fnuz": "float8_e4m3fnuz", "float8_e5m2fnuz": "float8_e5m2fnuz",
}
_ML_DTYPES = {"bfloat16", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz"}


def _np_dtype(name, what):
    """The numpy dtype for our dtype name; ml_dtypes for bfloat16 and float8."""
    if name in _ML_DTYPES:
        try:
            import ml_dtypes
        except ImportError:
            raise ImportError(f"{what} is {name}; reading {name} tensors needs the ml_dtypes "
                              f"package (pip install ml_dtypes, or convtune[weights])") from None
        return np.dtype(getattr(ml_dtypes, name))
    return np.dtype(name)


# ---------------------------------------------------- inert stand-ins of the pickle
class _Inert:
    """Base of the stand-ins: fixed slots, and no state may be set by the pickle."""
    __slots__ = ()

    def __setstate__(self, state):
        raise WeightsError(f"the pickle tries to set the state of a {type(self).__name__}")

    def __reduce__(self):  # never pickled back
        raise TypeError(f"{type(self).__name__} cannot be pickled")


class _StorageType(_Inert):
    """What ``torch.FloatStorage`` etc. unpickle to: only a dtype name."""
    __slots__ = ("name", "dtype")

    def __init__(self, name, dtype):
        self.name, self.dtype = name, dtype

    def __repr__(self):
        return f"torch.{self.name}"


class _DType(_Inert):
    """What ``torch.float32`` etc. unpickle to."""
    __slots__ = ("name",)

    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return f"torch.{self.name}"


class _Storage(_Inert):
    """A storage named by a persistent id: ``numel`` elements of ``dtype`` at element
    ``base`` of the file's storage ``key`` (base > 0 only for legacy storage views)."""
    __slots__ = ("key", "dtype", "numel", "base")

    def __init__(self, key, dtype, numel, base=0):
        self.key, self.dtype, self.numel, self.base = key, dtype, numel, base


class _Tensor(_Inert):
    """A tensor to build once the pickle is accepted: a strided view of a storage."""
    __slots__ = ("storage", "dtype", "offset", "size", "stride", "neg", "conj")

    def __init__(self, storage, dtype, offset, size, stride, neg=False, conj=False):
        self.storage, self.dtype, self.offset = storage, dtype, offset
        self.size, self.stride, self.neg, self.conj = size, stride, neg, conj

    def __repr__(self):
        return f"<tensor {self.dtype} {tuple(self.size)}>"


def _int(value, what):
    if isinstance(value, bool) or not isinstance(value, int):
        raise WeightsError(f"{what} must be an int, got {type(value).__name__}")
    return value


def _int_tuple(value, what):
    if not isinstance(value, (tuple, list)):
        raise WeightsError(f"{what} must be a tuple of ints, got {type(value).__name__}")
    out = tuple(_int(v, what) for v in value)
    if any(v < 0 for v in out):
        raise WeightsError(f"{what} must not be negative, got {out}")
    return out


def _tensor_from(storage, offset, size, stride, dtype=None, metadata=None):
    if not isinstance(storage, _Storage):
        raise WeightsError(f"a tensor's storage must be a storage record, got {type(storage).__name__}")
    size = _int_tuple(size, "a tensor's size")
    stride = _int_tuple(stride, "a tensor's stride")
    offset = _int(offset, "a tensor's storage offset")
    if len(size) != len(stride):
        raise WeightsError(f"a tensor's size {size} and stride {stride} differ in length")
    if len(size) > 32:
        raise WeightsError(f"a tensor with {len(size)} dimensions (at most 32 are supported)")
    if offset < 0:
        raise WeightsError(f"a tensor's storage offset must not be negative, got {offset}")
    flags = {}
    if metadata:
        if not isinstance(metadata, dict) or not set(metadata) <= {"neg", "conj"}:
            raise WeightsError(f"unsupported tensor metadata {metadata!r} (known: neg, conj)")
        flags = {k: bool(v) for k, v in metadata.items()}
    return _Tensor(storage, dtype or storage.dtype, offset, size, stride, **flags)


# The rebuild functions the pickle may call: they only record what to build.
def _rebuild_tensor(storage, storage_offset, size, stride):
    return _tensor_from(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    return _tensor_from(storage, storage_offset, size, stride, metadata=metadata)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks,
                       dtype, metadata=None):
    if not isinstance(dtype, _DType):
        raise WeightsError(f"_rebuild_tensor_v3's dtype must be a torch dtype, got {dtype!r}")
    return _tensor_from(storage, storage_offset, size, stride, _TORCH_DTYPES[dtype.name], metadata)


def _rebuild_parameter(data, requires_grad=True, backward_hooks=None):
    if not isinstance(data, _Tensor):
        raise WeightsError(f"a parameter must wrap a tensor, got {type(data).__name__}")
    return data


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
    return _rebuild_parameter(data)


def _latin1_encode(text, encoding="latin1"):
    """``_codecs.encode`` as protocol-2 pickles of ``bytes`` use it, and nothing more."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise WeightsError(f"_codecs.encode is allowed only as encode(str, 'latin1'), "
                           f"got encode({type(text).__name__}, {encoding!r})")
    return text.encode("latin1")


class _Function(_Inert):
    """An allowed function as the pickle sees it: callable, but with no attributes
    the pickle could set (a BUILD on a plain function could change its defaults for
    every later load)."""
    __slots__ = ("_fn",)

    def __init__(self, fn):
        self._fn = fn

    def __call__(self, *args):
        return self._fn(*args)

    def __repr__(self):
        return self._fn.__name__


_ALLOWED = {
    ("torch._utils", "_rebuild_tensor"): _Function(_rebuild_tensor),
    ("torch._utils", "_rebuild_tensor_v2"): _Function(_rebuild_tensor_v2),
    ("torch._utils", "_rebuild_tensor_v3"): _Function(_rebuild_tensor_v3),
    ("torch._utils", "_rebuild_parameter"): _Function(_rebuild_parameter),
    ("torch._utils", "_rebuild_parameter_with_state"): _Function(_rebuild_parameter_with_state),
    ("collections", "OrderedDict"): OrderedDict,     # a type: the pickle cannot change it
    ("_codecs", "encode"): _Function(_latin1_encode),
}
for _name, _dt in _STORAGE_DTYPES.items():
    _ALLOWED[("torch", _name)] = _StorageType(_name, _dt)
    _ALLOWED[("torch.cuda", _name)] = _StorageType(_name, _dt)   # pre-1.0 CUDA checkpoints
_ALLOWED[("torch.storage", "UntypedStorage")] = _ALLOWED[("torch", "UntypedStorage")]
for _name in _TORCH_DTYPES:
    _ALLOWED[("torch", _name)] = _DType(_name)
del _name, _dt


def _refusal_hint(module, name):
    if module.startswith("__torch__"):
        return " (this is a TorchScript archive, torch.jit.save; save the state_dict instead)"
    if module.startswith("torch.nn") or module == "__main__":
        return (" (the file holds a pickled model object, torch.save(model); save "
                "model.state_dict() instead)")
    if module.startswith(("numpy", "argparse")) or module == "builtins":
        return (" (a checkpoint that pickles other Python objects besides tensors; "
                "re-save only the state_dict)")
    return ""


class _Unpickler(pickle.Unpickler):
    """The allow-list unpickler. ``storage`` turns a persistent id into a _Storage
    (and checks it against the file); ``path`` is for messages."""

    def __init__(self, file, path, storage):
        super().__init__(file, encoding="utf-8")
        self._path, self._storage = path, storage

    def find_class(self, module, name):
        found = _ALLOWED.get((module, name))
        if found is None:
            raise UnsafeWeightsError(
                f"{self._path}: refused to load: the pickle references the global "
                f"{module}.{name}, which is not a tensor, storage or OrderedDict; importing "
                f"or calling it could run code from the file, so nothing was built"
                f"{_refusal_hint(module, name)}")
        return found

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or not pid:
            raise WeightsError(f"unexpected persistent id {pid!r}")
        kind = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
        if kind == "module":
            raise UnsafeWeightsError(
                f"{self._path}: refused to load: the pickle holds a whole torch.nn.Module "
                f"(saved with its source); save model.state_dict() instead")
        if kind != "storage":
            raise WeightsError(f"unknown persistent id kind {kind!r} (expected 'storage')")
        return self._storage(pid[1:])


def _unpickle(file, path, storage, what):
    try:
        return _Unpickler(file, path, storage).load()
    except (UnsafeWeightsError, ImportError):
        raise
    except WeightsError as e:     # raised by a stand-in or a check: name the file
        if str(e).startswith(f"{path}: "):
            raise
        raise WeightsError(f"{path}: {what} is corrupt: {e}") from None
    except RecursionError:
        raise WeightsError(f"{path}: {what} is nested too deeply to read") from None
    except Exception as e:
        raise WeightsError(f"{path}: {what} is truncated or corrupt "
                           f"({type(e).__name__}: {e})") from None


def _check_storage_pid(data, legacy):
    """(stype, key, numel, view) from a persistent id's fields, checked."""
    want = 5 if legacy else 4
    if len(data) != want:
        raise WeightsError(f"a storage persistent id has {len(data) + 1} fields, expected {want + 1}")
    stype, key, _location, numel = data[:4]
    if not isinstance(stype, _StorageType):
        raise WeightsError(f"a storage's type must be a torch storage class, got {stype!r}")
    if isinstance(key, int) and not isinstance(key, bool):
        key = str(key)
    if not isinstance(key, str):
        raise WeightsError(f"a storage key must be a str, got {type(key).__name__}")
    numel = _int(numel, f"storage {key}'s numel")
    if numel < 0:
        raise WeightsError(f"storage {key} has a negative numel {numel}")
    return stype, key, numel, (data[4] if legacy else None)


# -------------------------------------------------------------------- file access
class _Mapped:
    """A read-only memory map of a file (or an empty stand-in for an empty file)."""

    def __init__(self, path):
        self.path = path
        self._f = open(path, "rb")
        self.size = os.fstat(self._f.fileno()).st_size
        self.mm = (mmap.mmap(self._f.fileno(), 0, access=mmap.ACCESS_READ)
                   if self.size else b"")

    def close(self):
        if isinstance(self.mm, mmap.mmap):
            try:
                self.mm.close()
            except BufferError:     # an exported view is still alive: let GC unmap it
                pass
        self._f.close()


def _release(buffer, start, end):
    """Drop the pages of buffer[start:end] from this process if it is a memory map
    (they stay in the OS page cache; touching them again re-reads them), so resident
    memory stays that of the arrays built rather than growing to the whole file."""
    if isinstance(buffer, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED") and end > start:
        lo = start - start % mmap.PAGESIZE
        try:
            buffer.madvise(mmap.MADV_DONTNEED, lo, end - lo)
        except (OSError, ValueError):   # advice only
            pass


def _crc32(buffer, start, nbytes, chunk=16 << 20):
    """zlib.crc32 of buffer[start:start + nbytes], a chunk at a time (each released)."""
    crc, view = 0, memoryview(buffer)
    try:
        for a in range(start, start + nbytes, chunk):
            b = min(a + chunk, start + nbytes)
            crc = zlib.crc32(view[a:b], crc)
            _release(buffer, a, b)
    finally:
        view.release()
    return crc


def _materialize(t, buffer, start, nbytes, byteorder, path, name):
    """The tensor ``t`` as a new C-contiguous array. Its storage's root occupies
    buffer[start:start + nbytes]; the storage itself is ``t.storage.numel`` elements
    from element ``t.storage.base`` of it; ``byteorder`` is "little" or "big"."""
    dtype = _np_dtype(t.dtype, f"{path}: tensor {name!r}")
    item = dtype.itemsize
    s_item = _np_dtype(t.storage.dtype, f"{path}: tensor {name!r}'s storage").itemsize
    region = start + t.storage.base * s_item
    region_bytes = min(t.storage.numel * s_item, nbytes - t.storage.base * s_item)
    numel = 1
    for n in t.size:
        numel *= n
    if numel == 0:
        return np.empty(t.size, dtype)
    first = t.offset
    last = first + sum((n - 1) * st for n, st in zip(t.size, t.stride))
    count = max(region_bytes, 0) // item
    if last >= count:
        raise WeightsError(
            f"{path}: tensor {name!r} (size {tuple(t.size)}, stride {tuple(t.stride)}, offset "
            f"{t.offset}) reaches element {last} of its storage {t.storage.key!r}, which holds "
            f"only {count} {t.dtype} elements: the file is corrupt")
    order = ">" if byteorder == "big" and item > 1 else "<" if item > 1 else "|"
    if dtype.type.__module__ == "numpy":
        src = dtype.newbyteorder(order) if item > 1 else dtype
        fix = (lambda a: a.astype(dtype, copy=False))
    else:   # ml_dtypes: read as unsigned ints of the same size (numpy's strided views
        # do not know these types), in the file's byte order, then reinterpret
        src = np.dtype(f"{order}u{item}")
        fix = (lambda a: a.astype(f"=u{item}", copy=False).view(dtype))
    flat = np.frombuffer(buffer, dtype=src, count=last - first + 1, offset=region + first * item)
    view = np.lib.stride_tricks.as_strided(flat, shape=t.size,
                                           strides=[st * item for st in t.stride],
                                           writeable=False)
    try:
        out = fix(np.array(view, order="C", copy=True))
    except ValueError as e:     # e.g. a broadcast view too big to allocate
        raise WeightsError(f"{path}: tensor {name!r} of size {tuple(t.size)} cannot be "
                           f"built ({e})") from None
    finally:
        del view, flat
        _release(buffer, region + first * item, region + (last + 1) * item)
    if dtype == np.bool_:
        out = out.view(np.uint8) != 0      # any non-zero byte is True
    if t.conj:
        out = np.conj(out)
    if t.neg:
        out = np.negative(out)
    return out


# ----------------------------------------------------------------- torch zip format
def _load_torch_zip(path, mapped, zf, prefix, key):
    names = set(zf.namelist())
    byteorder = "little"
    if prefix + "byteorder" in names:
        byteorder = zf.read(prefix + "byteorder").decode("ascii", "replace").strip()
        if byteorder not in ("little", "big"):
            raise WeightsError(f"{path}: byteorder record is {byteorder!r}, expected 'little' or 'big'")
    seen = {}

    def storage(data):
        stype, skey, numel, _ = _check_storage_pid(data, legacy=False)
        member = f"{prefix}data/{skey}"
        if member not in names:
            raise WeightsError(f"{path}: the pickle names storage {skey!r} but the archive has "
                               f"no member {member!r}: truncated or corrupt")
        prev = seen.setdefault(skey, (stype.dtype, numel))
        if prev != (stype.dtype, numel):
            raise WeightsError(f"{path}: storage {skey!r} appears as {prev} and as "
                               f"{(stype.dtype, numel)}: corrupt")
        return _Storage(skey, stype.dtype, numel)

    info = zf.getinfo(prefix + "data.pkl")
    if info.file_size > _MAX_PICKLE:
        raise WeightsError(f"{path}: {info.filename} claims {info.file_size} bytes; a weights "
                           f"pickle (tensor data lives outside it) is far smaller: corrupt")
    pkl = zf.read(info)
    obj = _unpickle(io.BytesIO(pkl), path, storage, f"{prefix}data.pkl")
    del pkl
    chosen = _select(obj, key, path)
    for name, t in chosen.items():     # a dtype that needs ml_dtypes: say which tensor
        _np_dtype(t.dtype, f"{path}: tensor {name!r}")

    cache = {}

    def storage_bytes(s):
        """(buffer, start, nbytes) of storage s's member: a memory-map slice for a
        stored member (CRC checked), else the decompressed bytes."""
        if s.key in cache:
            return cache[s.key]
        info = zf.getinfo(f"{prefix}data/{s.key}")
        what = f"{path}: storage member {info.filename!r}"
        if info.flag_bits & 0x1:
            raise WeightsError(f"{what} is encrypted")
        if info.compress_type == zipfile.ZIP_STORED:
            h = info.header_offset
            local = mapped.mm[h:h + 30]
            if len(local) < 30 or local[:4] != b"PK\x03\x04":
                raise WeightsError(f"{what}: bad local header (truncated or corrupt)")
            n, m = struct.unpack("<HH", local[26:30])
            start = h + 30 + n + m
            nbytes = info.file_size
            if start + nbytes > mapped.size:
                raise WeightsError(f"{what} runs past the end of the file (truncated)")
            if _crc32(mapped.mm, start, nbytes) != info.CRC:
                raise WeightsError(f"{what} fails its CRC check: the file is corrupt")
            entry = (mapped.mm, start, nbytes)
        else:
            want = s.numel * _np_dtype(s.dtype, f"{path}: storage {s.key!r}").itemsize
            try:
                with zf.open(info) as f:
                    data = f.read(want)
            except (zipfile.BadZipFile, zlib.error, EOFError) as e:
                raise WeightsError(f"{what} is corrupt ({e})") from None
            entry = (data, 0, len(data))
        item = _np_dtype(s.dtype, f"{path}: storage {s.key!r}").itemsize
        if entry[2] < s.numel * item:
            raise WeightsError(f"{what} holds {entry[2]} bytes, but the pickle says "
                               f"{s.numel} {s.dtype} elements ({s.numel * item} bytes): corrupt")
        cache[s.key] = entry
        return entry

    uses = {}
    for t in chosen.values():
        uses[t.storage.key] = uses.get(t.storage.key, 0) + 1
    out = {}
    try:
        for name, t in chosen.items():
            buf, start, nbytes = storage_bytes(t.storage)
            out[name] = _materialize(t, buf, start, nbytes, byteorder, path, name)
            del buf
            uses[t.storage.key] -= 1
            if not uses[t.storage.key]:      # its last tensor: free decompressed bytes
                del cache[t.storage.key]
    finally:
        cache.clear()
    return out


# -------------------------------------------------------------- torch legacy format
class _Reader:
    """File-like read/readline over a memory map, for the unpickler (no peek)."""

    def __init__(self, mm):
        self.mm, self.pos = mm, 0

    def read(self, n=-1):
        end = len(self.mm) if n is None or n < 0 else min(len(self.mm), self.pos + n)
        data = self.mm[self.pos:end]
        self.pos = end
        return data

    def readline(self):
        end = self.mm.find(b"\n", self.pos)
        end = len(self.mm) if end < 0 else end + 1
        data = self.mm[self.pos:end]
        self.pos = end
        return data


def _no_storage(path):
    def refuse(data):
        raise WeightsError(f"{path}: storage record in a legacy header pickle: corrupt")
    return refuse


def _load_torch_legacy(path, mapped, key):
    reader = _Reader(mapped.mm)
    what = "the legacy PyTorch header"
    magic = _unpickle(reader, path, _no_storage(path), what)
    if magic != _TORCH_MAGIC:
        raise WeightsError(f"{path}: a pickle, but not a PyTorch checkpoint (no torch.save magic "
                           f"number); expected {_EXPECTED}")
    version = _unpickle(reader, path, _no_storage(path), what)
    if version != _TORCH_LEGACY_PROTOCOL:
        raise WeightsError(f"{path}: legacy PyTorch protocol version {version!r}, expected "
                           f"{_TORCH_LEGACY_PROTOCOL}")
    sys_info = _unpickle(reader, path, _no_storage(path), what)
    if not isinstance(sys_info, dict):
        raise WeightsError(f"{path}: legacy PyTorch sys_info is not a dict: corrupt")
    storages = {}     # root key -> (dtype, numel)

    def storage(data):
        stype, skey, numel, view = _check_storage_pid(data, legacy=True)
        prev = storages.setdefault(skey, (stype.dtype, numel))
        if prev != (stype.dtype, numel):
            raise WeightsError(f"{path}: storage {skey!r} appears as {prev} and as "
                               f"{(stype.dtype, numel)}: corrupt")
        if view is None:
            return _Storage(skey, stype.dtype, numel)
        if not isinstance(view, tuple) or len(view) != 3:
            raise WeightsError(f"{path}: bad storage view record {view!r}")
        _, offset, vsize = view
        offset, vsize = _int(offset, "a storage view offset"), _int(vsize, "a storage view size")
        if offset < 0 or vsize < 0 or offset + vsize > numel:
            raise WeightsError(f"{path}: storage view [{offset}, {offset + vsize}) outside "
                               f"storage {skey!r} of {numel} elements")
        return _Storage(skey, stype.dtype, vsize, base=offset)

    obj = _unpickle(reader, path, storage, "the legacy PyTorch pickle")
    keys = _unpickle(reader, path, _no_storage(path), "the legacy PyTorch storage-key list")
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise WeightsError(f"{path}: the legacy storage-key list is not a list of str: corrupt")
    missing = set(storages) - set(keys)
    if missing:
        raise WeightsError(f"{path}: storages {sorted(missing)} are used but not listed: corrupt")
    chosen = _select(obj, key, path)
    for name, t in chosen.items():     # a dtype that needs ml_dtypes: say which tensor
        _np_dtype(t.dtype, f"{path}: tensor {name!r}")
    # Walk the storage headers (8-byte little-endian numel, then the data) to locate each.
    where, pos = {}, reader.pos
    for k in keys:
        if k not in storages:
            raise WeightsError(f"{path}: storage {k!r} is listed but no tensor uses it: corrupt")
        dtype, numel = storages[k]
        item = _np_dtype(dtype, f"{path}: storage {k!r}").itemsize
        if pos + 8 > mapped.size:
            raise WeightsError(f"{path}: truncated: the header of storage {k!r} is missing")
        (count,) = struct.unpack("<q", mapped.mm[pos:pos + 8])
        if count != numel:
            raise WeightsError(f"{path}: storage {k!r} has {count} elements on disk, the pickle "
                               f"says {numel}: corrupt")
        start, nbytes = pos + 8, numel * item
        if start + nbytes > mapped.size:
            raise WeightsError(f"{path}: truncated: storage {k!r} needs {nbytes} bytes at offset "
                               f"{start}, the file has {mapped.size}")
        where[k] = (start, nbytes)
        pos = start + nbytes
    out = {}
    for name, t in chosen.items():
        start, nbytes = where[t.storage.key]
        out[name] = _materialize(t, mapped.mm, start, nbytes, "little", path, name)
    return out


# ------------------------------------------------------------- picking the entry
def _is_state_dict(obj):
    return (isinstance(obj, Mapping) and len(obj) > 0
            and all(isinstance(k, str) and isinstance(v, _Tensor) for k, v in obj.items()))


def _describe(obj):
    if isinstance(obj, Mapping):
        return "{" + ", ".join(f"{k!r}: {_describe_short(v)}" for k, v in list(obj.items())[:12]) + \
            (", ..." if len(obj) > 12 else "") + "}"
    return _describe_short(obj)


def _describe_short(v):
    if isinstance(v, _Tensor):
        return "tensor"
    if isinstance(v, Mapping):
        n = sum(isinstance(x, _Tensor) for x in v.values())
        return f"dict of {len(v)} ({n} tensors)"
    return type(v).__name__


def _select(obj, key, path):
    """The {name: _Tensor} mapping to build: ``obj`` itself if it is one, else the
    entry ``key`` names (a str, or a sequence of str for deeper levels), else the one
    top-level entry that is one."""
    if key is not None:
        parts = [key] if isinstance(key, str) else list(key)
        node, walked = obj, []
        for part in parts:
            if not isinstance(node, Mapping) or part not in node:
                have = list(node)[:20] if isinstance(node, Mapping) else type(node).__name__
                raise KeyError(f"{path}: no entry {part!r} at {walked or 'the top level'} "
                               f"(entries: {have})")
            node, walked = node[part], walked + [part]
        bad = [k for k, v in node.items() if not isinstance(v, _Tensor)] \
            if isinstance(node, Mapping) else None
        if bad is None or bad or not node:
            raise WeightsError(f"{path}: entry {key!r} is not a mapping of name -> tensor "
                               f"({'non-tensor entries: ' + ', '.join(map(repr, bad[:10])) if bad else _describe(node)})")
        return dict(node)
    if _is_state_dict(obj):
        return dict(obj)
    if isinstance(obj, Mapping):
        found = [k for k, v in obj.items() if _is_state_dict(v)]
        if len(found) == 1:
            return dict(obj[found[0]])
        if len(found) > 1:
            raise WeightsError(f"{path}: several entries hold weights: {found}; pick one with "
                               f"key=, e.g. key={found[0]!r}")
    raise WeightsError(f"{path}: found no mapping of name -> tensor (a state_dict) at the top "
                       f"level or one level down; the file holds {_describe(obj)}")


# ------------------------------------------------------------------ other formats
def _load_npz(path):
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except ValueError as e:
        raise WeightsError(f"{path}: an .npz that cannot be read without pickle ({e}); "
                           f"expected arrays of plain numeric dtypes") from None
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as e:
        raise WeightsError(f"{path}: truncated or corrupt .npz ({e})") from None


def _load_safetensors(path):
    try:
        from safetensors.numpy import load_file
    except ImportError:
        raise ImportError(f"{path} is a .safetensors file; reading it needs the safetensors "
                          f"package (pip install safetensors, or convtune[weights])") from None
    try:
        arrays = load_file(path)
    except Exception as e:   # safetensors' own SafetensorError and friends
        raise WeightsError(f"{path}: truncated or corrupt .safetensors file, or one this "
                           f"safetensors cannot read ({type(e).__name__}: {e})") from None
    return {k: a if a.flags.writeable and a.flags.c_contiguous else np.array(a, order="C")
            for k, a in arrays.items()}


# ------------------------------------------------------------------------ public
def detect_format(path):
    """The format of the weights file ``path`` from its content: "torch-zip",
    "torch-legacy", "safetensors" or "npz". Raises WeightsError for anything else."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        head = f.read(32)
        size = os.fstat(f.fileno()).st_size
        if not head:
            raise WeightsError(f"{path}: empty file; expected {_EXPECTED}")
        if head[:4] in _ZIP_MAGIC:
            try:
                with zipfile.ZipFile(f) as zf:
                    return _zip_kind(path, zf)[0]
            except zipfile.BadZipFile as e:
                raise WeightsError(f"{path}: truncated or corrupt zip archive ({e}); expected "
                                   f"a PyTorch zip checkpoint or an .npz") from None
        if head[:1] == b"\x80":
            if _starts_with_torch_magic(head):
                return "torch-legacy"
            raise WeightsError(f"{path}: a pickle, but not a PyTorch checkpoint (it does not start "
                               f"with torch.save's magic number; nothing was unpickled); "
                               f"expected {_EXPECTED}")
        if len(head) >= 9:
            (n,) = struct.unpack("<Q", head[:8])
            if head[8:9] == b"{" and 2 <= n <= size - 8:
                return "safetensors"
            if head[8:9] == b"{":
                raise WeightsError(f"{path}: a .safetensors header of {n} bytes in a file of "
                                   f"{size}: truncated or corrupt")
        f.seek(257)
        if f.read(5) == b"ustar":
            raise WeightsError(f"{path}: a tar archive (PyTorch's pre-0.4 format is not "
                               f"supported); expected {_EXPECTED}")
    if head.startswith(b"\x93NUMPY"):
        raise WeightsError(f"{path}: a single .npy array, not named weights; expected {_EXPECTED}")
    raise WeightsError(f"{path}: not a recognised weights file (starts with {head[:8]!r}); "
                       f"expected {_EXPECTED}")


def _starts_with_torch_magic(head):
    """Whether ``head`` begins with torch.save's first pickle, the int MAGIC:
    PROTO n, [FRAME len (protocol 4+)], LONG1 10 <10 bytes little-endian>."""
    p = 2
    if head[p:p + 1] == b"\x95":
        p += 9
    return (head[p:p + 2] == b"\x8a\x0a"
            and int.from_bytes(head[p + 2:p + 12], "little") == _TORCH_MAGIC)


def _zip_kind(path, zf):
    """("torch-zip", "<dir>/") or ("npz", None) for an open zip archive."""
    names = zf.namelist()
    pkls = [n for n in names if n.split("/")[-1] == "data.pkl" and n.count("/") <= 1]
    if pkls:
        top = [n for n in pkls if n.count("/") == 1] or pkls
        if len(top) > 1:
            raise WeightsError(f"{path}: several PyTorch records in one zip: {top}")
        return "torch-zip", top[0][:-len("data.pkl")]
    if names and all(n.endswith(".npy") for n in names):
        return "npz", None
    raise WeightsError(f"{path}: a zip archive that is neither a PyTorch checkpoint (no "
                       f"<dir>/data.pkl) nor an .npz (members other than .npy: "
                       f"{[n for n in names if not n.endswith('.npy')][:5]})")


def load_weights(path, key=None):
    """Read the weights file ``path`` into ``{name: numpy.ndarray}``, in file order.

    Formats, told by content (not by extension): PyTorch's zip format and its legacy
    format (``torch.save``; see the module docstring for the layouts), ``.safetensors``
    (needs the ``safetensors`` package) and ``.npz`` (``allow_pickle=False``). Nothing
    in the file is ever executed: a pickle referencing anything but tensors, storages
    and OrderedDict raises ``UnsafeWeightsError`` before anything is built.

    A PyTorch file may hold a state_dict, or a checkpoint that nests one, e.g.
    ``{"state_dict": ..., "epoch": 3, "optimizer": ...}``: the single entry that is a
    mapping of name -> tensor is taken, or ``key`` names it (a str, or a sequence of
    str for deeper levels; only the chosen entry's tensors are read). ``key`` is not
    accepted for the flat formats (.safetensors, .npz).

    Returns new arrays, C-contiguous and writable, in the file's dtypes (bfloat16 and
    float8 as ``ml_dtypes`` types). Errors: WeightsError (a ValueError) naming the file
    and what was wrong or expected; KeyError for a ``key`` the file does not have;
    ImportError when the file needs safetensors or ml_dtypes and they are missing;
    OSError when the file cannot be opened.
    """
    path = os.fspath(path)
    if key is not None and not (isinstance(key, str) or (
            isinstance(key, (tuple, list)) and key and all(isinstance(k, str) for k in key))):
        raise TypeError(f"load_weights: key must be a str or a sequence of str, got {key!r}")
    kind = detect_format(path)
    if kind in ("safetensors", "npz"):
        if key is not None:
            raise ValueError(f"load_weights: key= picks an entry of a nested PyTorch "
                             f"checkpoint; {path} is {kind}, a flat name -> array file")
        return _load_safetensors(path) if kind == "safetensors" else _load_npz(path)
    mapped = _Mapped(path)
    try:
        if kind == "torch-legacy":
            return _load_torch_legacy(path, mapped, key)
        try:
            zf = zipfile.ZipFile(mapped._f)
        except zipfile.BadZipFile as e:
            raise WeightsError(f"{path}: truncated or corrupt zip archive ({e})") from None
        with zf:
            _, prefix = _zip_kind(path, zf)
            return _load_torch_zip(path, mapped, zf, prefix, key)
    finally:
        mapped.close()


def remap_keys(weights, prefix=None, rename=None):
    """A new dict of ``weights`` with its keys changed, for loading into a model
    whose names differ: ``prefix`` (a str, or a sequence tried in order) is removed
    from each key that starts with it, e.g. "module." for DataParallel checkpoints
    (keys without it stay as they are, as with torch's
    ``consume_prefix_in_state_dict_if_present``); then ``rename``, a mapping
    old -> new (unlisted keys stay) or a callable key -> new key (None drops the
    entry), is applied. Two keys that end up equal are a ValueError naming both."""
    if not isinstance(weights, Mapping):
        raise TypeError(f"remap_keys expects a mapping of name -> array, got {type(weights).__name__}")
    prefixes = () if prefix is None else ((prefix,) if isinstance(prefix, str) else tuple(prefix))
    if not all(isinstance(p, str) and p for p in prefixes):
        raise TypeError(f"prefix must be a non-empty str or a sequence of them, got {prefix!r}")
    if rename is not None and not (callable(rename) or isinstance(rename, Mapping)):
        raise TypeError(f"rename must be a mapping old -> new or a callable, got "
                        f"{type(rename).__name__}")
    out, source = {}, {}
    for k, v in weights.items():
        new = k
        for p in prefixes:
            if new.startswith(p):
                new = new[len(p):]
                break
        if rename is not None:
            new = rename(new) if callable(rename) else rename.get(new, new)
            if new is None:
                continue
            if not isinstance(new, str):
                raise TypeError(f"rename gave {new!r} for {k!r}; expected a str or None")
        if new in out:
            raise ValueError(f"remap_keys: {source[new]!r} and {k!r} both become {new!r}")
        out[new], source[new] = v, k
    return out


def save_weights(weights, path):
    """Write ``{name: array}`` to ``path`` as ``.npz`` or ``.safetensors``, chosen by
    its extension. An .npz cannot hold bfloat16/float8, so those are widened to
    float32 (exactly); safetensors keeps them. The file is written to a temporary
    name beside ``path`` and renamed into place. Returns the format written."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".npz", ".safetensors"):
        raise ValueError(f"save_weights: {path}: expected a name ending in .npz or .safetensors")
    arrays = {}
    for k, v in weights.items():
        a = np.ascontiguousarray(v)
        if ext == ".npz" and a.dtype.type.__module__ != "numpy":      # ml_dtypes
            a = a.astype(np.float32)
        arrays[k] = a
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        if ext == ".npz":      # as numpy.savez writes it, without its reserved names
            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
                for k, a in arrays.items():
                    with zf.open(k + ".npy", "w", force_zip64=True) as member:
                        np.lib.format.write_array(member, a, allow_pickle=False)
        else:
            try:
                from safetensors.numpy import save_file
            except ImportError:
                raise ImportError("writing .safetensors needs the safetensors package "
                                  "(pip install safetensors, or convtune[weights])") from None
            save_file(arrays, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return ext[1:]
