"""agedi_jax: functional JAX generative diffusion of atomistic structures.

The names a notebook needs are importable from the package itself (loaded on first use,
so ``import agedi_jax`` stays cheap)::

    from agedi_jax import preset, replace, fit, load_model, sample_atoms, write_extxyz

    cfg = replace(preset("quickstart"), train={"steps": 300})
    run = fit(cfg, "runs/nb")
    atoms = sample_atoms(run.model, run.state.ema_params, n_atoms=13, num_samples=8, seed=0)

The architecture (layers, batch conventions, where to add a plug-in) is described in the
README's "Architecture" section; in short, from the bottom up:

* data layer — :mod:`~agedi_jax.vocab` (symbols ↔ type indices, MASK = 0),
  :mod:`~agedi_jax.batch` (the padded ``AtomsBatch`` pytree, buckets, ``collate``),
  :mod:`~agedi_jax.edges` (edge templates, in-jit edge vectors),
  :mod:`~agedi_jax.convert` (``ase.Atoms`` ↔ batch, validation),
  :mod:`~agedi_jax.geometry` (masked reductions, centre of mass, wrapping, ``displace``),
  :mod:`~agedi_jax.keys` (per-graph / per-atom random keys), :mod:`~agedi_jax.data`;
* processes — :mod:`~agedi_jax.sde` (VE/VP SDEs, registry ``SDES``),
  :mod:`~agedi_jax.discrete` (absorbing type process, registry ``TYPE_SCHEDULES``);
* networks — :mod:`~agedi_jax.nn` (registry ``NETWORKS``), :mod:`~agedi_jax.scores`
  (raw outputs → scores);
* objectives and samplers — :mod:`~agedi_jax.losses`, :mod:`~agedi_jax.samplers`
  (registries ``POSITION_SAMPLERS``, ``TYPE_SAMPLERS``);
* the model and its use — :mod:`~agedi_jax.model` (config → model, train step, the one
  compile cache), :mod:`~agedi_jax.train` (``fit``), :mod:`~agedi_jax.generate`
  (``sample_atoms``), :mod:`~agedi_jax.checkpoint`, :mod:`~agedi_jax.results`,
  :mod:`~agedi_jax.runlog`, :mod:`~agedi_jax.parallel` (mesh layout), :mod:`~agedi_jax.cli`;
* :mod:`~agedi_jax.evaluation` — precision–recall, descriptors, validity, energetics.

Importing the package changes one global JAX setting: it turns XLA:CPU's YNNPACK fusions
off (:func:`agedi_jax.runtime.tune_xla`; 5-8x faster training steps of the dense cluster
layout with jaxlib 0.10, ``AGEDI_JAX_TUNE_XLA=0`` opts out). Anything else only when asked: set
``AGEDI_JAX_CACHE=/path`` to enable JAX's persistent compilation cache for any use of the
package (the command line enables ``~/.cache/agedi_jax/xla`` by default).
"""

from __future__ import annotations

import importlib as _importlib
import os as _os

from agedi_jax.runtime import tune_xla as _tune_xla

_tune_xla()  # before JAX starts a backend: XLA reads XLA_FLAGS once

__version__ = "0.1.0"

_EXPORTS = {
    # configuration
    "Config": "config", "preset": "config", "replace": "config", "override": "config",
    "config_hash": "config", "PRESETS": "config",
    # data
    "load_dataset": "data", "Dataset": "data", "DataError": "data",
    "TypeVocab": "vocab", "MASK": "vocab",
    "AtomsBatch": "batch", "Bucket": "batch", "StructureError": "batch", "collate": "batch",
    "encode_structures": "convert", "batch_from_atoms": "convert", "atoms_from_batch": "convert",
    # processes, model, samplers
    "make_sde": "sde", "make_type_process": "discrete", "make_network": "nn",
    "DiffusionModel": "model", "build_model": "model", "init_state": "model",
    "make_train_step": "model", "make_eval_step": "model", "TrainState": "model",
    "Scores": "scores", "joint_loss": "losses",
    "sample": "samplers", "time_grid": "samplers", "make_step": "samplers",
    # running it
    "fit": "train", "TrainResult": "train",
    "load_model": "checkpoint", "CheckpointError": "checkpoint",
    "sample_atoms": "generate", "write_extxyz": "results",
    "make_mesh": "parallel",
    "predict_atoms": "forcefield", "relax_atoms": "relax", "make_emt": "potentials",
    "evaluate": "evaluation",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(_importlib.import_module(f"agedi_jax.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'agedi_jax' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if _os.environ.get("AGEDI_JAX_CACHE", "").lower() not in ("", "0", "off", "none"):
    import jax as _jax

    if not _jax.config.jax_compilation_cache_dir:
        _jax.config.update("jax_compilation_cache_dir", _os.environ["AGEDI_JAX_CACHE"])
        _jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
