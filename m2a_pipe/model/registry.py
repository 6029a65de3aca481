"""The weights registry: every known weight file as data (file, sha256, config, metadata).

Modelled on torchvision's weights API: a :class:`WeightsEntry` names a file, the sha256 it
must have, the config preset it was trained with and free-form metadata; :func:`resolve`
turns a name (or a path to an existing file) into a path, :func:`verify` recomputes the
hash. Relative files live in the weights folder: ``<repo root>/weights`` (the parent of
the installed ``m2a_pipe`` package source), or ``$M2A_WEIGHTS_DIR`` when set.

``demo`` is the small demo model trained on the synthetic world (``weights/demo.safetensors``,
its model card in ``weights/README.md``); its :attr:`WeightsEntry.note` says so wherever it
runs. An entry whose sha256 is ``None`` is not on this machine: a released checkpoint the
user adds (the official Mask2Anomaly ones: ``source`` names the page that publishes them,
``source_file`` the file name there), or one not built yet; resolving it raises a
:class:`WeightsError` that says how to get it.

Weights a user adds (``m2a-pipe weights add`` / ``weights fetch``) live in the user weights
folder, :func:`user_weights_dir` (``$M2A_CACHE/weights``, default
``~/.cache/m2a-pipe/weights``), converted to safetensors, with an index ``registry.json``
(name -> file, sha256, description, source); a user entry of an official name makes that
entry present.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from m2a_pipe.config import PRESETS, ConfigError, ModelConfig, preset
from m2a_pipe.errors import EXIT_USAGE, M2AError
from m2a_pipe.model.checkpoint import sha256_file

WEIGHTS_DIR_ENV = "M2A_WEIGHTS_DIR"
CACHE_ENV = "M2A_CACHE"
USER_INDEX = "registry.json"
OFFICIAL_PAGE = "https://github.com/shyam671/Mask2Anomaly-Unmasking-Anomalies-in-Road-Scene-Segmentation"
"""The official Mask2Anomaly repository: its README links the shared folder of the checkpoints."""


class WeightsError(M2AError):
    """A weights name is unknown, its file is missing, or it is not built yet."""

    def __str__(self) -> str:  # LookupError would quote the message
        return str(self.args[0]) if self.args else ""


class WeightsNotFound(WeightsError):
    """The weights asked for are not here: an unknown name, a missing file, an entry not
    added or not built yet. A bad option like any other (exit code 2): nothing was run."""

    exit_code = EXIT_USAGE


class BadWeightsName(WeightsError):
    """A name that cannot name weights (it becomes a file name): a bad option, exit code 2."""

    exit_code = EXIT_USAGE


@dataclass(frozen=True)
class WeightsEntry:
    """One known weight file.

    ``file`` is relative to :func:`weights_dir` or absolute; ``sha256`` is the hex digest
    the file must have (``None``: reserved, not built yet); ``config`` names the
    :data:`m2a_pipe.config.PRESETS` entry it was built with (``None``: the config stored in
    the safetensors file is authoritative).
    """

    name: str
    file: str
    sha256: str | None
    description: str
    config: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    note: str | None = None
    """One line shown wherever these weights run (``process``, ``evaluate``) and stored with the outputs."""
    source: str | None = None
    """Where the file is published (a page or URL), for entries a user adds."""
    source_file: str | None = None
    """The file name the publisher uses (e.g. ``model_final.pth``)."""

    def __post_init__(self) -> None:
        if not self.name or os.sep in self.name or "/" in self.name:
            raise WeightsError(f"invalid weights name {self.name!r}")
        if self.sha256 is not None:
            digest = self.sha256.lower()
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise WeightsError(f"{self.name}: sha256 must be 64 hex digits, got {self.sha256!r}")
            object.__setattr__(self, "sha256", digest)
        if self.config is not None and self.config not in PRESETS:
            raise WeightsError(f"{self.name}: unknown config preset {self.config!r}; known: {sorted(PRESETS)}")

    @property
    def path(self) -> Path:
        """Where the file is (it may not exist)."""
        file = Path(self.file)
        return file if file.is_absolute() else weights_dir() / file

    @property
    def built(self) -> bool:
        """Whether the entry is released (has a sha256)."""
        return self.sha256 is not None

    @property
    def present(self) -> bool:
        return self.built and self.path.is_file()

    def how_to_add(self) -> str:
        """The command that makes this entry present (for entries a user adds)."""
        file = self.source_file or "FILE"
        config = self.config or "config.json"
        return f"m2a-pipe weights add {file} --name {self.name} --config {config}"


def weights_dir() -> Path:
    """``$M2A_WEIGHTS_DIR``, else ``weights/`` beside the ``m2a_pipe`` package source."""
    override = os.environ.get(WEIGHTS_DIR_ENV)
    if override:
        return Path(override).expanduser()
    return Path(__file__).resolve().parents[2] / "weights"


def cache_dir() -> Path:
    """``$M2A_CACHE``, else ``$XDG_CACHE_HOME/m2a-pipe``, else ``~/.cache/m2a-pipe``."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "m2a-pipe"


def check_name(name: str) -> str:
    """``name`` when it can name weights a user adds (letters, digits, ``.``, ``_``, ``-``; not
    starting with ``.`` or ``-``: it becomes a file name); raises :class:`BadWeightsName`
    otherwise."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name or ""):
        raise BadWeightsName(f"--name {name!r}: use letters, digits, '.', '_' and '-' (it names a file)")
    return name


def user_weights_dir() -> Path:
    """The folder of the weights a user adds: ``cache_dir() / "weights"``."""
    return cache_dir() / "weights"


REGISTRY: dict[str, WeightsEntry] = {}
"""Weights the package knows by name (demo, official checkpoints). Add with :func:`register`;
the user's own are in :func:`user_entries`."""


def user_entries() -> dict[str, WeightsEntry]:
    """The entries of the user weights folder's index (empty when there is none).

    Raises :class:`WeightsError` when the index exists but cannot be read.
    """
    index = user_weights_dir() / USER_INDEX
    if not index.is_file():
        return {}
    try:
        data = json.loads(index.read_text())
        return {name: WeightsEntry(name=name, file=str(user_weights_dir() / item["file"]), sha256=item["sha256"],
                                   description=item.get("description", ""), metadata=item.get("metadata", {}),
                                   source=item.get("source"), source_file=item.get("source_file"))
                for name, item in data.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise WeightsError(f"{index}: unreadable weights index ({type(err).__name__}: {err}); "
                           "remove it and add the weights again") from None


def add_user_entry(entry: WeightsEntry) -> WeightsEntry:
    """Record ``entry`` (its file already in :func:`user_weights_dir`) in the index, atomically;
    concurrent adds (two cluster jobs fetching into one shared cache) take turns on a lock of
    the folder, so neither entry is lost."""
    folder = user_weights_dir()
    index = folder / USER_INDEX
    lock = os.open(folder, os.O_RDONLY)  # the folder itself is the lock: nothing is left behind
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = json.loads(index.read_text()) if index.is_file() else {}
        data[entry.name] = {"file": Path(entry.file).name, "sha256": entry.sha256, "description": entry.description,
                            "metadata": dict(entry.metadata), "source": entry.source, "source_file": entry.source_file}
        tmp = index.with_name(f".{USER_INDEX}.{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, index)
    finally:
        os.close(lock)  # releases the lock
    return entry


def lookup(name: str | os.PathLike) -> WeightsEntry | None:
    """The entry of a name: the user's (added or fetched) first, then the package's; None if unknown."""
    text = os.fspath(name)
    user = user_entries().get(text)
    if user is None:
        return REGISTRY.get(text)
    package = REGISTRY.get(text)
    if package is not None:  # an official name the user added: keep its preset, source and note
        return WeightsEntry(**{**asdict(package), "file": user.file, "sha256": user.sha256,
                               "metadata": {**package.metadata, **user.metadata}})
    return user


def register(entry: WeightsEntry, *, overwrite: bool = False) -> WeightsEntry:
    """Add ``entry``; an existing name is an error unless ``overwrite``."""
    if entry.name in REGISTRY and not overwrite:
        raise WeightsError(f"weights {entry.name!r} already registered")
    REGISTRY[entry.name] = entry
    return entry


def unregister(name: str) -> None:
    REGISTRY.pop(name, None)


def list_entries() -> list[WeightsEntry]:
    """Registered entries (the package's and the user's), sorted by name."""
    return [lookup(name) for name in sorted({*REGISTRY, *user_entries()})]


def known_names() -> list[str]:
    return sorted({*REGISTRY, *user_entries()})


def get(name: str) -> WeightsEntry:
    entry = lookup(name)
    if entry is None:
        raise WeightsNotFound(f"unknown weights {name!r}; known: {', '.join(known_names()) or 'none'}")
    return entry


def unknown_weights_hint(name: str) -> str:
    """How to give weights a name: the commands that add, fetch or convert a file."""
    return (f"add a checkpoint under this name with: m2a-pipe weights add FILE --name {name} --config PRESET, "
            f"or m2a-pipe weights fetch URL --sha256 HEX --name {name} --config PRESET "
            "(m2a-pipe weights list shows the known names)")


def resolve(name_or_path: str | os.PathLike) -> Path:
    """The file of a registered name, or ``name_or_path`` itself when it is an existing file.

    Raises :class:`WeightsError` for an unknown name, an entry whose file is missing, or
    an entry not built yet (no sha256, e.g. ``demo`` before it is trained).
    """
    text = os.fspath(name_or_path)
    entry = lookup(text)
    if entry is not None:
        if not entry.built and entry.source:
            raise WeightsNotFound(
                f"{entry.name}: these weights are not on this machine yet: "
                f"download {entry.source_file or 'the checkpoint'} "
                f"from {entry.source}, then run: {entry.how_to_add()}")
        if not entry.built:
            raise WeightsNotFound(
                f"the {entry.name} weights are not built yet: no sha256 is registered for "
                f"{entry.path} (train them, or pass a weights file path instead)")
        if not entry.present:
            raise WeightsNotFound(f"{entry.name}: its file {entry.path} is missing")
        return entry.path
    path = Path(text).expanduser()
    if path.is_file():
        return path
    if path.exists():
        raise WeightsNotFound(f"{path} is not a file")
    if path.suffix or os.sep in text or "/" in text:
        raise WeightsNotFound(f"{text}: no such weights file")
    raise WeightsNotFound(f"{text}: unknown weights name; {unknown_weights_hint(text)}")


def registered_config(name: str | os.PathLike) -> ModelConfig | None:
    """The preset config a registered name declares (``None`` for paths and entries without)."""
    entry = lookup(name)
    return preset(entry.config) if entry is not None and entry.config else None


def expected_sha256(name_or_path: str | os.PathLike) -> str | None:
    """The registered sha256 of a name, ``None`` for a path."""
    entry = lookup(name_or_path)
    return entry.sha256 if entry else None


def weights_note(name_or_path: str | os.PathLike) -> str:
    """The entry's :attr:`~WeightsEntry.note` (empty for paths and entries without one)."""
    entry = lookup(name_or_path)
    return (entry.note or "") if entry else ""


@dataclass(frozen=True)
class Sha256Check:
    """Outcome of :func:`check_sha256`."""

    path: Path
    expected: str
    actual: str

    @property
    def ok(self) -> bool:
        return self.expected == self.actual


def check_sha256(name_or_path: str | os.PathLike, sha256: str | None = None) -> Sha256Check:
    """Recompute the sha256 of a name's (or path's) file and compare it with ``sha256``
    (default: the registered one; a path without ``sha256`` is an error)."""
    expected = sha256 or expected_sha256(name_or_path)
    if expected is None:
        raise WeightsError(f"no sha256 to check {os.fspath(name_or_path)!r} against: "
                           "give one (--sha256), or register the file with its sha256")
    path = resolve(name_or_path)
    return Sha256Check(path=path, expected=expected.strip().lower(), actual=sha256_file(path))


def verify(name_or_path: str | os.PathLike, sha256: str | None = None) -> bool:
    """Whether the file's sha256 equals ``sha256`` (default: the registered one)."""
    return check_sha256(name_or_path, sha256).ok


def resolve_config(spec: str | os.PathLike | ModelConfig,
                   class_names: Sequence[str] | None = None) -> ModelConfig:
    """A :class:`ModelConfig` from a preset name, a reference ``config.json`` (the golden
    export layout, with ``architecture``) or a JSON file of ``ModelConfig.to_dict``;
    ``class_names``, when given, replace the config's (the count must match)."""
    cfg = _load_config(spec)
    if class_names is not None:
        names = tuple(class_names)
        if len(names) != cfg.num_classes:
            raise ConfigError(f"{len(names)} class names given, the config has {cfg.num_classes} classes")
        cfg = cfg.replace(class_names=names)
    return cfg


def _load_config(spec: str | os.PathLike | ModelConfig) -> ModelConfig:
    if isinstance(spec, ModelConfig):
        return spec
    text = os.fspath(spec)
    if text in PRESETS:
        return preset(text)
    path = Path(text).expanduser()
    if not path.is_file():
        raise ConfigError(f"config {text!r} is neither a preset ({', '.join(sorted(PRESETS))}) nor a file")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: not a JSON config ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a JSON object")
    try:
        if "architecture" in data:
            return ModelConfig.from_reference_json(path)
        return ModelConfig.from_dict(data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    except (KeyError, TypeError, ValueError) as err:
        raise ConfigError(f"{path}: invalid config ({type(err).__name__}: {err})") from None


register(WeightsEntry(
    name="demo",
    file="demo.safetensors",
    sha256="2bd468f1b55a4a0a27b70b92aa56ae3ed698500ac6b8ad605c09ba97ee38f519",
    description="small Mask2Anomaly (preset 'small', R18, 64-dim) trained on the synthetic world; "
                "the embedded default (model card: weights/README.md)",
    config="small",
    metadata={"status": "v5", "classes": "cityscapes-19",
              "recipes": "train/demo/01_stage1.json ... train/demo/09_stage2_v6g.json (in order)"},
    note="the demo weights were trained on a synthetic world only: on real footage they box trees, grass and "
         "ordinary cars; for real video add real weights (m2a-pipe weights list shows how) and pass --weights NAME",
))

register(WeightsEntry(
    name="cityscapes-r50",
    file="cityscapes-r50.safetensors",
    sha256=None,
    description="official Mask2Anomaly, ResNet-50, trained on Cityscapes with COCO outliers: road anomalies "
                "(SMIYC, Fishyscapes, Road Anomaly, Lost & Found)",
    config="cityscapes-r50",
    source=OFFICIAL_PAGE,
    source_file="model_final.pth",
))

register(WeightsEntry(
    name="streethazards",
    file="streethazards.safetensors",
    sha256=None,
    description="official Mask2Anomaly, ResNet-50, trained on StreetHazards (12 classes, CARLA scenes); "
                "no preset: its config.json exported from the official streethazard config",
    source=OFFICIAL_PAGE,
    source_file="model_final.pth",
))
