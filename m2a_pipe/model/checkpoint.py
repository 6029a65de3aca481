"""Reading, checking and writing Mask2Anomaly weights.

Three on-disk formats are read, all without running code from the file:

* official ``.pth`` / ``.pt`` (``torch.save({"model": state_dict, ...})`` as detectron2's
  ``DetectionCheckpointer`` writes it, or a bare state dict) through
  ``torch.load(..., weights_only=True)``; ``optimizer`` / ``scheduler`` / ``iteration``
  entries are ignored;
* detectron2 ``.pkl`` (a pickled dict of numpy arrays, optionally wrapped as
  ``{"model": ..., "__author__": ..., "matching_heuristics": ...}``) through
  :class:`RestrictedUnpickler`, which admits numpy arrays and plain containers only;
* the project's own ``.safetensors``, which carry their :class:`ModelConfig` and metadata
  in the file header (``m2a_format`` = :data:`FORMAT`, ``m2a_config`` = the config JSON).

Loading into a model is strict (:func:`load_into`): every key must be present with its
shape, nothing may be left over. The one tolerance is the FrozenBatchNorm variant of
detectron2 < 2023-05, which writes no ``backbone.*.norm.num_batches_tracked``.
"""

from __future__ import annotations

import collections
import hashlib
import importlib
import io
import json
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from m2a_pipe.config import ModelConfig
from m2a_pipe.errors import M2AError, first_line
from m2a_pipe.io.layout import written_atomically

FORMAT = "m2a-pipe/1"
"""Value of the ``m2a_format`` metadata entry of the weight files this version writes."""

META_FORMAT_KEY = "m2a_format"
META_CONFIG_KEY = "m2a_config"
RESERVED_META_KEYS = frozenset({META_FORMAT_KEY, META_CONFIG_KEY})

TORCH_SUFFIXES = (".pth", ".pt")
PICKLE_SUFFIXES = (".pkl",)
SAFETENSORS_SUFFIXES = (".safetensors",)

_FROZEN_BN_OPTIONAL = re.compile(r"^backbone\..*\bnorm\.num_batches_tracked$")
"""Keys a FrozenBatchNorm2d checkpoint of detectron2 < 2023-05 does not write."""

_HASH_CHUNK_BYTES = 1 << 20
MAX_KEYS_SHOWN = 8
"""Keys of each kind (missing, mis-shaped, unexpected) a command-line error lists."""


class CheckpointError(M2AError):
    """A weight file cannot be read, or does not fit the model it is loaded into."""


# -- hashing ------------------------------------------------------------------------

def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


# -- restricted unpickling ----------------------------------------------------------

def _numpy_core_module(name: str) -> Any:
    """``numpy._core.<name>`` (numpy >= 2) or ``numpy.core.<name>`` (numpy 1.x)."""
    try:
        return importlib.import_module(f"numpy._core.{name}")
    except ImportError:
        return importlib.import_module(f"numpy.core.{name}")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    multiarray = _numpy_core_module("multiarray")
    numeric = _numpy_core_module("numeric")
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("collections", "OrderedDict"): collections.OrderedDict,
        # protocol-2 pickles written by Python 3 store bytes as _codecs.encode(str, "latin1")
        ("_codecs", "encode"): _latin1_encode,
        ("builtins", "bytes"): _empty_bytes,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
    }
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = multiarray.scalar
        # numpy's protocol-5 array reduction (contiguous arrays)
        allowed[(f"{core}.numeric", "_frombuffer")] = numeric._frombuffer
    # numpy dtype classes (numpy.dtypes.Float32DType ...) appear in some numpy 2 pickles
    for dtype_cls in ("Float16DType", "Float32DType", "Float64DType", "Int8DType",
                      "Int16DType", "Int32DType", "Int64DType", "UInt8DType", "BoolDType"):
        if hasattr(np, "dtypes") and hasattr(np.dtypes, dtype_cls):
            allowed[("numpy.dtypes", dtype_cls)] = getattr(np.dtypes, dtype_cls)
    return allowed


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refused _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _empty_bytes(*args: Any) -> bytes:
    """Protocol-2 pickles write ``b""`` as ``bytes()``; nothing else is accepted."""
    if args:
        raise pickle.UnpicklingError("refused builtins.bytes with arguments")
    return b""


_PY2_MODULES = {"__builtin__": "builtins"}
"""Python 2 module names of admitted globals (protocol < 3 pickles write these)."""


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds numpy arrays and plain containers and nothing else.

    Every global a pickle names goes through :meth:`find_class`; anything outside the
    allow-list (numpy array reconstruction, ``numpy.dtype``, numpy scalars,
    ``collections.OrderedDict``) raises :class:`CheckpointError` naming ``module.attr``,
    before anything is called.
    """

    _allowed: dict[tuple[str, str], Any] | None = None

    def find_class(self, module: str, name: str) -> Any:
        if RestrictedUnpickler._allowed is None:
            RestrictedUnpickler._allowed = _allowed_globals()
        try:
            return RestrictedUnpickler._allowed[(_PY2_MODULES.get(module, module), name)]
        except KeyError:
            raise CheckpointError(
                f"refused to unpickle the global {module}.{name}: a .pkl checkpoint may hold only "
                f"numpy arrays and plain containers, no code (nothing was run); {CONVERT_HINT}") from None

    def persistent_load(self, pid: Any) -> Any:
        raise CheckpointError("refused a persistent id in a .pkl checkpoint")


def restricted_pickle_load(data: bytes | io.IOBase) -> Any:
    """Unpickle with :class:`RestrictedUnpickler` (latin1 for Python 2 era files)."""
    stream = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    return RestrictedUnpickler(stream, encoding="latin1").load()


# -- reading ------------------------------------------------------------------------

def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read the model state dict of a ``.pth``/``.pt``, ``.pkl`` or ``.safetensors`` file.

    Returns name -> CPU tensor, in file order; ``*.num_batches_tracked`` as int64 scalars.
    Raises :class:`CheckpointError` (naming the file) for anything unreadable or unsafe.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        if suffix in TORCH_SUFFIXES:
            raw = _read_torch(path)
        elif suffix in PICKLE_SUFFIXES:
            raw = _read_pickle(path)
        elif suffix in SAFETENSORS_SUFFIXES:
            raw = _read_safetensors(path)
        else:
            known = ", ".join(TORCH_SUFFIXES + PICKLE_SUFFIXES + SAFETENSORS_SUFFIXES)
            raise CheckpointError(f"unknown weights format {suffix or '(no suffix)'!r}; expected one of {known}")
        return _to_tensors(_unwrap(raw), path)
    except CheckpointError as err:
        if str(path) in str(err):
            raise
        raise CheckpointError(f"{path}: {err}") from None


_GLOBAL_RE = re.compile(r"GLOBAL ([\w.]+)")
CONVERT_HINT = ("m2a-pipe weights convert FILE --config CONFIG -o OUT.safetensors converts a checkpoint of "
                "tensors; reduce a trusted file to its state dict in Python first")


def _refusal(err: pickle.UnpicklingError) -> str:
    """One line for a pickle torch refused: the global it names, that nothing ran, how to go on."""
    match = _GLOBAL_RE.search(str(err))
    what = f"the global {match.group(1)}" if match else f"its content ({first_line(err)[:120]})"
    return (f"refused to unpickle {what}: weights may hold only tensors and plain containers, no code "
            f"(nothing was run); {CONVERT_HINT}")


def _read_torch(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(_refusal(err)) from None
    except (RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(f"not a readable torch checkpoint ({type(err).__name__}: {err})") from None


def _read_pickle(path: Path) -> Any:
    try:
        with open(path, "rb") as f:
            return restricted_pickle_load(f)
    except CheckpointError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as err:
        raise CheckpointError(f"not a readable .pkl checkpoint ({type(err).__name__}: {err})") from None


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"not a readable safetensors file ({err})") from None


def _unwrap(obj: Any) -> Mapping[str, Any]:
    """The state dict inside a checkpoint: ``obj["model"]`` if present, else ``obj``."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"expected a dict, found {type(obj).__name__}")
    if "model" in obj and isinstance(obj["model"], Mapping):
        return obj["model"]
    if "blobs" in obj:
        raise CheckpointError("Caffe2-style 'blobs' checkpoints need a key conversion; not supported")
    return obj


def _to_tensors(sd: Mapping[str, Any], path: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if not isinstance(key, str):
            raise CheckpointError(f"state dict key {key!r} is not a string")
        if isinstance(value, torch.Tensor):
            tensor = value.detach()
        elif isinstance(value, np.ndarray):
            if value.dtype.kind not in "biuf":
                raise CheckpointError(f"{key}: unsupported array dtype {value.dtype}")
            tensor = torch.from_numpy(np.array(value, copy=True, order="C"))
        elif isinstance(value, (np.generic, int, float, bool)) and not isinstance(value, np.object_):
            tensor = torch.as_tensor(np.asarray(value).copy())
        else:
            raise CheckpointError(f"{key}: value of type {type(value).__name__} is not a tensor or array")
        if key.endswith("num_batches_tracked"):
            if tensor.numel() != 1:
                raise CheckpointError(f"{key}: expected one value, got shape {list(tensor.shape)}")
            tensor = tensor.reshape(()).to(torch.int64)
        out[key] = tensor
    return out


# -- strict loading -----------------------------------------------------------------

@dataclass(frozen=True)
class LoadReport:
    """What :func:`load_into` did beyond copying: keys it filled (FrozenBN variant)."""

    filled: tuple[str, ...] = ()
    cast: tuple[str, ...] = field(default=())  # keys whose dtype was converted


def diff_state_dicts(expected: Mapping[str, torch.Tensor], got: Mapping[str, Any]
                     ) -> tuple[list[str], list[str], list[tuple[str, tuple[int, ...], tuple[int, ...]]]]:
    """(missing, unexpected, mis-shaped (name, expected shape, got shape)) of ``got``."""
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    mismatched = [(k, tuple(expected[k].shape), tuple(got[k].shape))
                  for k in expected if k in got and tuple(expected[k].shape) != tuple(got[k].shape)]
    return missing, unexpected, mismatched


class StateDictMismatch(CheckpointError):
    """Strict loading failed. The message lists every offending key; the lists are kept."""

    def __init__(self, source: str, missing: list[str], unexpected: list[str],
                 mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]]) -> None:
        self.source = source
        self.missing = missing
        self.unexpected = unexpected
        self.mismatched = mismatched
        super().__init__("\n".join([self.summary, *self.details()]))

    @property
    def summary(self) -> str:
        return (f"{self.source} does not fit the model: {len(self.missing)} missing, "
                f"{len(self.unexpected)} unexpected, {len(self.mismatched)} mis-shaped keys")

    def details(self, limit_per_kind: int | None = None) -> list[str]:
        """One line per offending key (at most ``limit_per_kind`` of each kind, then a count)."""
        groups = [
            [f"  missing: {k}" for k in self.missing],
            [f"  mis-shaped: {k} expected {list(e)} got {list(g)}" for k, e, g in self.mismatched],
            [f"  unexpected: {k}" for k in self.unexpected],
        ]
        lines: list[str] = []
        for kind, group in zip(("missing", "mis-shaped", "unexpected"), groups):
            if limit_per_kind is not None and len(group) > limit_per_kind:
                hidden = len(group) - limit_per_kind
                group = [*group[:limit_per_kind], f"  ... and {hidden} more {kind}"]
            lines += group
        return lines

    def user_message(self) -> str:
        """The summary and at most :data:`MAX_KEYS_SHOWN` keys of each kind."""
        return "\n".join([self.summary, *self.details(MAX_KEYS_SHOWN)])


def load_into(model: nn.Module, state_dict: Mapping[str, Any], source: str = "<state dict>") -> LoadReport:
    """Load ``state_dict`` into ``model`` strictly.

    Zero missing, zero unexpected keys and equal shapes are required, else
    :class:`StateDictMismatch` (a :class:`CheckpointError`) lists every offending key and
    names ``source``. A missing ``backbone.*.norm.num_batches_tracked`` (FrozenBatchNorm2d
    checkpoints of detectron2 < 2023-05) is filled with 0. Values are cast to the dtype of
    the model's tensor and copied onto its device.
    """
    expected = model.state_dict()
    got: dict[str, Any] = dict(state_dict)
    filled = []
    for key in expected:
        if key not in got and _FROZEN_BN_OPTIONAL.match(key):
            got[key] = torch.zeros((), dtype=torch.int64)
            filled.append(key)
    for key, value in list(got.items()):
        if not isinstance(value, torch.Tensor):
            got[key] = torch.as_tensor(np.asarray(value))
    missing, unexpected, mismatched = diff_state_dicts(expected, got)
    if missing or unexpected or mismatched:
        raise StateDictMismatch(source, missing, unexpected, mismatched)
    cast = []
    for key, ref in expected.items():
        if got[key].dtype != ref.dtype:
            got[key] = got[key].to(ref.dtype)
            cast.append(key)
    ordered = collections.OrderedDict((k, got[k]) for k in expected)
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is not None:
        ordered._metadata = metadata  # type: ignore[attr-defined]
    try:
        model.load_state_dict(ordered, strict=True)
    except RuntimeError as err:  # a module's own load hook disagreed
        raise CheckpointError(f"{source}: {err}") from None
    return LoadReport(filled=tuple(filled), cast=tuple(cast))


# -- the project's format -----------------------------------------------------------

def save_weights(model_or_state_dict: nn.Module | Mapping[str, torch.Tensor],
                 cfg: ModelConfig | None, path: str | os.PathLike,
                 metadata: Mapping[str, Any] | None = None,
                 float_dtype: torch.dtype | None = None) -> Path:
    """Write weights as safetensors with their config, atomically.

    The header metadata holds ``m2a_format`` (:data:`FORMAT`), ``m2a_config``
    (``cfg.to_json()``) and each ``metadata`` entry JSON-encoded. ``cfg`` may be None when
    a model carrying ``.config`` is given. ``float_dtype`` (e.g. ``torch.float16``) stores
    the floating-point tensors in that type to halve the file; loading casts them back to
    the model's dtype. The file appears complete or not at all.
    """
    from safetensors.torch import save_file

    if isinstance(model_or_state_dict, nn.Module):
        if cfg is None:
            cfg = getattr(model_or_state_dict, "config", None)
        state_dict = model_or_state_dict.state_dict()
    else:
        state_dict = model_or_state_dict
    if not isinstance(cfg, ModelConfig):
        raise CheckpointError("save_weights needs a ModelConfig (none given and the model has no .config)")
    header = {META_FORMAT_KEY: FORMAT, META_CONFIG_KEY: cfg.to_json()}
    for key, value in (metadata or {}).items():
        if key in RESERVED_META_KEYS:
            raise CheckpointError(f"metadata key {key!r} is reserved")
        try:
            header[str(key)] = json.dumps(value, sort_keys=True)
        except TypeError as err:
            raise CheckpointError(f"metadata {key!r} is not JSON-serialisable: {err}") from None
    tensors = {}
    for key, value in state_dict.items():
        value = value.detach().to("cpu")
        if float_dtype is not None and value.is_floating_point():
            value = value.to(float_dtype)
        tensors[key] = value.contiguous().clone()

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with written_atomically(path) as tmp:
        save_file(tensors, str(tmp), metadata=header)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    return path


def read_metadata(path: str | os.PathLike) -> tuple[ModelConfig, dict[str, Any]]:
    """(config, user metadata) from the header of an m2a-pipe safetensors file."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from None
    fmt = header.get(META_FORMAT_KEY)
    if fmt is None or META_CONFIG_KEY not in header:
        raise CheckpointError(f"{path}: not an m2a-pipe weights file (no {META_FORMAT_KEY}/{META_CONFIG_KEY} metadata)")
    if fmt != FORMAT:
        raise CheckpointError(f"{path}: unsupported weights format {fmt!r} (this version reads {FORMAT!r})")
    try:
        cfg = ModelConfig.from_dict(json.loads(header[META_CONFIG_KEY]))
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{path}: stored config is invalid: {err}") from None
    meta: dict[str, Any] = {}
    for key, value in header.items():
        if key in RESERVED_META_KEYS:
            continue
        try:
            meta[key] = json.loads(value)
        except ValueError:
            meta[key] = value  # written by another tool: keep the raw string
    return cfg, meta


def read_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Tensor shapes of a safetensors file, from its header only."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from None


def load_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], ModelConfig, dict[str, Any]]:
    """(state dict, config, metadata) of an m2a-pipe safetensors file."""
    path = Path(path)
    if path.suffix.lower() not in SAFETENSORS_SUFFIXES:
        raise CheckpointError(f"{path}: load_weights reads .safetensors files; "
                              f"use read_state_dict for {path.suffix or 'this file'}")
    cfg, meta = read_metadata(path)
    return read_state_dict(path), cfg, meta


def rewrite_weights(src: str | os.PathLike, out: str | os.PathLike, *,
                    config_changes: Mapping[str, Mapping[str, Any]] | None = None,
                    metadata: Mapping[str, Any] | None = None, drop: Sequence[str] = ()) -> Path:
    """Copy an m2a-pipe safetensors file with a changed config or metadata, tensors untouched.

    ``config_changes`` maps a config section to field values, e.g.
    ``{"preprocess": {"min_size_test": 256, "max_size_test": 512}}``; ``metadata`` sets
    entries (``anomaly_threshold``...), ``drop`` removes them. Tensors keep their stored dtype.
    ``out`` may be ``src`` itself: the file is replaced atomically.
    """
    state_dict, cfg, meta = load_weights(src)
    spec = cfg.to_dict()
    for section, fields in (config_changes or {}).items():
        if not isinstance(spec.get(section), dict):
            raise CheckpointError(f"{src}: the config has no section {section!r}")
        unknown = set(fields) - set(spec[section])
        if unknown:
            raise CheckpointError(f"{src}: config section {section!r} has no field {sorted(unknown)[0]!r}")
        spec[section].update(fields)
    try:
        new_cfg = ModelConfig.from_dict(spec)
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{src}: the changed config is invalid: {err}") from None
    missing = [k for k in drop if k not in meta]
    if missing:
        raise CheckpointError(f"{src}: no metadata entry {missing[0]!r} to drop")
    new_meta = {k: v for k, v in meta.items() if k not in set(drop)}
    new_meta.update(metadata or {})
    return save_weights(state_dict, new_cfg, out, new_meta)
