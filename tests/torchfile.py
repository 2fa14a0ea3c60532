"""PyTorch checkpoint files written without PyTorch, for tests/test_weights.py.

The layouts are written out here from PyTorch's serialization format (torch/serialization.py,
``_save`` and ``_legacy_save``), independently of engine/nn/weights.py:

zip (``torch.save`` since 1.6)::

    <folder>/data.pkl      pickle protocol 2; a tensor is
                           REDUCE(GLOBAL torch._utils _rebuild_tensor_v2,
                                  (storage, offset, size, stride, requires_grad, OrderedDict()))
                           and a storage is the persistent id
                           ("storage", GLOBAL torch <X>Storage, key, "cpu", numel)
    <folder>/byteorder     "little" | "big"
    <folder>/data/<key>    the storage's bytes
    <folder>/version       "3"

legacy (``_use_new_zipfile_serialization=False``)::

    pickle(MAGIC) pickle(1001) pickle(sys_info) pickle(obj)  [pid has a 6th field: None]
    pickle(sorted keys)  then per key: int64 LE numel + the bytes (little-endian)

``Storage(key, data)`` is a 1-D numpy array saved as one storage; ``Tensor(storage, offset,
size, stride)`` a view of it; ``Global(module, name)`` any global (for crafted pickles).
``expected(tensor)`` computes the tensor's values by plain indexing, element by element.
"""
import itertools
import pickle
import struct
import zipfile
from collections import OrderedDict

import numpy as np

MAGIC = 0x1950A86A20F9469CFC6C

STORAGE_CLASS = {"float32": "FloatStorage", "float64": "DoubleStorage", "float16": "HalfStorage",
                 "bfloat16": "BFloat16Storage", "int64": "LongStorage", "int32": "IntStorage",
                 "int16": "ShortStorage", "int8": "CharStorage", "uint8": "ByteStorage",
                 "bool": "BoolStorage"}


class Global:
    """Pickled as the opcode GLOBAL "module\\nname\\n" (nothing is imported)."""

    def __init__(self, module, name):
        self.module, self.name = module, name

    def __call__(self, *args):  # pickle's save_reduce wants a callable; never called
        raise AssertionError("a Global stand-in is only written, never called")


class Storage:
    def __init__(self, key, data, cls=None):
        self.key, self.data = str(key), np.ascontiguousarray(data).ravel()
        self.cls = cls or STORAGE_CLASS[str(self.data.dtype)]


class Tensor:
    def __init__(self, storage, offset, size, stride, rebuild="_rebuild_tensor_v2",
                 parameter=False, dtype=None):
        self.storage, self.offset = storage, offset
        self.size, self.stride = tuple(size), tuple(stride)
        self.rebuild, self.parameter, self.dtype = rebuild, parameter, dtype

    def __reduce__(self):
        args = (self.storage, self.offset, self.size, self.stride, False, OrderedDict())
        if self.rebuild == "_rebuild_tensor_v3":
            args += (Global("torch", self.dtype),)
        t = (Global("torch._utils", self.rebuild), args)
        if self.parameter:
            return (Global("torch._utils", "_rebuild_parameter"), (_Reduced(t), True, OrderedDict()))
        return t


class _Reduced:
    def __init__(self, reduce_value):
        self.value = reduce_value

    def __reduce__(self):
        return self.value


def contiguous(key, array, **kw):
    """A Tensor over a fresh storage holding ``array`` (C order)."""
    array = np.asarray(array)
    strides = tuple(int(np.prod(array.shape[i + 1:])) for i in range(array.ndim))
    return Tensor(Storage(key, array), 0, array.shape, strides, **kw)


def expected(t, dtype=None):
    """The values of Tensor ``t``: element [i, j, ...] = storage[offset + i*s0 + j*s1 ...]."""
    out = np.empty(t.size, dtype or t.storage.data.dtype)
    for idx in itertools.product(*(range(n) for n in t.size)):
        out[idx] = t.storage.data[t.offset + sum(i * s for i, s in zip(idx, t.stride))]
    return out


class _Pickler(pickle._Pickler):
    dispatch = pickle._Pickler.dispatch.copy()

    def __init__(self, file, legacy, protocol=2):
        super().__init__(file, protocol=protocol)
        self.legacy, self.storages = legacy, {}

    def _save_global_standin(self, obj):
        if self.proto >= 4:
            self.save(obj.module)
            self.save(obj.name)
            self.write(pickle.STACK_GLOBAL)
        else:
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
        self.memoize(obj)

    dispatch[Global] = _save_global_standin

    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            self.storages[obj.key] = obj
            pid = ("storage", Global("torch", obj.cls), obj.key, "cpu", obj.data.size)
            return pid + (None,) if self.legacy else pid
        return None


def pickle_bytes(obj, legacy=False, protocol=2):
    """(pickle bytes, {key: Storage}) of ``obj``."""
    import io
    buf = io.BytesIO()
    p = _Pickler(buf, legacy, protocol)
    p.dump(obj)
    return buf.getvalue(), p.storages


def _raw(storage, byteorder):
    data = storage.data
    if byteorder == "big" and data.dtype.itemsize > 1:
        if data.dtype.type.__module__ == "numpy":
            return data.astype(data.dtype.newbyteorder(">")).tobytes()
        return data.view(f"<u{data.dtype.itemsize}").astype(f">u{data.dtype.itemsize}").tobytes()
    return data.tobytes()


def write_zip(path, obj, folder="archive", byteorder="little", compression=zipfile.ZIP_STORED,
              byteorder_record=True, protocol=2):
    """``obj`` (with Tensor/Storage/Global stand-ins) as torch.save's zip format."""
    pkl, storages = pickle_bytes(obj, protocol=protocol)
    with zipfile.ZipFile(path, "w", compression) as zf:
        zf.writestr(f"{folder}/data.pkl", pkl)
        if byteorder_record:
            zf.writestr(f"{folder}/byteorder", byteorder)
        for key, s in storages.items():
            zf.writestr(f"{folder}/data/{key}", _raw(s, byteorder))
        zf.writestr(f"{folder}/version", "3\n")
    return path


def write_legacy(path, obj, protocol=2):
    """``obj`` as torch.save's legacy (pre-1.6) format."""
    pkl, storages = pickle_bytes(obj, legacy=True, protocol=protocol)
    sys_info = {"protocol_version": 1001, "little_endian": True,
                "type_sizes": {"short": 2, "int": 4, "long": 8}}
    with open(path, "wb") as f:
        for header in (MAGIC, 1001, sys_info):
            f.write(pickle.dumps(header, protocol=2))
        f.write(pkl)
        keys = sorted(storages)
        f.write(pickle.dumps(keys, protocol=2))
        for key in keys:
            s = storages[key]
            f.write(struct.pack("<q", s.data.size))
            f.write(s.data.tobytes())
    return path


def state_dict_file(path, arrays, legacy=False):
    """{name: numpy array} as a torch.save'd OrderedDict state_dict (with _metadata)."""
    sd = OrderedDict((k, contiguous(i, v)) for i, (k, v) in enumerate(arrays.items()))
    sd._metadata = OrderedDict([("", {"version": 1})])
    return write_legacy(path, sd) if legacy else write_zip(path, sd)
