"""Training state as tensors and plain data, so that loading it can never run code.

A resume point must bring back everything a trainer holds between two tasks: the
model, optimizers and their moments, schedulers, a method's masks, Fisher matrices or
buffers, NumPy arrays, random generator states, and which of these objects are the
same object (an optimizer over the mask parameters a method keeps in its states; a
scheduler over the main optimizer). Pickling the trainer does that, but unpickling a
file runs whatever the file says: anyone who can write the file can run code.

:func:`encode` turns such a tree into tensors, numbers, strings, lists, tuples and
dicts, which ``torch.load(..., weights_only=True)`` reads without ever calling into
arbitrary code; :func:`decode` rebuilds the objects. Only these kinds are encoded:

* ``None``, ``bool``, ``int``, ``float``, ``str``, ``bytes``; tuples, lists, dicts, sets;
* tensors (the model's own parameters by name, other ``nn.Parameter``\\ s with their
  ``requires_grad``), ``torch.device`` and ``torch.dtype``; NumPy arrays and scalars
  (as bytes, dtype and shape; object arrays are refused);
* the model (``model``: restored in place, see :func:`model_state`);
* optimizers of ``torch.optim`` (rebuilt over the decoded parameters, then their
  ``state_dict`` loaded);
* objects of the classes in :data:`ALLOWED_OBJECTS` and the learning-rate schedulers
  of ``torch.optim.lr_scheduler`` (rebuilt from their attributes, as unpickling did).

Anything else (a lambda, a module other than the model, an object of a user class)
raises :class:`Unsupported` when saving: the run then goes on without resume points.
Decoding a file names classes only through these allow-lists, so a crafted file can
at worst fail to decode.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

KIND = "__clbench_state__"


class Unsupported(TypeError):
    """The state holds an object that cannot be stored as plain data."""


class Malformed(ValueError):
    """A decoded tree that this module did not write."""


#: Classes rebuilt from their attributes (``__new__`` + ``__dict__``, as unpickling does).
ALLOWED_OBJECTS: dict[str, type] = {}


def allow_object(cls: type) -> type:
    """Class decorator: instances of ``cls`` may be stored by their attributes."""
    ALLOWED_OBJECTS[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return cls


def _scheduler_class(name: str) -> type | None:
    cls = getattr(torch.optim.lr_scheduler, name, None)
    base = torch.optim.lr_scheduler.LRScheduler
    ok = isinstance(cls, type) and (issubclass(cls, base) or name == "ReduceLROnPlateau")
    return cls if ok else None


def _optimizer_class(name: str) -> type | None:
    cls = getattr(torch.optim, name, None)
    return cls if isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer) else None


def model_state(model: nn.Module) -> dict[str, Any]:
    """The model's tensors, which parameters require gradients and each module's mode."""
    return {
        "tensors": {k: v.detach() for k, v in model.state_dict().items()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "training": {n: m.training for n, m in model.named_modules()},
    }


def load_model_state(model: nn.Module, state: dict[str, Any]) -> None:
    """Restore :func:`model_state` into ``model`` (same architecture) in place."""
    model.load_state_dict(state["tensors"])
    params = dict(model.named_parameters())
    if set(state["requires_grad"]) != set(params):
        raise Malformed("the model's parameters differ from the saved ones")
    for name, flag in state["requires_grad"].items():
        params[name].requires_grad_(bool(flag))
    for name, module in model.named_modules():
        module.training = bool(state["training"].get(name, module.training))


_PLAIN = (bool, int, float, str, bytes)


class _Encoder:
    def __init__(self, model: nn.Module | None) -> None:
        self.model = model
        self.model_params = ({id(p): n for n, p in model.named_parameters()}
                             if model is not None else {})
        self.memo: dict[int, int] = {}
        self.keep: list[Any] = []  # objects memoised by id stay alive while encoding

    def _ref(self, obj: Any) -> dict | None:
        k = self.memo.get(id(obj))
        return None if k is None else {KIND: "ref", "id": k}

    def _new_id(self, obj: Any) -> int:
        k = len(self.memo)
        self.memo[id(obj)] = k
        self.keep.append(obj)
        return k

    def __call__(self, obj: Any) -> Any:
        if obj is None or type(obj) in _PLAIN:  # exact types: np.float64 is a float too
            return obj
        ref = self._ref(obj)
        if ref is not None:
            return ref
        if isinstance(obj, Tensor):
            return self._tensor(obj)
        if isinstance(obj, np.ndarray | np.generic):
            return self._ndarray(obj)
        if isinstance(obj, torch.device):
            return {KIND: "device", "value": str(obj)}
        if isinstance(obj, torch.dtype):
            return {KIND: "dtype", "value": str(obj).removeprefix("torch.")}
        if type(obj) is tuple:
            return tuple(self(v) for v in obj)
        if type(obj) is list:
            k = self._new_id(obj)
            return {KIND: "list", "id": k, "items": [self(v) for v in obj]}
        if type(obj) in (dict, OrderedDict):  # not defaultdict & co.: they would change
            k = self._new_id(obj)
            return {KIND: "dict", "id": k, "ordered": type(obj) is OrderedDict,
                    "items": [(self(a), self(b)) for a, b in obj.items()]}
        if type(obj) in (set, frozenset):
            return {KIND: type(obj).__name__, "items": [self(v) for v in obj]}
        if obj is self.model:
            return {KIND: "model"}
        if isinstance(obj, torch.optim.Optimizer):
            return self._optimizer(obj)
        return self._object(obj)

    def _tensor(self, t: Tensor) -> Any:
        name = self.model_params.get(id(t))
        if name is not None:
            return {KIND: "model_param", "name": name}
        if isinstance(t, nn.Parameter):
            k = self._new_id(t)
            return {KIND: "parameter", "id": k, "data": t.detach(),
                    "requires_grad": t.requires_grad}
        if t.grad_fn is not None:
            raise Unsupported("a tensor that is part of an autograd graph")
        return t  # a leaf keeps its requires_grad through torch.save

    @staticmethod
    def _ndarray(a: np.ndarray | np.generic) -> dict:
        arr = np.asarray(a)
        if arr.dtype.hasobject:
            raise Unsupported("a NumPy array of Python objects")
        raw = np.ascontiguousarray(arr).tobytes()
        return {KIND: "ndarray", "scalar": isinstance(a, np.generic), "dtype": arr.dtype.str,
                "shape": list(arr.shape),
                "bytes": torch.frombuffer(bytearray(raw), dtype=torch.uint8) if raw else
                torch.zeros(0, dtype=torch.uint8)}

    def _optimizer(self, opt: torch.optim.Optimizer) -> dict:
        name = type(opt).__name__
        if _optimizer_class(name) is not type(opt):
            raise Unsupported(f"optimizer {type(opt).__qualname__} (not one of torch.optim)")
        k = self._new_id(opt)
        groups = [[self(p) for p in g["params"]] for g in opt.param_groups]
        return {KIND: "optimizer", "id": k, "class": name, "params": groups,
                "state": self(opt.state_dict())}

    def _object(self, obj: Any) -> dict:
        cls = type(obj)
        qual = f"{cls.__module__}.{cls.__qualname__}"
        if ALLOWED_OBJECTS.get(qual) is cls:
            kind = "object"
        elif _scheduler_class(cls.__name__) is cls:
            kind, qual = "scheduler", cls.__name__
        else:
            raise Unsupported(f"an object of type {qual}")
        k = self._new_id(obj)
        return {KIND: kind, "id": k, "class": qual, "vars": self(dict(vars(obj)))}


class _Decoder:
    def __init__(self, model: nn.Module | None) -> None:
        self.model = model
        self.params = dict(model.named_parameters()) if model is not None else {}
        self.memo: dict[int, Any] = {}

    def _define(self, node: dict, obj: Any) -> Any:
        k = node.get("id")
        if not isinstance(k, int) or k in self.memo:
            raise Malformed("bad object id")
        self.memo[k] = obj
        return obj

    def __call__(self, node: Any) -> Any:
        if isinstance(node, tuple):
            return tuple(self(v) for v in node)
        if not isinstance(node, dict):
            if node is None or isinstance(node, (bool, int, float, str, bytes, Tensor)):
                return node
            raise Malformed(f"unexpected {type(node).__name__}")
        kind = node.get(KIND)
        handler: Callable[[dict], Any] | None = getattr(self, f"_{kind}", None)
        if not isinstance(kind, str) or handler is None:
            raise Malformed(f"unknown entry {kind!r}")
        return handler(node)

    def _ref(self, node: dict) -> Any:
        if node.get("id") not in self.memo:
            raise Malformed("reference to an undefined object")
        return self.memo[node["id"]]

    def _model(self, node: dict) -> Any:
        if self.model is None:
            raise Malformed("no model to restore into")
        return self.model

    def _model_param(self, node: dict) -> Tensor:
        if node.get("name") not in self.params:
            raise Malformed(f"the model has no parameter {node.get('name')!r}")
        return self.params[node["name"]]

    def _parameter(self, node: dict) -> nn.Parameter:
        p = nn.Parameter(node["data"], requires_grad=bool(node["requires_grad"]))
        return self._define(node, p)

    def _ndarray(self, node: dict) -> Any:
        dtype = np.dtype(node["dtype"])
        if dtype.hasobject:
            raise Malformed("object arrays are not allowed")
        arr = np.frombuffer(node["bytes"].numpy().tobytes(), dtype=dtype)
        arr = arr.reshape([int(s) for s in node["shape"]]).copy()
        return arr[()] if node["scalar"] else arr

    def _device(self, node: dict) -> torch.device:
        return torch.device(str(node["value"]))

    def _dtype(self, node: dict) -> torch.dtype:
        dtype = getattr(torch, str(node["value"]), None)
        if not isinstance(dtype, torch.dtype):
            raise Malformed(f"unknown dtype {node['value']!r}")
        return dtype

    def _list(self, node: dict) -> list:
        out: list = self._define(node, [])
        out.extend(self(v) for v in node["items"])
        return out

    def _dict(self, node: dict) -> dict:
        out: dict = self._define(node, OrderedDict() if node.get("ordered") else {})
        for key, value in node["items"]:
            out[self(key)] = self(value)
        return out

    def _set(self, node: dict) -> set:
        return {self(v) for v in node["items"]}

    def _frozenset(self, node: dict) -> frozenset:
        return frozenset(self(v) for v in node["items"])

    def _optimizer(self, node: dict) -> torch.optim.Optimizer:
        cls = _optimizer_class(str(node["class"]))
        if cls is None:
            raise Malformed(f"unknown optimizer {node['class']!r}")
        groups = [{"params": [self(p) for p in g]} for g in node["params"]]
        opt = cls(groups)
        self._define(node, opt)
        opt.load_state_dict(self(node["state"]))
        return opt

    def _rebuild(self, node: dict, cls: type) -> Any:
        obj = cls.__new__(cls)
        self._define(node, obj)
        fields = self(node["vars"])
        if not isinstance(fields, dict):
            raise Malformed("object attributes must be a dict")
        obj.__dict__.update(fields)
        return obj

    def _object(self, node: dict) -> Any:
        cls = ALLOWED_OBJECTS.get(str(node["class"]))
        if cls is None:
            raise Malformed(f"class {node['class']!r} may not be stored")
        return self._rebuild(node, cls)

    def _scheduler(self, node: dict) -> Any:
        cls = _scheduler_class(str(node["class"]))
        if cls is None:
            raise Malformed(f"unknown scheduler {node['class']!r}")
        return self._rebuild(node, cls)


def load(path: str | Path, map_location: Any = None) -> Any:
    """Read a file of encoded data (:func:`encode`): ``torch.load(weights_only=True)``, after
    checking that its pickle names no class beyond torch's own allow-list (libraries
    may register more process-wide with ``add_safe_globals``, and PyG registers classes
    whose constructors read and write files). Raises :class:`Malformed` naming the
    refused globals, or what ``torch.load`` raises for an unreadable file."""
    from clbench.datasets.safe_pickle import forbidden_torch_globals

    refused = forbidden_torch_globals(Path(path), allowed=())
    if refused:
        raise Malformed(f"it refers to {', '.join(refused)[:200]}")
    return torch.load(path, map_location=map_location, weights_only=True)


def encode(obj: Any, model: nn.Module | None = None) -> Any:
    """``obj`` as plain data (see the module docstring); ``model``'s parameters are
    referred to by name. Raises :class:`Unsupported`."""
    return _Encoder(model)(obj)


def decode(tree: Any, model: nn.Module | None = None) -> Any:
    """Rebuild what :func:`encode` wrote; references to ``model``'s parameters resolve
    to ``model``'s own. Raises :class:`Malformed` (or a ``KeyError``/``TypeError`` on a
    tree of the wrong shape)."""
    return _Decoder(model)(tree)
