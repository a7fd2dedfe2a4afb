"""Atomic orbax checkpoints with their config, vocabulary and metadata.

Layout of a run directory ``RUN/checkpoints/``::

    latest/            the most recent state
      state/           orbax PyTree checkpoint of the train state
      meta.json        config, type vocabulary, step, metrics, package version, config hash
    best/              the state with the lowest validation loss (same layout)

:func:`export_params` writes a *parameters-only* checkpoint (same layout, ``meta.json``
``contents: "params"``: the EMA parameters, a quarter of the train state's size, no
optimiser moments) for sharing and committing a model: :func:`load_model` samples from it
like from a full one; training cannot resume from it.

A checkpoint is written into a temporary sibling directory and moved into place with
``os.replace``-style renames, so an interrupted write never leaves a half-written
``latest``. ``meta.json`` records the SHA-256 of every file of ``state/``; they are checked
before anything is restored, so a truncated or altered file (a flipped byte on disk, a bad
copy) raises :class:`CheckpointIntegrityError` naming the file, as does a checkpoint that
is unreadable, incomplete or from another configuration (:class:`CheckpointError`).
Restored parameters must also be finite.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Sequence

import jax
import numpy as np

from agedi_jax import __version__
from agedi_jax.config import Config, config_hash
from agedi_jax.results import json_default
from agedi_jax.vocab import TypeVocab

__all__ = [
    "CheckpointError",
    "CheckpointIntegrityError",
    "file_digests",
    "verify_checkpoint",
    "save_checkpoint",
    "read_meta",
    "load_config_and_vocab",
    "check_compatible",
    "restore_state",
    "checkpoint_dir",
    "load_model",
    "export_params",
]

TRAIN_STATE, PARAMS = "train_state", "params"
"""``meta["contents"]`` of a full checkpoint (written by training; older checkpoints have no
such key) and of a parameters-only export."""


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, or does not match the configuration."""


class CheckpointIntegrityError(CheckpointError):
    """A file of a checkpoint does not have the content recorded when it was written."""


def file_digests(directory: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file below ``directory`` (sorted)."""
    import hashlib

    out = {}
    for f in sorted(p for p in Path(directory).rglob("*") if p.is_file()):
        h = hashlib.sha256()
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        out[f.relative_to(directory).as_posix()] = h.hexdigest()
    return out


def verify_checkpoint(directory: str | os.PathLike, meta: dict | None = None) -> bool:
    """Check the files of ``directory/state`` against the digests in ``meta.json``.

    Returns True when verified, False for a checkpoint written before digests were
    recorded (nothing to check against); raises :class:`CheckpointIntegrityError` naming
    the first missing, extra or altered file."""
    directory = Path(directory)
    meta = read_meta(directory) if meta is None else meta
    recorded = meta.get("files")
    if not recorded:
        return False
    found = file_digests(directory / "state")
    for name, digest in recorded.items():
        path = directory / "state" / name
        if name not in found:
            raise CheckpointIntegrityError(f"checkpoint {directory}: file {path} is missing")
        if found[name] != digest:
            raise CheckpointIntegrityError(
                f"checkpoint {directory}: file {path} is corrupt (its SHA-256 differs from the one "
                "recorded when the checkpoint was written); use another checkpoint (best / latest) "
                "or restore the file"
            )
    extra = sorted(set(found) - set(recorded))
    if extra:
        raise CheckpointIntegrityError(f"checkpoint {directory}: unexpected file(s) in state/: {extra[:5]}")
    return True


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=json_default))
    os.replace(tmp, path)


def save_checkpoint(
    directory: str | os.PathLike,
    state: Any,
    config: Config,
    vocab: TypeVocab,
    *,
    step: int,
    extra: dict | None = None,
    contents: str = TRAIN_STATE,
) -> Path:
    """Write ``state`` (a pytree of arrays) and its metadata to ``directory`` atomically
    (``contents``: :data:`TRAIN_STATE`, or :data:`PARAMS` for ``{"params": ...}``).

    Returns the checkpoint directory. An existing checkpoint there is replaced only after
    the new one is complete.
    """
    import orbax.checkpoint as ocp

    directory = Path(directory).absolute()
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.with_name(f".{directory.name}.{uuid.uuid4().hex}.tmp")
    state = jax.device_get(state)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp / "state", state)
    checkpointer.wait_until_finished()
    marker = tmp / "state" / "commit_success.txt"
    if marker.is_file():  # orbax writes the absolute temporary path there; keep files portable
        marker.write_text("Checkpoint commit was successful.")
    meta = {
        "format": "agedi_jax-checkpoint-1",
        "version": __version__,
        "step": int(step),
        "contents": contents,
        "config": config.to_dict(),
        "config_hash": config_hash(config),
        "vocab": vocab.to_dict(),
        "extra": extra or {},
        "files": file_digests(tmp / "state"),
    }
    _write_json_atomic(tmp / "meta.json", meta)
    trash = directory.with_name(f".{directory.name}.{uuid.uuid4().hex}.old")
    if directory.exists():
        os.replace(directory, trash)
    os.replace(tmp, directory)
    shutil.rmtree(trash, ignore_errors=True)
    return directory


def read_meta(directory: str | os.PathLike) -> dict:
    """The metadata of a checkpoint (config, vocab, step, extra); clear errors if absent."""
    directory = Path(directory)
    if not directory.exists():
        raise CheckpointError(f"checkpoint {directory} does not exist")
    meta_path = directory / "meta.json"
    if not meta_path.is_file() or not (directory / "state").is_dir():
        raise CheckpointError(
            f"{directory} is not an agedi_jax checkpoint (missing meta.json or state/); "
            "point to RUN/checkpoints/latest or RUN/checkpoints/best"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"checkpoint metadata {meta_path} is corrupt: {err}") from None
    if meta.get("format") != "agedi_jax-checkpoint-1":
        raise CheckpointError(f"{meta_path}: unknown checkpoint format {meta.get('format')!r}")
    return meta


def load_config_and_vocab(directory: str | os.PathLike) -> tuple[Config, TypeVocab, dict]:
    """Config, vocabulary and metadata saved with a checkpoint."""
    meta = read_meta(directory)
    try:
        config = Config.from_dict(meta["config"])
        vocab = TypeVocab.from_dict(meta["vocab"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"checkpoint {directory}: config or vocabulary unreadable: {err}") from None
    return config, vocab, meta


def check_compatible(saved: Config, current: Config, what: str = "checkpoint") -> None:
    """Raise :class:`CheckpointError` if the model or process sections differ (a checkpoint
    from another config); training and sampling settings may differ."""
    diffs = []
    for section in ("model", "process"):
        a, b = getattr(saved, section).__dict__, getattr(current, section).__dict__
        for key in a:
            if a[key] != b.get(key):
                diffs.append(f"{section}.{key}: {what} has {a[key]!r}, config has {b.get(key)!r}")
    if saved.data.max_atoms != current.data.max_atoms:
        diffs.append(f"data.max_atoms: {what} has {saved.data.max_atoms}, config has {current.data.max_atoms}")
    if diffs:
        raise CheckpointError(f"the {what} was made with another configuration:\n  " + "\n  ".join(diffs))


def restore_state(directory: str | os.PathLike, target: Any) -> Any:
    """Restore the state saved in ``directory`` into the structure of ``target`` (a pytree
    of arrays with the expected shapes and dtypes, e.g. a freshly initialised state).

    The files are verified against their recorded digests first (:func:`verify_checkpoint`;
    checkpoints written before digests were recorded are restored with a warning), and
    every restored floating-point value must be finite."""
    import warnings

    import orbax.checkpoint as ocp

    directory = Path(directory).absolute()
    meta = read_meta(directory)
    if not verify_checkpoint(directory, meta):
        warnings.warn(
            f"checkpoint {directory} records no file digests (written by an older version): "
            "its integrity cannot be checked",
            stacklevel=2,
        )
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # orbax warns about sharding metadata on CPU
            restored = ocp.StandardCheckpointer().restore(directory / "state", abstract)
    except Exception as err:  # orbax raises many types for corrupt / mismatched trees
        raise CheckpointError(
            f"checkpoint {directory} could not be restored into the model's state "
            f"(corrupt files or parameters of another shape): {_first_line(err)}"
        ) from None
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(abstract)):
        if tuple(a.shape) != tuple(b.shape):
            raise CheckpointError(f"checkpoint {directory}: parameter of shape {a.shape}, model expects {b.shape}")
    for path, leaf in jax.tree_util.tree_flatten_with_path(restored)[0]:
        arr = np.asarray(leaf)
        if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
            name = jax.tree_util.keystr(path)
            raise CheckpointIntegrityError(f"checkpoint {directory}: non-finite values in {name}")
    return restored


def _first_line(err: Exception, limit: int = 240) -> str:
    """The first sentence-like part of an exception message, without library dumps."""
    text = str(err).strip() or type(err).__name__
    line = text.splitlines()[0]
    for cut in (" [source locations", " === Source Location", "; Source location", " tensorstore_spec"):
        if cut in line:
            line = line.split(cut)[0]
    return line[:limit] + ("…" if len(line) > limit else "")


# --------------------------------------------------------------------------------------
# Loading a trained model
# --------------------------------------------------------------------------------------


def checkpoint_dir(path: str | os.PathLike) -> Path:
    """``RUN`` → ``RUN/checkpoints/best`` (else ``latest``, else the parameters-only
    ``params`` of :func:`export_params`); a checkpoint directory as is."""
    path = Path(path)
    if (path / "meta.json").is_file():
        return path
    for name in ("best", "latest", "params"):
        if (path / "checkpoints" / name / "meta.json").is_file():
            return path / "checkpoints" / name
    if not path.exists():
        raise CheckpointError(f"checkpoint path {path} does not exist")
    raise CheckpointError(f"no checkpoint in {path} (expected meta.json, or checkpoints/best|latest|params)")


def _dummy_batch(model: Any) -> Any:
    from ase import Atoms

    from agedi_jax.batch import collate
    from agedi_jax.convert import encode_structures

    symbol = model.vocab.symbols[0]
    atoms = Atoms([symbol] * 2, positions=[[0, 0, 0], [1.5, 0, 0]])
    return collate(encode_structures([atoms], model.vocab, model.config.model.cutoff))


def load_model(
    path: str | os.PathLike, overrides: Sequence[str] = (), use_ema: bool = True
) -> tuple[Any, Any, Config]:
    """Load a model and its parameters from a run directory or checkpoint.

    ``overrides`` may change the ``sample`` section only (``sample.steps=100``); the model
    and processes are those the checkpoint was trained with.
    """
    from jax import eval_shape, random

    from agedi_jax.config import override
    from agedi_jax.model import build_model, init_state

    ckpt = checkpoint_dir(path)
    config, vocab, meta = load_config_and_vocab(ckpt)
    for item in overrides:
        if not item.split("=", 1)[0].strip().startswith("sample."):
            raise ValueError(f"when sampling only sample.* fields can be overridden, not {item!r}")
    config = override(config, overrides)
    model = build_model(config, vocab)
    target = eval_shape(lambda: init_state(model, random.PRNGKey(0), _dummy_batch(model)))
    if meta.get("contents", TRAIN_STATE) == PARAMS:
        kind = meta.get("extra", {}).get("exported", "ema")
        if (kind == "ema") != use_ema:
            raise CheckpointError(f"{ckpt} holds the {'EMA' if kind == 'ema' else 'raw'} parameters only (an export); "
                                  f"load it with use_ema={kind == 'ema'}")
        return model, restore_state(ckpt, {"params": target.ema_params})["params"], config
    state = restore_state(ckpt, target)
    params = state.ema_params if use_ema else state.params
    return model, params, config


def export_params(src: str | os.PathLike, dst: str | os.PathLike, use_ema: bool = True,
                  overrides: Sequence[str] = ()) -> Path:
    """Write the parameters of checkpoint ``src`` (a run directory or checkpoint; the EMA
    parameters unless ``use_ema=False``) as a parameters-only checkpoint ``dst`` with the
    same config (``overrides``: new default sampler settings, ``sample.*`` only, as for
    :func:`load_model`), vocabulary, step and extras; returns ``dst``. Samples from ``dst``
    equal those from ``src`` bitwise (with the same sampler settings)."""
    ckpt = checkpoint_dir(src)
    _, params, config = load_model(ckpt, overrides=overrides, use_ema=use_ema)
    _, vocab, meta = load_config_and_vocab(ckpt)
    extra = {**meta.get("extra", {}), "exported": "ema" if use_ema else "raw"}
    return save_checkpoint(dst, {"params": params}, config, vocab, step=int(meta["step"]), extra=extra,
                           contents=PARAMS)
