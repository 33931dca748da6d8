"""Plain-data transport between the sandbox and the grader: JSON + safetensors, never pickle.

``encode(value)`` turns a result into a JSON-able tree plus a dict of tensors (saved with
safetensors, whose loader only reads a header and raw buffers). ``decode(tree, tensors)``
rebuilds it in the grader as *exact* builtin types and plain ``torch.Tensor``s, so that
nothing of the learner's classes survives the trip: an object whose ``__eq__`` is always
true arrives as an ``Opaque`` placeholder, an ``int`` subclass as a plain ``int``.

This module runs on both sides; on the sandbox side it is as untrusted as everything
else there, which is fine: the grader only ever treats what it decodes as an answer.
"""
from __future__ import annotations

import base64
import math
import re

import torch

MAX_DEPTH = 64
MAX_ITEMS = 200_000  # nodes in one tree
MAX_STR = 1_000_000  # characters in one string


class EncodeError(Exception):
    pass


class DecodeError(Exception):
    pass


class Opaque:
    """Stands for an object that could not leave the sandbox (a class instance, a module...).

    It equals nothing, so every comparison fails with a readable message.
    """

    type_name = "object"

    def __init__(self, description: str = ""):
        self.description = description

    def __eq__(self, other):
        return False

    def __ne__(self, other):
        return True

    __hash__ = object.__hash__

    def __repr__(self):
        return f"<{self.type_name} object{': ' + self.description if self.description else ''}>"


_SAFE_NAME = re.compile(r"[^A-Za-z0-9_]")


def opaque(type_name: str, description: str = "") -> Opaque:
    name = _SAFE_NAME.sub("_", str(type_name))[:60] or "object"
    cls = type(name, (Opaque,), {"type_name": name})
    return cls(str(description)[:200])


_DTYPES = {str(d): d for d in (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
                               torch.float16, torch.bfloat16, torch.float32, torch.float64)}


# --------------------------------------------------------------------------------------
# Encoding (sandbox side)
# --------------------------------------------------------------------------------------
class _Encoder:
    def __init__(self, prefix: str):
        self.prefix = prefix
        self.tensors: dict[str, torch.Tensor] = {}
        self.count = 0

    def tensor(self, t: torch.Tensor) -> dict:
        # Strip any subclass behaviour: a plain, contiguous CPU copy of the data.
        with torch._C.DisableTorchFunction():
            base = torch.Tensor._make_subclass(torch.Tensor, t.detach(), False) if type(t) is not torch.Tensor else t.detach()
            if base.layout != torch.strided:
                base = base.to_dense()
            base = base.cpu()
            node = {"t": "tensor", "dtype": str(base.dtype), "shape": list(base.shape),
                    "requires_grad": bool(t.requires_grad)}
            if base.is_complex():
                node["complex"] = True
                base = torch.view_as_real(base.resolve_conj())
            if str(base.dtype) not in _DTYPES:
                base = base.to(torch.float64)
                node["cast_from"] = node["dtype"]
            key = f"{self.prefix}{len(self.tensors)}"
            self.tensors[key] = base.contiguous().clone()
        node["key"] = key
        return node

    def __call__(self, x, depth: int = 0):
        self.count += 1
        if self.count > MAX_ITEMS:
            raise EncodeError(f"the result has more than {MAX_ITEMS} parts")
        if depth > MAX_DEPTH:
            raise EncodeError(f"the result is nested more than {MAX_DEPTH} levels deep")
        t = type(x)
        if x is None:
            return {"t": "none"}
        if t is bool:
            return {"t": "bool", "v": bool(x)}
        if isinstance(x, torch.Tensor):
            node = self.tensor(x)
            if t is not torch.Tensor and t is not torch.nn.Parameter:
                node["sub"] = t.__name__
            return node
        if isinstance(x, int) and not isinstance(x, bool):
            node = {"t": "int", "v": int.__repr__(x)}
            if t is not int:
                node["sub"] = t.__name__
            return node
        if isinstance(x, float):
            node = {"t": "float", "v": float.__repr__(x)}
            if t is not float:
                node["sub"] = t.__name__
            return node
        if isinstance(x, complex):
            return {"t": "complex", "re": float.__repr__(x.real), "im": float.__repr__(x.imag)}
        if isinstance(x, str):
            s = str.__str__(x)
            if len(s) > MAX_STR:
                raise EncodeError(f"a string of {len(s)} characters is too long to send back")
            node = {"t": "str", "v": s}
            if t is not str:
                node["sub"] = t.__name__
            return node
        if isinstance(x, (bytes, bytearray)):
            return {"t": "bytes", "v": base64.b64encode(bytes(x)).decode("ascii")}
        if isinstance(x, torch.Size):
            return {"t": "size", "v": [int(i) for i in tuple.__iter__(x)]}
        if isinstance(x, torch.dtype):
            return {"t": "dtype", "v": str(x)}
        if isinstance(x, torch.device):
            return {"t": "device", "v": str(x)}
        if isinstance(x, (list, tuple)):
            items = list(list.__iter__(x)) if isinstance(x, list) else list(tuple.__iter__(x))
            node = {"t": "list" if isinstance(x, list) else "tuple", "items": [self(i, depth + 1) for i in items]}
            if t not in (list, tuple):
                node["sub"] = t.__name__
            return node
        if isinstance(x, dict):
            return {"t": "dict", "items": [[self(k, depth + 1), self(v, depth + 1)] for k, v in dict.items(x)]}
        if isinstance(x, (set, frozenset)):
            return {"t": "set" if isinstance(x, set) else "frozenset", "items": [self(i, depth + 1) for i in x]}
        mod = getattr(t, "__module__", "") or ""
        if mod == "numpy" or mod.startswith("numpy."):
            import numpy as np
            if isinstance(x, np.ndarray):
                node = self.tensor(torch.from_numpy(np.ascontiguousarray(x)))
                node["t"] = "ndarray"
                return node
            if isinstance(x, np.generic):
                return self(x.item(), depth)
        if isinstance(x, torch.nn.Module):
            return {"t": "opaque", "type": t.__name__, "repr": "a torch.nn.Module (models cannot be sent back)"}
        try:
            r = object.__repr__(x)
        except Exception:
            r = ""
        return {"t": "opaque", "type": getattr(t, "__name__", "object"), "repr": r[:120]}


def encode(value, prefix: str = "t") -> tuple[dict, dict[str, torch.Tensor]]:
    enc = _Encoder(prefix)
    tree = enc(value)
    return tree, enc.tensors


# --------------------------------------------------------------------------------------
# Decoding (grader side: the input is hostile)
# --------------------------------------------------------------------------------------
class _Decoder:
    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.tensors = tensors
        self.count = 0

    def __call__(self, node, depth: int = 0):
        self.count += 1
        if self.count > MAX_ITEMS or depth > MAX_DEPTH:
            raise DecodeError("result too large or too deep")
        if not isinstance(node, dict) or not isinstance(node.get("t"), str):
            raise DecodeError("malformed result node")
        t = node["t"]
        if t == "none":
            return None
        if t == "bool":
            v = node.get("v")
            if type(v) is not bool:
                raise DecodeError("malformed bool")
            return v
        if t == "int":
            v = node.get("v")
            if not isinstance(v, str) or not re.fullmatch(r"-?\d{1,5000}", v):
                raise DecodeError("malformed int")
            return int(v)
        if t == "float":
            return _float(node.get("v"))
        if t == "complex":
            return complex(_float(node.get("re")), _float(node.get("im")))
        if t == "str":
            v = node.get("v")
            if not isinstance(v, str):
                raise DecodeError("malformed str")
            return v
        if t == "bytes":
            v = node.get("v")
            if not isinstance(v, str):
                raise DecodeError("malformed bytes")
            return base64.b64decode(v.encode("ascii"), validate=True)
        if t == "size":
            v = node.get("v")
            if not isinstance(v, list) or not all(type(i) is int for i in v):
                raise DecodeError("malformed size")
            return torch.Size(v)
        if t == "dtype":
            v = node.get("v")
            if v not in _DTYPES and v not in ("torch.complex64", "torch.complex128"):
                raise DecodeError("unknown dtype")
            return getattr(torch, v.split(".", 1)[1])
        if t == "device":
            v = node.get("v")
            if not isinstance(v, str) or not re.fullmatch(r"[a-z]{2,10}(:\d{1,3})?", v):
                raise DecodeError("malformed device")
            return torch.device(v)
        if t in ("list", "tuple", "set", "frozenset"):
            items = node.get("items")
            if not isinstance(items, list):
                raise DecodeError("malformed sequence")
            values = [self(i, depth + 1) for i in items]
            if t == "list":
                return values
            if t == "tuple":
                return tuple(values)
            try:
                return set(values) if t == "set" else frozenset(values)
            except TypeError as exc:
                raise DecodeError(f"malformed set: {exc}") from None
        if t == "dict":
            items = node.get("items")
            if not isinstance(items, list) or not all(isinstance(p, list) and len(p) == 2 for p in items):
                raise DecodeError("malformed dict")
            out = {}
            for k, v in items:
                key = self(k, depth + 1)
                try:
                    out[key] = self(v, depth + 1)
                except TypeError:
                    raise DecodeError("unhashable dict key") from None
            return out
        if t in ("tensor", "ndarray"):
            return self.tensor(node, as_numpy=(t == "ndarray"))
        if t == "opaque":
            return opaque(node.get("type", "object"), node.get("repr", ""))
        raise DecodeError(f"unknown node type {t[:20]!r}")

    def tensor(self, node, as_numpy=False):
        key = node.get("key")
        if not isinstance(key, str) or key not in self.tensors:
            raise DecodeError("missing tensor data")
        data = self.tensors[key]
        dtype_name = node.get("cast_from") or node.get("dtype")
        shape = node.get("shape")
        if not isinstance(shape, list) or not all(type(i) is int and i >= 0 for i in shape):
            raise DecodeError("malformed tensor shape")
        if node.get("complex"):
            if data.dtype not in (torch.float32, torch.float64) or data.dim() == 0 or data.shape[-1] != 2:
                raise DecodeError("malformed complex tensor")
            data = torch.view_as_complex(data.contiguous())
        elif tuple(data.shape) != tuple(shape):
            raise DecodeError("tensor shape does not match its description")
        if node.get("cast_from") and dtype_name in ("torch.complex64", "torch.complex128"):
            pass
        out = data.clone()
        if node.get("requires_grad") is True and out.is_floating_point():
            out.requires_grad_(True)
        if as_numpy:
            return out.detach().numpy()
        return out


def _float(v) -> float:
    if not isinstance(v, str) or len(v) > 40:
        raise DecodeError("malformed float")
    try:
        f = float(v)
    except ValueError:
        raise DecodeError("malformed float") from None
    if math.isnan(f):
        return float("nan")
    return f


def decode(tree, tensors: dict[str, torch.Tensor]):
    return _Decoder(tensors)(tree)


def load_tensor_bytes(data: bytes, max_bytes: int) -> dict[str, torch.Tensor]:
    """Tensors from safetensors bytes already read (size-capped; no code is run)."""
    from safetensors.torch import load

    if len(data) > max_bytes:
        raise DecodeError(f"result file of {len(data)} bytes is over the {max_bytes}-byte limit")
    try:
        tensors = load(data)
    except Exception as exc:
        raise DecodeError(f"unreadable tensor file: {exc}") from None
    for k, v in tensors.items():
        if str(v.dtype) not in _DTYPES:
            raise DecodeError(f"tensor {k!r} has an unsupported dtype {v.dtype}")
    return tensors


def load_tensors(path, max_bytes: int) -> dict[str, torch.Tensor]:
    """Read a safetensors file written in the sandbox (size-capped; no code is run)."""
    import os

    from safetensors.torch import load

    size = os.path.getsize(path)
    if size > max_bytes:
        raise DecodeError(f"result file of {size} bytes is over the {max_bytes}-byte limit")
    with open(path, "rb") as f:
        data = f.read(max_bytes + 1)
    try:
        tensors = load(data)
    except Exception as exc:
        raise DecodeError(f"unreadable tensor file: {exc}") from None
    for k, v in tensors.items():
        if str(v.dtype) not in _DTYPES:
            raise DecodeError(f"tensor {k!r} has an unsupported dtype {v.dtype}")
    return tensors


def pack(value, prefix: str = "in") -> dict:
    """``value`` as one JSON-able dict, tensors included (safetensors bytes, base64): how the
    grader hands the inputs of the checks to the sandbox inside its job file."""
    from safetensors.torch import save

    tree, tensors = encode(value, prefix=prefix)
    blob = save({k: v.contiguous() for k, v in tensors.items()}) if tensors else b""
    return {"tree": tree, "tensors": base64.b64encode(blob).decode("ascii")}


def unpack(packed: dict):
    from safetensors.torch import load

    blob = base64.b64decode(packed.get("tensors", "") or b"")
    return decode(packed["tree"], load(blob) if blob else {})


def contains_opaque(value, depth: int = 0) -> bool:
    """Whether a decoded value holds something that could not travel as data."""
    if depth > MAX_DEPTH:
        return True
    if isinstance(value, Opaque):
        return True
    if isinstance(value, (list, tuple, set, frozenset)):
        return any(contains_opaque(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return any(contains_opaque(k, depth + 1) or contains_opaque(v, depth + 1) for k, v in value.items())
    return False
