"""``Module`` and ``Sequential``: the containers whole networks are built from.

As in PyTorch, subclass ``Module``, assign sublayers as attributes in ``__init__`` and
write ``forward``; the sublayers are registered in assignment order, so
``named_modules()``, ``children()``, ``state_dict()`` and ``load_state_dict()`` walk
them with PyTorch's dotted key names (``layer1.0.conv1.weight``).

Parameters and buffers are numpy arrays. A layer declares them by overriding
``_own_state`` (name -> array, in PyTorch's order), ``_convert_own`` (the value it would
store, or an error; nothing changes) and ``_load_own`` (store a converted value), so
each layer keeps its own invariants (e.g. ``Conv2d`` freezes its weights and drops its
cached transformed weights) and ``load_state_dict`` is all or nothing.

Saving: ``model.save_npz(path)`` writes ``state_dict()`` to an ``.npz`` file;
``model.load_npz(path)`` reads one back. ``model.load(path)`` reads any weights file
``engine.load_weights`` does (a PyTorch ``.pth`` in the zip or legacy format,
``.safetensors``, ``.npz``) without PyTorch, with options for checkpoints whose key
names differ (``prefix="module."``, ``rename=``).

The engine is inference-only: ``train()``/``eval()`` only set the ``training`` flag,
which no layer reads (BatchNorm always uses its running statistics, Dropout is the
identity).
"""
import copy
import os
import zipfile
from collections import OrderedDict

import numpy as np

from .weights import detect_format, load_weights, remap_keys


class _HookHandle:
    """What ``register_forward_hook`` returns: ``remove()`` unregisters the hook."""

    def __init__(self, hooks, hook):
        self._hooks, self._hook = hooks, hook

    def remove(self):
        """Unregister the hook (a second call does nothing)."""
        if self._hook in self._hooks:
            self._hooks.remove(self._hook)


class Module:
    """Base class of every layer and network, as ``torch.nn.Module``.

    Subclasses write ``forward``; calling the module runs the pre-hooks, ``forward``
    and the hooks. Attributes that are Modules are registered as children (assigning
    ``None`` or a non-Module over one unregisters it). A subclass need not call
    ``Module.__init__``: registration sets itself up on the first assignment.
    """

    training = True
    _forward_hooks = ()
    _forward_pre_hooks = ()

    def __init__(self):
        object.__setattr__(self, "_modules", OrderedDict())

    # ----------------------------------------------------------------- registration
    def __setattr__(self, name, value):
        modules = self.__dict__.get("_modules")
        if modules is None:
            modules = OrderedDict()
            object.__setattr__(self, "_modules", modules)
        if isinstance(value, Module):
            modules[name] = value
        else:
            modules.pop(name, None)
        object.__setattr__(self, name, value)

    def __delattr__(self, name):
        self.__dict__.get("_modules", {}).pop(name, None)
        object.__delattr__(self, name)

    def add_module(self, name, module):
        """Register ``module`` (a Module or None) as the child ``name``."""
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(f"add_module: invalid child name {name!r}")
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"add_module: {name!r} must be an engine Module or None, "
                            f"got {type(module).__name__}")
        setattr(self, name, module)
        if module is None:       # keep the slot, as PyTorch does, so indices stay put
            self.__dict__["_modules"][name] = None

    # ---------------------------------------------------------------------- calling
    def forward(self, *args, **kwargs):
        """The computation; subclasses must override it."""
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    def __call__(self, *args, **kwargs):
        for hook in self._forward_pre_hooks:
            hook(self, args)
        out = self.forward(*args, **kwargs)
        for hook in self._forward_hooks:
            hook(self, args, out)
        return out

    def register_forward_pre_hook(self, hook):
        """Call ``hook(module, args)`` before every forward; returns a handle."""
        if "_forward_pre_hooks" not in self.__dict__:
            object.__setattr__(self, "_forward_pre_hooks", [])
        self._forward_pre_hooks.append(hook)
        return _HookHandle(self._forward_pre_hooks, hook)

    def register_forward_hook(self, hook):
        """Call ``hook(module, args, output)`` after every forward; returns a handle."""
        if "_forward_hooks" not in self.__dict__:
            object.__setattr__(self, "_forward_hooks", [])
        self._forward_hooks.append(hook)
        return _HookHandle(self._forward_hooks, hook)

    # ---------------------------------------------------------------------- walking
    def named_children(self):
        """(name, child) for each registered child, in registration order."""
        for name, m in self.__dict__.get("_modules", {}).items():
            if m is not None:
                yield name, m

    def children(self):
        """The registered children, in registration order."""
        for _, m in self.named_children():
            yield m

    def named_modules(self, prefix=""):
        """(dotted name, module) for this module ("" ) and every descendant, pre-order."""
        seen = set()
        stack = [(prefix, self)]
        while stack:
            name, m = stack.pop()
            if id(m) in seen:
                continue
            seen.add(id(m))
            yield name, m
            kids = [(f"{name}.{n}" if name else n, c) for n, c in m.named_children()]
            stack.extend(reversed(kids))

    def modules(self):
        """This module and every descendant, pre-order."""
        for _, m in self.named_modules():
            yield m

    def get_submodule(self, target):
        """The descendant at dotted path ``target`` ("" is this module)."""
        m = self
        for part in target.split(".") if target else ():
            kids = m.__dict__.get("_modules", {})
            if kids.get(part) is None:
                raise AttributeError(f"{type(m).__name__} has no submodule {part!r} (in {target!r})")
            m = kids[part]
        return m

    def train(self, mode=True):
        """Set the ``training`` flag here and below (no layer reads it); returns self."""
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self):
        """``train(False)``; returns self."""
        return self.train(False)

    # ------------------------------------------------------------------------ state
    def _own_state(self):
        """This module's own parameters and buffers: an ordered {name: array}."""
        return OrderedDict()

    def _convert_own(self, name, value):
        """``value`` (shape already checked) as own parameter/buffer ``name`` would hold
        it; raise TypeError/ValueError if it cannot. Changes nothing."""
        raise KeyError(name)

    def _load_own(self, name, value):
        """Store ``value``, a result of ``_convert_own(name, ...)``."""
        raise KeyError(name)

    def state_dict(self):
        """Every parameter and buffer, keyed by dotted path as PyTorch names them.

        The arrays are the module's own (read-only where the layer keeps them so);
        copy them before changing them.
        """
        out = OrderedDict()
        for prefix, m in self.named_modules():
            for name, value in m._own_state().items():
                out[f"{prefix}.{name}" if prefix else name] = value
        return out

    def load_state_dict(self, state_dict, strict=True):
        """Copy parameters and buffers from ``state_dict`` (a mapping of dotted name to
        array; numpy arrays, array-likes, or CPU torch tensors).

        Every array must have the shape of the one it replaces, else ValueError naming
        each mismatch. With ``strict`` (the default), missing or unexpected keys are a
        ValueError that lists them and nothing is changed; otherwise the matching keys
        are loaded. Returns (missing_keys, unexpected_keys).
        """
        if not hasattr(state_dict, "keys") or not hasattr(state_dict, "__getitem__"):
            raise TypeError(f"load_state_dict expects a mapping of name -> array, "
                            f"got {type(state_dict).__name__}")
        owners = {}
        for prefix, m in self.named_modules():
            for name, current in m._own_state().items():
                owners[f"{prefix}.{name}" if prefix else name] = (m, name, current)
        given = list(state_dict.keys())
        missing = [k for k in owners if k not in state_dict]
        unexpected = [k for k in given if k not in owners]
        arrays, mismatched = {}, []
        for key in given:
            if key not in owners:
                continue
            value = _to_numpy(state_dict[key], key)
            shape = np.shape(owners[key][2])
            if value.shape != shape:
                mismatched.append(f"{key}: expected shape {shape}, got {value.shape}")
            arrays[key] = value
        problems = []
        if mismatched:
            problems.append("size mismatch for " + "; ".join(mismatched))
        if strict and missing:
            problems.append("missing keys: " + ", ".join(missing))
        if strict and unexpected:
            problems.append("unexpected keys: " + ", ".join(unexpected))
        if problems:
            raise ValueError(f"load_state_dict into {type(self).__name__}: " + ". ".join(problems))
        # All or nothing: every value is converted (dtype, checks) before any is stored.
        converted = {}
        for key, value in arrays.items():
            m, name, _ = owners[key]
            try:
                converted[key] = m._convert_own(name, value)
            except (TypeError, ValueError, OverflowError) as e:
                raise type(e)(f"load_state_dict into {type(self).__name__}: {key}: {e}; "
                              f"nothing was loaded") from None
        for key, value in converted.items():
            m, name, _ = owners[key]
            m._load_own(name, value)
        return missing, unexpected

    def save_npz(self, path):
        """Write ``state_dict()`` to the ``.npz`` file ``path`` (uncompressed)."""
        np.savez(os.fspath(path), **{k: np.asarray(v) for k, v in self.state_dict().items()})

    def _check_npz(self, path, headers, strict, op):
        """ValueError, before any data is read, unless ``headers`` ({key: (shape,
        dtype)}, from ``npz_headers``) fit this model; returns {key: expected shape}."""
        expected = {k: np.shape(v) for k, v in self.state_dict().items()}
        problems = []
        unexpected = [k for k in headers if k not in expected]
        missing = [k for k in expected if k not in headers]
        for key, (shape, dtype) in headers.items():
            if key in expected and shape != expected[key]:
                problems.append(f"{key}: expected shape {expected[key]}, got {shape}")
            elif dtype.kind not in "biuf":
                problems.append(f"{key}: dtype {dtype} is not a real number type")
        if strict and unexpected:
            problems.append("unexpected keys: " + ", ".join(unexpected))
        if strict and missing:
            problems.append("missing keys: " + ", ".join(missing))
        if problems:
            raise ValueError(f"{op} {path} into {type(self).__name__}: " + "; ".join(problems)
                             + "; nothing was loaded")
        return expected

    def load_npz(self, path, strict=True):
        """Load a ``.npz`` written by ``save_npz`` (or by numpy.savez from a PyTorch
        state_dict) through ``load_state_dict``; returns self.

        Every member's shape and dtype are read from its ``.npy`` header first, and
        unexpected or missing keys (with ``strict``), wrong shapes, non-numeric dtypes
        and members whose size disagrees with their header are a ValueError naming the
        key before anything is decompressed or loaded."""
        path = os.fspath(path)
        expected = self._check_npz(path, npz_headers(path), strict, "load_npz")
        with np.load(path, allow_pickle=False) as data:
            self.load_state_dict({k: data[k] for k in data.files if k in expected}, strict=strict)
        return self

    def load(self, path, strict=True, *, key=None, prefix=None, rename=None):
        """Load the weights file ``path`` (see ``engine.load_weights``: PyTorch zip or
        legacy ``.pth``, ``.safetensors``, ``.npz``; nothing in it is executed) through
        ``load_state_dict``.

        ``key`` picks the entry of a nested checkpoint (``{"state_dict": ...}``);
        ``prefix`` is stripped from the keys that start with it (``"module."`` for
        DataParallel checkpoints); ``rename`` maps the remaining names (a mapping
        old -> new, or a callable returning the new name or None to skip the entry);
        see ``engine.weights.remap_keys``. ``strict`` is ``load_state_dict``'s: missing
        or unexpected keys are a ValueError (naming the file) and nothing changes;
        with ``strict=False`` the matching keys load. Returns (missing_keys,
        unexpected_keys) as ``load_state_dict`` does.
        """
        if key is None and detect_format(path) == "npz":
            # shapes and dtypes from the members' headers first: nothing is decompressed
            # for a file that cannot fit (a small .npz can hold a huge array)
            self._check_npz(os.fspath(path), remap_keys(npz_headers(path), prefix=prefix,
                                                        rename=rename), strict, "load")
        weights = remap_keys(load_weights(path, key=key), prefix=prefix, rename=rename)
        try:
            return self.load_state_dict(weights, strict=strict)
        except ValueError as e:
            hint = ""
            if prefix is None and weights and all(k.startswith("module.") for k in weights):
                hint = " (every key in the file starts with 'module.': pass prefix='module.')"
            raise ValueError(f"{os.fspath(path)}: {e}{hint}") from None

    # Names of per-instance caches of derived state (prepared weights, resolved
    # choices): a deep copy or an unpickled module starts them empty.
    _CACHES = ()

    def __deepcopy__(self, memo):
        # Read-only arrays (frozen weights) stay read-only in the copy.
        new = object.__new__(type(self))
        memo[id(self)] = new
        for k, v in self.__dict__.items():
            if k in self._CACHES:
                object.__setattr__(new, k, v.empty_copy() if hasattr(v, "empty_copy") else {})
                continue
            c = copy.deepcopy(v, memo)
            if isinstance(v, np.ndarray) and not v.flags.writeable:
                c = read_only(c)
            object.__setattr__(new, k, c)
        return new

    def __getstate__(self):
        # Pickle drops the caches (derived, and machine-specific) and records which
        # arrays were read-only: numpy unpickles every array writeable, and a writeable
        # weight could be edited in place behind its prepared (e.g. Winograd) form.
        state = {k: ((v.empty_copy() if hasattr(v, "empty_copy") else {}) if k in self._CACHES else v)
                 for k, v in self.__dict__.items()}
        frozen = [k for k, v in state.items() if isinstance(v, np.ndarray) and not v.flags.writeable]
        return {"state": state, "read_only": frozen}

    def __setstate__(self, pickled):
        if not (isinstance(pickled, dict) and set(pickled) == {"state", "read_only"}):
            pickled = {"state": pickled, "read_only": []}   # a pickle from before
        for k, v in pickled["state"].items():
            if k in pickled["read_only"] and isinstance(v, np.ndarray):
                v = read_only(v)
            object.__setattr__(self, k, v)

    # ----------------------------------------------------------------------- fusion
    def _fuse(self):
        """Fold what this module's own forward allows into its children (BatchNorm into
        the preceding Conv2d, ReLU into its output stage). Called by ``engine.fuse``
        children first; the default does nothing."""

    # ------------------------------------------------------------------------- repr
    def extra_repr(self):
        """The text inside this module's parentheses in its repr."""
        return ""

    def __repr__(self):
        kids = list(self.named_children())
        if not kids:
            return f"{type(self).__name__}({self.extra_repr()})"
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for name, m in kids:
            body = repr(m).replace("\n", "\n  ")
            lines.append(f"  ({name}): {body}")
        return "\n".join(lines) + "\n)"


def npz_headers(path):
    """{key: (shape, dtype)} of the arrays in the ``.npz`` at ``path``, read from each
    member's ``.npy`` header without decompressing the data. ValueError naming the
    member when it is not a plain ``.npy`` or its stored size disagrees with its header."""
    out = {}
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise ValueError(f"load_npz: {path} is not a readable .npz ({e})") from None
    with zf:
        for info in zf.infolist():
            key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            try:
                with zf.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                                   (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                    if read_header is None:
                        raise ValueError(f"unsupported .npy version {version}")
                    shape, fortran, dtype = read_header(f, max_header_size=10000)
                    header_len = f.tell()
            except Exception as e:
                raise ValueError(f"load_npz: {path}: member {key!r} is not a .npy array ({e})") from None
            if dtype.hasobject:
                raise ValueError(f"load_npz: {path}: {key}: object arrays are not loaded")
            data_bytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if info.file_size != header_len + data_bytes:
                raise ValueError(f"load_npz: {path}: {key}: the header says {shape} {dtype} "
                                 f"({data_bytes} bytes) but the member holds "
                                 f"{info.file_size - header_len}")
            out[key] = (tuple(shape), dtype)
    return out


def read_only(array):
    """``array``'s data behind a read-only view of a read-only array: the view's
    WRITEABLE flag cannot be turned back on (numpy refuses while its base is read-only),
    so ``layer.weight[...] = v`` raises instead of silently bypassing the caches built
    from the weights."""
    array.flags.writeable = False
    view = array.view()
    view.flags.writeable = False
    return view


def _to_numpy(value, key):
    if hasattr(value, "detach") and hasattr(value, "numpy"):   # a torch tensor, duck-typed
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except Exception as e:  # pragma: no cover - exotic inputs
        raise TypeError(f"load_state_dict: {key} is not array-like ({type(value).__name__})") from e


class Sequential(Module):
    """Children applied in order, as ``torch.nn.Sequential``.

    ``Sequential(a, b, c)`` names the children "0", "1", "2";
    ``Sequential(OrderedDict(name=module, ...))`` keeps the given names. Supports
    ``len``, iteration, indexing (an int gives the child, a slice a new Sequential)
    and ``append``.
    """

    def __init__(self, *args):
        super().__init__()
        if len(args) == 1 and isinstance(args[0], (dict, OrderedDict)):
            for name, m in args[0].items():
                self.add_module(str(name), m)
        else:
            for i, m in enumerate(args):
                self.add_module(str(i), m)

    def forward(self, x):
        """Apply every child in order."""
        for m in self.__dict__["_modules"].values():
            if m is not None:
                x = m(x)
        return x

    def __len__(self):
        return len(self.__dict__["_modules"])

    def __iter__(self):
        return iter(list(self.__dict__["_modules"].values()))

    def __getitem__(self, idx):
        items = list(self.__dict__["_modules"].items())
        if isinstance(idx, slice):
            return Sequential(OrderedDict(items[idx]))
        if isinstance(idx, bool) or not isinstance(idx, int):
            raise TypeError(f"Sequential indices must be ints or slices, got {type(idx).__name__}")
        if not -len(items) <= idx < len(items):
            raise IndexError(f"index {idx} is out of range for a Sequential of length {len(items)}")
        return items[idx][1]

    def __setitem__(self, idx, module):
        name = list(self.__dict__["_modules"])[idx]
        self.add_module(name, module)

    def append(self, module):
        """Add ``module`` at the end (named by its index); returns self."""
        self.add_module(str(len(self)), module)
        return self
