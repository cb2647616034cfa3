"""The local model catalog: models pulled onto this machine, with manifests.

The catalog is a folder (by default ``<data_dir>/models``) with one subfolder
per model. Each holds the model's files and a manifest, ``hearth-model.json``:

.. code-block:: json

    {
      "format": 1,
      "name": "qwen2.5-0.5b-instruct",
      "source": "hf:Qwen/Qwen2.5-0.5B-Instruct@7ae557604adf67be50417f59c2c2f167def9a775",
      "revision": "7ae557604adf67be50417f59c2c2f167def9a775",
      "files": {"config.json": {"sha256": "…", "size": 659}, "…": {}},
      "context_length": 32768,
      "parameters": 494032768,
      "dtype": "bfloat16",
      "vram_estimate_bytes": 1512345678,
      "pulled_at": "2025-01-01T12:00:00+00:00"
    }

``source`` is ``hf:<repo_id>@<commit>`` for a Hugging Face download and
``path:<absolute path>`` for a local folder copied in; ``revision`` is the
commit, or for a local folder ``sha256:<digest>`` of its file list and hashes.

Every write is atomic: a pull is staged in a hidden sibling folder
(``.<name>.pull-…``) and renamed into place only when complete, so a failed
or interrupted pull leaves nothing a reader could mistake for a model.

This module does blocking file and network I/O (it serves the ``hearth
models`` command); call it through ``asyncio.to_thread`` from async code.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import re
import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import yaml

from hearth.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, Unavailable

log = logging.getLogger(__name__)

#: The manifest in every model folder of the catalog.
MANIFEST_FILE: Final = "hearth-model.json"
#: The manifest format this module writes and reads.
MANIFEST_FORMAT: Final = 1
#: The catalog's folder under the data dir.
MODELS_SUBDIR: Final = "models"
#: Files are read (hashed, copied) in blocks of this size.
HASH_BLOCK_BYTES: Final = 1024 * 1024
#: Context length when config.json does not give one.
DEFAULT_CONTEXT_LENGTH: Final = 2048
#: The share (in percent) added to weights plus KV cache for activations, the
#: CUDA context and allocator fragmentation.
VRAM_OVERHEAD_PERCENT: Final = 10

_MIB: Final = 1024 * 1024
_NAME_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# owner/name, or a bare legacy name (gpt2), optionally @revision.
_HUB_ID_PATTERN: Final = re.compile(r"(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*")

#: Bytes per element of the safetensors dtypes.
_SAFETENSORS_DTYPES: Final[Mapping[str, tuple[str, int]]] = {
    "F64": ("float64", 8),
    "F32": ("float32", 4),
    "F16": ("float16", 2),
    "BF16": ("bfloat16", 2),
    "F8_E4M3": ("float8_e4m3fn", 1),
    "F8_E5M2": ("float8_e5m2", 1),
    "I64": ("int64", 8),
    "I32": ("int32", 4),
    "I16": ("int16", 2),
    "I8": ("int8", 1),
    "U8": ("uint8", 1),
    "BOOL": ("bool", 1),
}
_DTYPE_BYTES: Final[Mapping[str, int]] = {name: size for name, size in _SAFETENSORS_DTYPES.values()}
# Half precision is what almost every released checkpoint uses; the guess when nothing says.
_FALLBACK_DTYPE_BYTES: Final = 2


# --- values ----------------------------------------------------------------


@dataclass(frozen=True)
class FileRecord:
    """One file of a model, as the manifest records it."""

    sha256: str
    size: int

    def to_json(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "size": self.size}


@dataclass(frozen=True)
class CatalogEntry:
    """A model in the catalog: its folder and its manifest."""

    #: The catalog name (the folder's name), also the name jobs use by default.
    name: str
    #: The model's folder (absolute).
    path: Path
    #: ``hf:<repo_id>@<commit>`` or ``path:<absolute path>``.
    source: str
    #: The Hugging Face commit, or ``sha256:<digest>`` of a local folder's files.
    revision: str
    #: Every file of the model (paths relative to ``path``, ``/``-separated).
    files: Mapping[str, FileRecord]
    #: Prompt plus completion, in tokens (config.json's max_position_embeddings).
    context_length: int
    #: Parameter count (safetensors headers, else estimated from config.json; 0 unknown).
    parameters: int
    #: The weights' main dtype (float32, bfloat16, ...; empty when unknown).
    dtype: str
    #: GPU memory to serve it at its full context (see :func:`estimate_vram_bytes`).
    vram_estimate_bytes: int
    #: When it was pulled (UTC).
    pulled_at: datetime

    @property
    def size_bytes(self) -> int:
        return sum(record.size for record in self.files.values())

    @property
    def vram_mib(self) -> int:
        """The VRAM estimate in MiB, rounded up."""
        return math.ceil(self.vram_estimate_bytes / _MIB)

    def manifest(self) -> dict[str, Any]:
        """The manifest's JSON content."""
        return {
            "format": MANIFEST_FORMAT,
            "name": self.name,
            "source": self.source,
            "revision": self.revision,
            "files": {path: record.to_json() for path, record in sorted(self.files.items())},
            "context_length": self.context_length,
            "parameters": self.parameters,
            "dtype": self.dtype,
            "vram_estimate_bytes": self.vram_estimate_bytes,
            "pulled_at": self.pulled_at.isoformat(),
        }

    def to_json(self, *, with_files: bool = False) -> dict[str, Any]:
        """The entry for people and scripts: the manifest plus path and size;
        the file list only when asked."""
        data = self.manifest()
        del data["format"]
        if not with_files:
            data["files"] = len(self.files)
        data["path"] = str(self.path)
        data["size_bytes"] = self.size_bytes
        return data

    @classmethod
    def from_manifest(cls, folder: Path, data: Mapping[str, Any]) -> CatalogEntry:
        """Raises ValueError (or KeyError/TypeError) on a malformed manifest."""
        if data.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"unknown manifest format {data.get('format')!r}")
        return cls(
            name=str(data["name"]),
            path=folder,
            source=str(data["source"]),
            revision=str(data["revision"]),
            files={
                str(path): FileRecord(str(record["sha256"]), int(record["size"]))
                for path, record in dict(data["files"]).items()
            },
            context_length=int(data["context_length"]),
            parameters=int(data["parameters"]),
            dtype=str(data["dtype"]),
            vram_estimate_bytes=int(data["vram_estimate_bytes"]),
            pulled_at=datetime.fromisoformat(str(data["pulled_at"])),
        )


@dataclass(frozen=True)
class VerifyResult:
    """What :meth:`ModelCatalog.verify` found."""

    name: str
    #: Files the manifest lists that are absent.
    missing: tuple[str, ...] = ()
    #: Files whose size or sha256 differs from the manifest.
    changed: tuple[str, ...] = ()
    #: Files in the folder the manifest does not list.
    extra: tuple[str, ...] = ()
    #: Files found intact.
    intact: int = 0

    @property
    def ok(self) -> bool:
        return not (self.missing or self.changed or self.extra)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ok": self.ok,
            "intact": self.intact,
            "missing": list(self.missing),
            "changed": list(self.changed),
            "extra": list(self.extra),
        }


@dataclass(frozen=True)
class PullProgress:
    """One progress report of a pull."""

    #: Stable per progress bar within one pull (a pull may report several bars).
    task: str
    #: What is being done, for people ("Copying", "Downloading bytes", ...).
    description: str
    completed: float
    #: None while unknown.
    total: float | None
    #: "B" for bytes, otherwise a count of items.
    unit: str = "B"


#: Receives progress reports; during a Hugging Face download it is called
#: from the download's worker threads.
ProgressCallback = Callable[[PullProgress], None]


# --- model facts -------------------------------------------------------------


@dataclass(frozen=True)
class ModelArchitecture:
    """The numbers of a transformer decoder that size its memory, from config.json.

    Zero where config.json does not say (then the KV cache is left out of estimates).
    """

    context_length: int = DEFAULT_CONTEXT_LENGTH
    layers: int = 0
    attention_heads: int = 0
    kv_heads: int = 0
    head_dim: int = 0
    hidden_size: int = 0
    intermediate_size: int = 0
    vocab_size: int = 0
    tie_word_embeddings: bool = False
    #: The dtype config.json names (``dtype`` or ``torch_dtype``), empty when none.
    dtype: str = ""


@dataclass(frozen=True)
class ModelFacts:
    """What the catalog records about a model folder's contents."""

    architecture: ModelArchitecture
    parameters: int
    dtype: str
    dtype_bytes: int
    vram_estimate_bytes: int


def estimate_vram_bytes(
    parameters: int,
    dtype_bytes: int,
    *,
    context_length: int,
    layers: int,
    kv_heads: int,
    head_dim: int,
    batch_tokens: int | None = None,
) -> int:
    """GPU memory to serve a model, in bytes (rounded up).

    ``ceil((weights + kv_cache) * 1.10)``, where

    * ``weights = parameters * dtype_bytes``;
    * ``kv_cache = tokens * 2 * layers * kv_heads * head_dim * dtype_bytes``:
      a key and a value vector per layer and KV head for every token held,
      in the model's dtype;
    * ``tokens`` is ``batch_tokens`` (the KV tokens held across a whole
      batch, when known) or else ``context_length`` (one full sequence);
    * the 10 % covers activations, the CUDA context and allocator
      fragmentation.

    A lower bound for engines that reserve a fixed share of the card (vLLM's
    gpu_memory_utilization); quantised weights are only as accurate as
    ``dtype_bytes``.

    Raises:
        ValueError: a negative number, or ``dtype_bytes`` below 1.
    """
    tokens = context_length if batch_tokens is None else batch_tokens
    if min(parameters, context_length, layers, kv_heads, head_dim, tokens) < 0 or dtype_bytes < 1:
        raise ValueError("the model's numbers must not be negative and dtype_bytes must be at least 1")
    weights = parameters * dtype_bytes
    kv_cache = tokens * 2 * layers * kv_heads * head_dim * dtype_bytes
    # Integer arithmetic: the estimate is exact, with no float rounding at the ceiling.
    return -(-(weights + kv_cache) * (100 + VRAM_OVERHEAD_PERCENT) // 100)


def read_architecture(folder: Path) -> ModelArchitecture:
    """The :class:`ModelArchitecture` of a Hugging Face model folder's config.json.

    Understands the Llama/Qwen/Mistral names (``num_hidden_layers``,
    ``num_key_value_heads``, ``head_dim``...) and the GPT-2 ones
    (``n_layer``, ``n_head``, ``n_embd``, ``n_positions``); a multimodal
    config's ``text_config`` is used when the top level has no layers.
    Without config.json every number is 0 and the context length 2048.

    Raises:
        ValueError: config.json is not a JSON object.
    """
    path = Path(folder) / "config.json"
    if not path.is_file():
        return ModelArchitecture()
    config = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(config, dict):
        raise ValueError(f"{path} is not a JSON object")
    text = config.get("text_config")
    if isinstance(text, dict) and not _first_int(config, "num_hidden_layers", "n_layer", "num_layers"):
        config = {**config, **text}
    hidden = _first_int(config, "hidden_size", "n_embd", "d_model")
    heads = _first_int(config, "num_attention_heads", "n_head")
    kv_heads = _first_int(config, "num_key_value_heads", "num_kv_heads") or heads
    head_dim = _first_int(config, "head_dim") or (hidden // heads if heads else 0)
    dtype = config.get("dtype") or config.get("torch_dtype") or ""
    return ModelArchitecture(
        context_length=_first_int(config, "max_position_embeddings", "n_positions") or DEFAULT_CONTEXT_LENGTH,
        layers=_first_int(config, "num_hidden_layers", "n_layer", "num_layers"),
        attention_heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        hidden_size=hidden,
        intermediate_size=_first_int(config, "intermediate_size", "n_inner") or 4 * hidden,
        vocab_size=_first_int(config, "vocab_size"),
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        dtype=str(dtype) if isinstance(dtype, str) else "",
    )


def read_safetensors_parameters(folder: Path) -> tuple[int, str]:
    """Parameter count and main dtype (the one most parameters have) from the
    headers of every ``*.safetensors`` file in ``folder`` (no tensor is
    loaded); ``(0, "")`` when there are none."""
    from safetensors import safe_open

    counts: dict[str, int] = {}
    for path in sorted(Path(folder).rglob("*.safetensors")):
        if _hidden(path.relative_to(folder)):
            continue
        with safe_open(str(path), framework="numpy") as weights:
            for key in weights.keys():
                tensor = weights.get_slice(key)
                dtype = _SAFETENSORS_DTYPES.get(tensor.get_dtype(), (tensor.get_dtype().lower(), 0))[0]
                counts[dtype] = counts.get(dtype, 0) + math.prod(tensor.get_shape())
    if not counts:
        return 0, ""
    return sum(counts.values()), max(counts, key=lambda dtype: counts[dtype])


def estimate_parameters(arch: ModelArchitecture) -> int:
    """A decoder's parameter count from its config, for folders without
    safetensors: embeddings (and an untied LM head), per layer the attention
    projections (q and o full width, k and v per KV head), a gated MLP (three
    matrices) and two norms, and the final norm."""
    if not (arch.layers and arch.hidden_size and arch.vocab_size):
        return 0
    hidden = arch.hidden_size
    q_width = (arch.attention_heads * arch.head_dim) or hidden
    kv_width = arch.kv_heads * arch.head_dim or hidden
    attention = 2 * hidden * q_width + 2 * hidden * kv_width
    mlp = 3 * hidden * arch.intermediate_size
    embeddings = arch.vocab_size * hidden * (1 if arch.tie_word_embeddings else 2)
    return embeddings + arch.layers * (attention + mlp + 2 * hidden) + hidden


def inspect_model_folder(folder: Path) -> ModelFacts:
    """Context length, parameters, dtype and the VRAM estimate of a model folder.

    Parameters and dtype come from the safetensors headers, else from
    config.json (an estimate of the parameters, its dtype); an unknown dtype
    is counted as 2 bytes (half precision) for the estimate.
    """
    arch = read_architecture(folder)
    parameters, dtype = read_safetensors_parameters(folder)
    if not parameters:
        parameters = estimate_parameters(arch)
    dtype = dtype or arch.dtype
    dtype_bytes = _DTYPE_BYTES.get(dtype, _FALLBACK_DTYPE_BYTES)
    vram = estimate_vram_bytes(
        parameters,
        dtype_bytes,
        context_length=arch.context_length,
        layers=arch.layers,
        kv_heads=arch.kv_heads,
        head_dim=arch.head_dim,
    )
    return ModelFacts(arch, parameters, dtype, dtype_bytes, vram)


def estimate_folder_vram_bytes(folder: Path) -> int:
    """The VRAM estimate of a model folder (see :func:`inspect_model_folder`)."""
    return inspect_model_folder(folder).vram_estimate_bytes


def models_config_snippet(entries: Sequence[CatalogEntry]) -> str:
    """The ``models:`` YAML to paste into hearth.yaml for ``entries``."""
    models = [
        {
            "name": entry.name,
            "path": str(entry.path),
            "context_length": entry.context_length,
            "vram_mib": entry.vram_mib,
        }
        for entry in entries
    ]
    return yaml.safe_dump({"models": models}, sort_keys=False)


def default_models_dir(data_dir: Path) -> Path:
    """The catalog folder of a data dir."""
    return Path(data_dir) / MODELS_SUBDIR


# --- the catalog -------------------------------------------------------------


@dataclass(frozen=True)
class _LocalSource:
    folder: Path

    @property
    def default_name(self) -> str:
        return self.folder.name


@dataclass(frozen=True)
class _HubSource:
    repo_id: str
    revision: str | None

    @property
    def default_name(self) -> str:
        return self.repo_id.rsplit("/", 1)[-1]


class ModelCatalog:
    """The models in one catalog folder.

    Args:
        root: the catalog folder (created on the first pull).
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def list(self) -> list[CatalogEntry]:
        """Every model, by name. Folders without a readable manifest (and the
        hidden staging folders of pulls in progress) are skipped; a broken
        manifest is logged."""
        entries = []
        if not self.root.is_dir():
            return []
        for folder in sorted(self.root.iterdir()):
            if not folder.is_dir() or folder.name.startswith(".") or not (folder / MANIFEST_FILE).is_file():
                continue
            try:
                entries.append(self._read(folder))
            except FailedPrecondition as err:
                log.warning("%s", err.message)
        return entries

    def get(self, name: str) -> CatalogEntry:
        """The model called ``name``.

        Raises:
            InvalidArgument: ``name`` is not a valid model name.
            NotFound: ``MODEL_NOT_FOUND``.
            FailedPrecondition: ``MODEL_MANIFEST_INVALID``, its manifest cannot be read.
        """
        folder = self.root / _check_name(name)
        if not (folder / MANIFEST_FILE).is_file():
            raise NotFound(
                f"model {name!r} is not in the catalog {self.root}",
                reason="MODEL_NOT_FOUND",
                metadata={"model": name, "models_dir": str(self.root)},
            )
        return self._read(folder)

    def pull(
        self,
        source: str,
        name: str | None = None,
        *,
        revision: str | None = None,
        force: bool = False,
        progress: ProgressCallback | None = None,
    ) -> CatalogEntry:
        """Bring a model into the catalog and write its manifest.

        ``source`` is an existing local folder (copied in; also written
        ``path:<folder>``) or a Hugging Face repo id (``owner/name``,
        optionally ``@revision``; also written ``hf:owner/name``), which is
        resolved to a commit and downloaded with
        ``huggingface_hub.snapshot_download`` (it honours ``HF_TOKEN``,
        ``HF_ENDPOINT`` and ``HF_HUB_OFFLINE``). Hidden files and folders
        (``.git``, ``.cache``) are not taken. ``name`` defaults to the
        folder's or the repo's name.

        Raises:
            InvalidArgument: a malformed source, name or revision.
            AlreadyExists: ``MODEL_EXISTS``, the name is taken and ``force`` is False.
            NotFound: ``MODEL_SOURCE_NOT_FOUND`` / ``MODEL_REVISION_NOT_FOUND``.
            FailedPrecondition: ``MODEL_PULL_FAILED`` (the source could not
                be read, or the disk is full) or ``MODEL_SOURCE_GATED``.
            Unavailable: ``MODEL_SOURCE_UNREACHABLE``, the Hub cannot be reached.
        """
        parsed = _parse_source(source, revision)
        if name is None:
            name = (
                parsed.folder.name if isinstance(parsed, _LocalSource) else parsed.repo_id.rsplit("/", 1)[-1]
            )
        name = _check_name(name)
        target = self.root / name
        if target.exists() and not force:
            raise _exists(name, target)
        self.root.mkdir(parents=True, exist_ok=True)
        staging = self.root / f".{name}.pull-{uuid.uuid4().hex[:12]}"
        staging.mkdir()
        try:
            if isinstance(parsed, _LocalSource):
                files = _copy_folder(parsed.folder, staging, progress)
                source_text = f"path:{parsed.folder}"
                resolved = _content_revision(files)
            else:
                resolved = _download(parsed, staging, progress)
                files = _hash_folder(staging)
                source_text = f"hf:{parsed.repo_id}@{resolved}"
            facts = inspect_model_folder(staging)
            entry = CatalogEntry(
                name=name,
                path=target.absolute(),
                source=source_text,
                revision=resolved,
                files=files,
                context_length=facts.architecture.context_length,
                parameters=facts.parameters,
                dtype=facts.dtype,
                vram_estimate_bytes=facts.vram_estimate_bytes,
                pulled_at=datetime.now(UTC),
            )
            _write_manifest(staging, entry)
            self._install(staging, target, force=force)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        log.info("pulled %s from %s into %s", name, entry.source, target)
        return entry

    def verify(self, name: str) -> VerifyResult:
        """Recompute every file's sha256 and compare with the manifest.

        Raises what :meth:`get` raises.
        """
        entry = self.get(name)
        missing, changed = [], []
        for relative, record in sorted(entry.files.items()):
            path = entry.path / relative
            if not path.is_file():
                missing.append(relative)
            elif path.stat().st_size != record.size or _sha256(path) != record.sha256:
                changed.append(relative)
        extra = sorted(set(_model_files(entry.path)) - set(entry.files))
        intact = len(entry.files) - len(missing) - len(changed)
        return VerifyResult(entry.name, tuple(missing), tuple(changed), tuple(extra), intact)

    def remove(self, name: str) -> None:
        """Delete a model and its folder.

        The folder is renamed away first, so the model is gone at once even
        if deleting its files takes a while. A folder whose manifest is
        broken is removed too.

        Raises:
            InvalidArgument: ``name`` is not a valid model name.
            NotFound: ``MODEL_NOT_FOUND``.
        """
        with contextlib.suppress(FailedPrecondition):
            self.get(name)
        folder = self.root / name
        doomed = self.root / f".{name}.removing-{uuid.uuid4().hex[:12]}"
        folder.rename(doomed)
        shutil.rmtree(doomed, ignore_errors=True)
        log.info("removed %s from the catalog %s", name, self.root)

    def _read(self, folder: Path) -> CatalogEntry:
        path = folder / MANIFEST_FILE
        try:
            return CatalogEntry.from_manifest(folder.absolute(), json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise FailedPrecondition(
                f"the manifest {path} cannot be read: {err}",
                reason="MODEL_MANIFEST_INVALID",
                metadata={"model": folder.name, "path": str(path)},
            ) from None

    def _install(self, staging: Path, target: Path, *, force: bool) -> None:
        old: Path | None = None
        if target.exists():
            if not force:  # another pull finished first
                raise _exists(target.name, target)
            old = self.root / f".{target.name}.replaced-{uuid.uuid4().hex[:12]}"
            target.rename(old)
        try:
            staging.rename(target)
        except OSError:
            if old is not None:
                old.rename(target)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


# --- internals ---------------------------------------------------------------


def _check_name(name: str) -> str:
    if not _NAME_PATTERN.fullmatch(name):
        raise InvalidArgument(
            "name",
            f"{name!r} is not a valid model name: use letters, digits, '.', '_' and '-', "
            "starting with a letter or digit, at most 128 characters",
        )
    return name


def _exists(name: str, target: Path) -> AlreadyExists:
    return AlreadyExists(
        f"model {name!r} is already in the catalog at {target}; remove it first or pull with force",
        reason="MODEL_EXISTS",
        metadata={"model": name, "path": str(target)},
    )


def _parse_source(source: str, revision: str | None) -> _LocalSource | _HubSource:
    if source.startswith("path:"):
        folder = _local_source(source.removeprefix("path:"), must_exist=True)
        assert folder is not None
        return folder
    if source.startswith("hf:"):
        return _hub_source(source.removeprefix("hf:"), revision)
    local = _local_source(source, must_exist=False)
    if local is not None:
        return local
    if source.startswith((".", "/", "~")) or "\\" in source or source.count("/") > 1:
        raise NotFound(
            f"the model source {source!r} is not a folder on this machine",
            reason="MODEL_SOURCE_NOT_FOUND",
            metadata={"source": source},
        )
    return _hub_source(source, revision)


def _local_source(text: str, *, must_exist: bool) -> _LocalSource | None:
    folder = Path(text).expanduser()
    if not folder.exists():
        if must_exist:
            raise NotFound(
                f"the model source folder {text!r} does not exist",
                reason="MODEL_SOURCE_NOT_FOUND",
                metadata={"source": text},
            )
        return None
    if not folder.is_dir():
        raise InvalidArgument("source", f"{text!r} is a file, not a model folder")
    return _LocalSource(folder.resolve())


def _hub_source(text: str, revision: str | None) -> _HubSource:
    repo_id, _, pinned = text.partition("@")
    if not _HUB_ID_PATTERN.fullmatch(repo_id) or "--" in repo_id or ".." in repo_id:
        raise InvalidArgument(
            "source",
            f"{text!r} is neither a local folder nor a Hugging Face repo id (owner/name[@revision])",
        )
    if pinned and revision and pinned != revision:
        raise InvalidArgument("revision", f"the source pins revision {pinned!r} but {revision!r} was given")
    return _HubSource(repo_id, pinned or revision or None)


def _first_int(config: Mapping[str, Any], *keys: str) -> int:
    for key in keys:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return 0


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def _model_files(folder: Path) -> Iterator[str]:
    """The model's files under ``folder`` (relative, ``/``-separated): every
    regular file except the manifest and hidden ones."""
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if path.is_file() and not _hidden(relative) and relative.as_posix() != MANIFEST_FILE:
            yield relative.as_posix()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while block := stream.read(HASH_BLOCK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def _hash_folder(folder: Path) -> dict[str, FileRecord]:
    return {
        relative: FileRecord(_sha256(folder / relative), (folder / relative).stat().st_size)
        for relative in _model_files(folder)
    }


def _content_revision(files: Mapping[str, FileRecord]) -> str:
    digest = hashlib.sha256()
    for relative, record in sorted(files.items()):
        digest.update(f"{relative}\0{record.sha256}\n".encode())
    return f"sha256:{digest.hexdigest()}"


def _copy_folder(source: Path, dest: Path, progress: ProgressCallback | None) -> dict[str, FileRecord]:
    """Copy the model files of ``source`` into ``dest``, hashing as it reads."""
    try:
        relatives = list(_model_files(source))
        total = sum((source / relative).stat().st_size for relative in relatives)
    except OSError as err:
        raise _pull_failed(source, err) from None
    done = 0
    files: dict[str, FileRecord] = {}

    def report() -> None:
        if progress is not None:
            progress(PullProgress("copy", f"Copying {source.name}", done, total))

    report()
    for relative in relatives:
        target = dest / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        size = 0
        try:
            with (source / relative).open("rb") as reader, target.open("wb") as writer:
                while block := reader.read(HASH_BLOCK_BYTES):
                    digest.update(block)
                    writer.write(block)
                    size += len(block)
                    done += len(block)
                    report()
        except OSError as err:
            raise _pull_failed(source, err) from None
        files[relative] = FileRecord(digest.hexdigest(), size)
    return files


def _pull_failed(source: Path | str, err: OSError) -> FailedPrecondition:
    return FailedPrecondition(
        f"the pull from {source} failed: {err.strerror or err}"
        + (f" ({err.filename})" if err.filename else ""),
        reason="MODEL_PULL_FAILED",
        metadata={"source": str(source)},
    )


def _write_manifest(folder: Path, entry: CatalogEntry) -> None:
    (folder / MANIFEST_FILE).write_text(json.dumps(entry.manifest(), indent=2) + "\n", encoding="utf-8")


def _download(source: _HubSource, dest: Path, progress: ProgressCallback | None) -> str:
    """Resolve the revision to a commit and download it into ``dest``; returns the commit."""
    import httpx
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{source.repo_id}@{source.revision or 'main'}"
    metadata = {"source": f"hf:{source.repo_id}", "revision": source.revision or ""}
    try:
        # Pin the commit first so the manifest names exactly what was downloaded.
        commit = HfApi().model_info(source.repo_id, revision=source.revision).sha
        if not commit:
            raise Unavailable(
                f"the Hugging Face Hub gave no commit for {where}",
                reason="MODEL_SOURCE_UNREACHABLE",
                metadata=metadata,
            )
        snapshot_download(
            source.repo_id,
            revision=commit,
            local_dir=dest,
            tqdm_class=_progress_tqdm(progress) if progress is not None else None,
        )
    except GatedRepoError as err:
        raise FailedPrecondition(
            f"{source.repo_id} is gated: accept its terms on huggingface.co and set HF_TOKEN ({err})",
            reason="MODEL_SOURCE_GATED",
            metadata=metadata,
        ) from None
    except RepositoryNotFoundError:
        raise NotFound(
            f"no Hugging Face model {source.repo_id!r} (or it is private: set HF_TOKEN)",
            reason="MODEL_SOURCE_NOT_FOUND",
            metadata=metadata,
        ) from None
    except RevisionNotFoundError:
        raise NotFound(
            f"{source.repo_id} has no revision {source.revision!r}",
            reason="MODEL_REVISION_NOT_FOUND",
            metadata=metadata,
        ) from None
    except (ConnectionError, httpx.HTTPError, HfHubHTTPError) as err:
        raise Unavailable(
            f"cannot download {where} from the Hugging Face Hub: {err}",
            reason="MODEL_SOURCE_UNREACHABLE",
            metadata=metadata,
        ) from None
    except OSError as err:
        raise _pull_failed(f"hf:{where}", err) from None
    # The Hub's bookkeeping for local_dir downloads; not part of the model.
    shutil.rmtree(dest / ".cache", ignore_errors=True)
    return commit


def _progress_tqdm(progress: ProgressCallback) -> type:
    """A tqdm class for huggingface_hub that draws nothing and hands every
    update to ``progress`` instead."""
    from tqdm.auto import tqdm

    class ReportingTqdm(tqdm):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.pop("name", None)  # huggingface_hub's own tqdm option
            kwargs["disable"] = False
            kwargs["file"] = io.StringIO()  # drawn by the callback, not here
            super().__init__(*args, **kwargs)
            self._task = f"hf-{uuid.uuid4().hex[:8]}"
            self._report()

        def update(self, n: float | None = 1) -> bool | None:
            shown = super().update(n)
            self._report()
            return shown

        def set_description(self, desc: str | None = None, refresh: bool | None = True) -> None:
            super().set_description(desc, refresh)
            self._report()

        def __iter__(self) -> Iterator[Any]:
            for item in self.iterable:
                yield item
                self.update(1)

        def _report(self) -> None:
            description = (self.desc or "").rstrip(": ") or "Downloading"
            unit = "B" if self.unit == "B" else str(self.unit or "it")
            progress(PullProgress(self._task, description, self.n, self.total or None, unit))

    return ReportingTqdm


__all__ = [
    "DEFAULT_CONTEXT_LENGTH",
    "HASH_BLOCK_BYTES",
    "MANIFEST_FILE",
    "CatalogEntry",
    "FileRecord",
    "ModelArchitecture",
    "ModelCatalog",
    "ModelFacts",
    "ProgressCallback",
    "PullProgress",
    "VerifyResult",
    "default_models_dir",
    "estimate_folder_vram_bytes",
    "estimate_parameters",
    "estimate_vram_bytes",
    "inspect_model_folder",
    "models_config_snippet",
    "read_architecture",
    "read_safetensors_parameters",
]
