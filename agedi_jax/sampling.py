"""Sampling structures from a trained model: templates → compiled reverse diffusion →
``ase.Atoms``.

Three ways to say what to generate (paper Sec. III):

* ``n_atoms``: only the number of atoms — positions and types are generated (joint model);
* ``compositions``: formulas such as ``"Pt13"`` — types fixed, positions generated;
* ``templates``: ``ase.Atoms`` with cell and pbc (2D materials) and optionally fixed atoms
  (ASE ``FixAtoms``), which keep their positions and types (inpainting).

Options: a label and guidance weight ``w`` (classifier-free guidance, Eq. 19), type
interpolation between two elements (Eq. 20), the samplers of :mod:`agedi_jax.samplers`,
the step count and a seed. Templates are processed in batches of ``sample.batch_size``
structures, all padded to one bucket, so the sampler compiles once per call.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from . import samplers
from .batching import common_bucket
from .checkpoint import CheckpointError, load_config_and_vocab, restore_state
from .config import Config, config_hash, override
from .graph import MASK, AtomsBatch, StructureError, atoms_from_batch, collate, encode_structures
from .model import DiffusionModel, build_model, init_state


def checkpoint_dir(path: str | os.PathLike) -> Path:
    """``RUN`` → ``RUN/checkpoints/best`` (else ``latest``); a checkpoint directory as is."""
    path = Path(path)
    if (path / "meta.json").is_file():
        return path
    for name in ("best", "latest"):
        if (path / "checkpoints" / name / "meta.json").is_file():
            return path / "checkpoints" / name
    if not path.exists():
        raise CheckpointError(f"checkpoint path {path} does not exist")
    raise CheckpointError(f"no checkpoint in {path} (expected meta.json, or checkpoints/best|latest)")


def _dummy_batch(model: DiffusionModel) -> AtomsBatch:
    from ase import Atoms

    symbol = model.vocab.symbols[0]
    atoms = Atoms([symbol] * 2, positions=[[0, 0, 0], [1.5, 0, 0]])
    return collate(encode_structures([atoms], model.vocab, model.config.model.cutoff))


def load_model(
    path: str | os.PathLike, overrides: Sequence[str] = (), use_ema: bool = True
) -> tuple[DiffusionModel, Any, Config]:
    """Load a model and its parameters from a run directory or checkpoint.

    ``overrides`` may change the ``sample`` section only (``sample.steps=100``); the model
    and processes are those the checkpoint was trained with.
    """
    ckpt = checkpoint_dir(path)
    config, vocab, meta = load_config_and_vocab(ckpt)
    for item in overrides:
        if not item.split("=", 1)[0].strip().startswith("sample."):
            raise ValueError(f"when sampling only sample.* fields can be overridden, not {item!r}")
    config = override(config, overrides)
    model = build_model(config, vocab)
    target = jax.eval_shape(lambda: init_state(model, jax.random.PRNGKey(0), _dummy_batch(model)))
    state = restore_state(ckpt, target)
    params = state.ema_params if use_ema else state.params
    return model, params, config


# --------------------------------------------------------------------------------------
# Templates
# --------------------------------------------------------------------------------------


def _as_list(x, n: int | None = None) -> list:
    if x is None:
        return []
    if isinstance(x, (str, int, np.integer)) or hasattr(x, "get_chemical_symbols"):
        return [x]
    return list(x)


def make_templates(
    model: DiffusionModel,
    *,
    n_atoms: int | Sequence[int] | None = None,
    compositions: str | Sequence[str] | None = None,
    templates: Any = None,
    num_samples: int | None = None,
    generate_types: bool | None = None,
) -> tuple[list, list[bool]]:
    """Template structures and, per template, whether its free atoms' types are generated.

    ``num_samples`` copies of each size / composition / template (default 1 per template,
    ``sample.batch_size`` per size or composition)."""
    from ase import Atoms

    sizes = [int(x) for x in _as_list(n_atoms)]
    formulas = [str(x) for x in _as_list(compositions)]
    tmpl = _as_list(templates)
    given = sum(bool(x) for x in (sizes, formulas, tmpl))
    if given != 1:
        raise ValueError("give exactly one of n_atoms, compositions or templates")
    out: list = []
    gen: list[bool] = []
    max_atoms = model.config.data.max_atoms
    placeholder = model.vocab.symbols[0]
    if sizes:
        if not model.config.model.types:
            raise ValueError(
                "this model does not generate atomic types (model.types is off): give compositions or templates"
            )
        reps = num_samples or model.config.sample.batch_size
        for n in sizes:
            if n < 1:
                raise ValueError(f"n_atoms must be >= 1, got {n}")
            if n > max_atoms:
                raise StructureError(
                    f"{n} atoms is more than the model's configured maximum of {max_atoms} atoms per structure"
                )
            out += [Atoms([placeholder] * n, positions=np.zeros((n, 3))) for _ in range(reps)]
            gen += [True] * reps
    elif formulas:
        reps = num_samples or model.config.sample.batch_size
        for f in formulas:
            try:
                atoms = Atoms(f)
            except Exception:
                raise ValueError(f"composition {f!r} is not a chemical formula") from None
            out += [atoms.copy() for _ in range(reps)]
            gen += [False] * reps
    else:
        reps = num_samples or 1
        for a in tmpl:
            out += [a.copy() for _ in range(reps)]
            gen += [bool(generate_types) and model.config.model.types] * reps
    if generate_types is not None and not tmpl:
        gen = [bool(generate_types) and model.config.model.types] * len(out)
    return out, gen


# --------------------------------------------------------------------------------------
# Sampler assembly
# --------------------------------------------------------------------------------------


def make_step(model: DiffusionModel, config: Config | None = None):
    """The step function of the configured samplers (positions, types or joint)."""
    s = (config or model.config).sample
    pos = typ = None
    if model.sde is not None:
        if s.sampler == "em":
            pos = samplers.euler_maruyama(model.sde)
        elif s.sampler == "pc":
            pos = samplers.predictor_corrector(model.sde, s.snr, s.corrector_steps)
        else:
            pos = samplers.heun_ode(model.sde)
    if model.process is not None:
        typ = samplers.tau_leaping(model.process) if s.type_sampler == "tau" else samplers.analytic(model.process)
    if pos is not None and typ is not None:
        return samplers.joint(pos, typ)
    return pos if pos is not None else typ


_SAMPLERS: dict = {}


def make_sampler(
    model: DiffusionModel,
    *,
    guided: bool = False,
    interpolate: tuple[int, int] | None = None,
    config: Config | None = None,
):
    """A jitted ``run(params, key, template_batch, generate_types[g], w) -> AtomsBatch`` for
    the configured sampler: prior → ``lax.scan`` over the time grid → final step (resolve
    MASK, Tweedie denoising). With ``guided`` the score is classifier-free guided with the
    weight ``w`` (a traced scalar: every w shares one compilation). Cached per (model,
    guided, interpolation, config): compiles once per bucket."""
    cfg = config or model.config
    from .model import compute_key

    # the seed and batch size do not change the compiled code (the bucket is a jit shape)
    sample_key = dataclasses.replace(cfg.sample, seed=0, batch_size=1)
    cache_key = (compute_key(model), guided, interpolate, sample_key, cfg.process)
    if cache_key not in _SAMPLERS:
        if len(_SAMPLERS) > 16:
            _SAMPLERS.clear()
        _SAMPLERS[cache_key] = _build_sampler(model, guided, interpolate, cfg)
    return _SAMPLERS[cache_key]


def _build_sampler(model: DiffusionModel, guided: bool, interpolate, cfg: Config):
    step = make_step(model, cfg)
    grid = samplers.time_grid(cfg.sample.steps, cfg.process.t_eps, cfg.sample.grid)
    final = samplers.finalize(model.sde if cfg.sample.denoise else None, resolve_types=model.process is not None)

    def run(params, key, template: AtomsBatch, generate_types: jax.Array, w: jax.Array) -> AtomsBatch:
        score_fn = model.score_fn(params)
        if interpolate is not None:
            score_fn = samplers.interpolated(score_fn, interpolate[0], interpolate[1], model.num_types)
        if guided:
            score_fn = samplers.guided(score_fn, w)
        state = samplers.prior_state(jax.random.fold_in(key, 0), template, model.sde, mask_types=False)
        free = jnp.asarray(state.node_mask) & ~jnp.asarray(state.fixed)
        types = jnp.where(free & generate_types[state.graph_index], MASK, state.types)
        state = state._replace(types=types.astype(state.types.dtype))
        return samplers.sample(jax.random.fold_in(key, 1), state, score_fn, step, grid, final)

    return jax.jit(run)


def sample_atoms(
    model: DiffusionModel,
    params: Any,
    *,
    n_atoms: int | Sequence[int] | None = None,
    compositions: str | Sequence[str] | None = None,
    templates: Any = None,
    num_samples: int | None = None,
    generate_types: bool | None = None,
    label: int | Sequence[int] | None = None,
    guidance: float | None = None,
    interpolate: tuple[str, str] | None = None,
    sampler: str | None = None,
    type_sampler: str | None = None,
    steps: int | None = None,
    seed: int | None = None,
    batch_size: int | None = None,
    progress: bool = False,
) -> list:
    """Generate structures; returns ``list[ase.Atoms]`` (info: seed, label, guidance,
    interpolation, sampler, steps, config hash, index).

    Args:
      model, params: from :func:`load_model` or training.
      n_atoms / compositions / templates: what to generate (module docstring).
      num_samples: copies per size / composition / template.
      generate_types: for templates, generate the free atoms' types (default: keep them).
      label: condition label(s) per structure (e.g. layer group); None = the template's
        ``info['label']`` if present, else unconditional (null label).
      guidance: CFG weight w (Eq. 19); default ``sample.guidance``. Only used with labels.
      interpolate: two element symbols, e.g. ``("Pt", "Cu")`` (Eq. 20).
      sampler, type_sampler, steps, seed, batch_size: override the ``sample`` config.
    """
    req = prepare_request(
        model, n_atoms=n_atoms, compositions=compositions, templates=templates, num_samples=num_samples,
        generate_types=generate_types, label=label, guidance=guidance, interpolate=interpolate,
        sampler=sampler, type_sampler=type_sampler, steps=steps, seed=seed, batch_size=batch_size,
    )
    s = req.config.sample
    n = len(req.structures)
    chunks = [list(range(i, min(i + s.batch_size, n))) for i in range(0, n, s.batch_size)]
    bucket = common_bucket([[req.encoded[i] for i in c] for c in chunks])
    run = make_sampler(model, guided=req.guided, interpolate=req.interpolate, config=req.config)
    root = jax.random.PRNGKey(s.seed)
    out: list = []
    it = chunks
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(chunks, desc="sample", unit="batch", dynamic_ncols=True)
    for ci, chunk in enumerate(it):
        batch = collate([req.encoded[i] for i in chunk], bucket)
        if model.sde is not None:
            from .sde import check_batch

            check_batch(model.sde, batch)  # VP on a periodic template: clear error, not NaN
        gen_mask = np.zeros(bucket.n_graph, bool)
        gen_mask[: len(chunk)] = [req.generate[i] for i in chunk]
        result = run(params, jax.random.fold_in(root, ci), batch, jnp.asarray(gen_mask), jnp.float32(req.w))
        out += req.to_atoms(model, jax.device_get(result), chunk)
    return out


class SampleRequest(NamedTuple):
    """What :func:`sample_atoms` (and :func:`agedi_jax.parallel.sample_sharded`) generate:
    the resolved config, the templates, and per template whether its types are generated,
    its label and its encoding."""

    config: Config
    structures: list
    generate: list
    labels: list
    w: float
    guided: bool
    interpolate: tuple[int, int] | None
    interpolate_names: tuple[str, str] | None
    encoded: list

    def frame_info(self, model: DiffusionModel, i: int) -> dict:
        """``atoms.info`` of generated structure ``i``."""
        s = self.config.sample
        d = {
            "seed": s.seed,
            "index": i,
            "label": int(self.labels[i]),
            "guidance": self.w if self.guided else (1.0 if int(self.labels[i]) else 0.0),
            "sampler": s.sampler,
            "type_sampler": s.type_sampler,
            "steps": s.steps,
            "config_hash": config_hash(model.config),  # the model; sampling settings are above
        }
        if self.interpolate_names is not None:
            d["interpolate"] = f"{self.interpolate_names[0]}:{self.interpolate_names[1]}"
        return d

    def to_atoms(self, model: DiffusionModel, result: AtomsBatch, indices: Sequence[int]) -> list:
        """The real graphs of a sampled batch (host arrays) as ``ase.Atoms`` of templates
        ``indices`` (in order)."""
        info = [self.frame_info(model, i) for i in indices]
        atoms = atoms_from_batch(result, model.vocab, info=info, label_key=None)
        for a, i in zip(atoms, indices):
            src = self.structures[i]
            if not a.pbc.any() and src.pbc.any():
                a.cell = src.cell
        return atoms


def prepare_request(
    model: DiffusionModel,
    *,
    n_atoms=None,
    compositions=None,
    templates=None,
    num_samples: int | None = None,
    generate_types: bool | None = None,
    label=None,
    guidance: float | None = None,
    interpolate: tuple[str, str] | None = None,
    sampler: str | None = None,
    type_sampler: str | None = None,
    steps: int | None = None,
    seed: int | None = None,
    batch_size: int | None = None,
) -> SampleRequest:
    """Validate a sampling request on the host (arguments of :func:`sample_atoms`)."""
    updates = {
        k: v
        for k, v in dict(sampler=sampler, type_sampler=type_sampler, steps=steps, seed=seed, batch_size=batch_size).items()
        if v is not None
    }
    cfg = model.config
    if updates:
        from .config import replace

        cfg = replace(cfg, sample=updates)
    structures, gen = make_templates(
        model, n_atoms=n_atoms, compositions=compositions, templates=templates,
        num_samples=num_samples, generate_types=generate_types,
    )
    n = len(structures)
    labels = [int(x) for x in _as_list(label)]
    if len(labels) == 1:
        labels = labels * n
    elif not labels:
        labels = [int(a.info.get("label", 0)) for a in structures]
    if len(labels) != n:
        raise ValueError(f"{len(labels)} labels for {n} structures")
    num_labels = cfg.model.num_labels
    for lab in labels:
        if not 0 <= lab <= num_labels:
            raise ValueError(
                f"label {lab} out of range: this model has labels 1..{num_labels} (0 = unconditional)"
                if num_labels
                else f"label {lab} given but this model is unconditional (model.num_labels = 0)"
            )
    w = cfg.sample.guidance if guidance is None else float(guidance)
    # Guidance needs labels; w = 1 (purely conditional) skips the second network call unless
    # a weight was asked for explicitly.
    guided = num_labels > 0 and any(labels) and (guidance is not None or w != 1.0)
    interp = names = None
    if interpolate is not None:
        if model.process is None:
            raise ValueError("type interpolation needs a model of atomic types (model.types is on)")
        names = (str(interpolate[0]), str(interpolate[1]))
        interp = (model.vocab.index(names[0]), model.vocab.index(names[1]))
        gen = [True] * n
    encoded = encode_structures(structures, model.vocab, cfg.model.cutoff, labels=labels, max_atoms=cfg.data.max_atoms)
    return SampleRequest(cfg, structures, gen, labels, w, guided, interp, names, encoded)


def write_extxyz(path: str | os.PathLike, structures: Sequence[Any], config: Config) -> Path:
    """Write structures as extended XYZ and the resolved config beside it
    (``PATH.config.json``)."""
    from ase.io import write

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp, list(structures), format="extxyz")
    os.replace(tmp, path)
    meta = {"config": config.to_dict(), "config_hash": config_hash(config), "num_structures": len(structures)}
    (path.with_name(path.name + ".config.json")).write_text(json.dumps(meta, indent=2, sort_keys=True))
    return path
