"""Generating structures from a trained model: templates → compiled reverse diffusion →
``ase.Atoms``, on one device or data-parallel over a mesh.

Three ways to say what to generate (paper Sec. III):

* ``n_atoms``: only the number of atoms — positions and types are generated (joint model);
* ``compositions``: formulas such as ``"Pt13"`` — types fixed, positions generated;
* ``templates``: ``ase.Atoms`` with cell and pbc (2D materials) and optionally fixed atoms
  (ASE ``FixAtoms``), which keep their positions and types (inpainting).

Options: a label and guidance weight ``w`` (classifier-free guidance, Eq. 19), type
interpolation between two elements (Eq. 20), the samplers of :mod:`agedi_jax.samplers`,
the step count and a seed. Templates are processed in batches of ``sample.batch_size``
structures, all padded to one bucket, so the sampler compiles once per call. With
``mesh=`` every batch is split into shards over the mesh's devices
(:mod:`agedi_jax.parallel`); the structures are those of the one-device call.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from agedi_jax import samplers
from agedi_jax.batch import (
    AtomsBatch,
    Bucket,
    StructureError,
    bucket_for,
    collate,
    common_bucket,
)
from agedi_jax.config import Config, config_hash
from agedi_jax.convert import atoms_from_batch, encode_structures
from agedi_jax.model import DiffusionModel, compiled
from agedi_jax.sde import check_batch
from agedi_jax.vocab import MASK

__all__ = [
    "make_templates",
    "SampleRequest",
    "prepare_request",
    "make_sampler",
    "sample_atoms",
]


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
# The compiled sampler
# --------------------------------------------------------------------------------------


def make_sampler(
    model: DiffusionModel,
    *,
    guided: bool = False,
    interpolate: tuple[int, int] | None = None,
    config: Config | None = None,
    mesh: Any = None,
):
    """A jitted ``run(params, key, template_batch, generate_types[g], w) -> AtomsBatch`` for
    the configured sampler: prior → ``lax.scan`` over the time grid → final step (resolve
    MASK, Tweedie denoising). With ``guided`` the score is classifier-free guided with the
    weight ``w`` (a traced scalar: every w shares one compilation). With a ``mesh`` the
    template and ``generate_types`` are stacked (a leading shard axis over its devices) and
    every device samples its shards with the same key (randomness is keyed by global graph
    slot). Cached per (model, guided, interpolation, sampler settings, mesh): compiles once
    per bucket."""
    cfg = config or model.config
    # the seed and batch size do not change the compiled code (the bucket is a jit shape)
    sample_key = dataclasses.replace(cfg.sample, seed=0, batch_size=1)
    return compiled(
        "sample", model, lambda: _build_sampler(model, guided, interpolate, cfg, mesh),
        guided, interpolate, sample_key, cfg.process, mesh,
    )


def _build_sampler(model: DiffusionModel, guided: bool, interpolate, cfg: Config, mesh: Any):
    step = samplers.make_step(model.sde, model.process, cfg.sample)
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

    if mesh is None:
        return jax.jit(run)
    from agedi_jax import parallel

    sharded = parallel.shard_parallel(run, mesh, stacked=(False, False, True, True, False))

    def run_sharded(params, key, template: AtomsBatch, generate_types: jax.Array, w: jax.Array) -> AtomsBatch:
        parallel.check_stacked(template, mesh, "sharded sampler")
        if tuple(generate_types.shape) != tuple(template.cell.shape[:2]):
            raise ValueError(
                f"sharded sampler: generate_types of shape {tuple(generate_types.shape)}, "
                f"expected {tuple(template.cell.shape[:2])} (shards, graph slots)"
            )
        return sharded(params, key, template, generate_types, jnp.asarray(w, jnp.float32))

    return jax.jit(run_sharded)


# --------------------------------------------------------------------------------------
# sample_atoms
# --------------------------------------------------------------------------------------


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
    mesh: Any = None,
    shards_per_device: int = 1,
) -> list:
    """Generate structures; returns ``list[ase.Atoms]`` (info: seed, label, guidance,
    interpolation, sampler, steps, config hash, index).

    Args:
      model, params: from :func:`agedi_jax.checkpoint.load_model` or training.
      n_atoms / compositions / templates: what to generate (module docstring).
      num_samples: copies per size / composition / template.
      generate_types: for templates, generate the free atoms' types (default: keep them).
      label: condition label(s) per structure (e.g. layer group); None = the template's
        ``info['label']`` if present, else unconditional (null label).
      guidance: CFG weight w (Eq. 19); default ``sample.guidance``. Only used with labels.
      interpolate: two element symbols, e.g. ``("Pt", "Cu")`` (Eq. 20).
      sampler, type_sampler, steps, seed, batch_size: override the ``sample`` config.
      progress: show a progress bar.
      mesh: a device mesh (:func:`agedi_jax.parallel.make_mesh`): every batch is split
        into ``mesh.size × shards_per_device`` contiguous shards, one block per device
        (a shard may be empty), all in one bucket. Same ``seed`` and ``batch_size`` give
        the structures of the one-device call (up to rounding).
    """
    req = prepare_request(
        model, n_atoms=n_atoms, compositions=compositions, templates=templates, num_samples=num_samples,
        generate_types=generate_types, label=label, guidance=guidance, interpolate=interpolate,
        sampler=sampler, type_sampler=type_sampler, steps=steps, seed=seed, batch_size=batch_size,
    )
    s = req.config.sample
    n = len(req.structures)
    batches = [list(range(i, min(i + s.batch_size, n))) for i in range(0, n, s.batch_size)]
    if mesh is None:
        bucket = common_bucket([[req.encoded[i] for i in c] for c in batches])
        run_batch = _single_device(model, req, bucket)
    else:
        run_batch = _data_parallel(model, req, batches, mesh, shards_per_device)
    root = jax.random.PRNGKey(s.seed)
    out: list = []
    it = batches
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(batches, desc="sample", unit="batch", dynamic_ncols=True)
    for bi, idx in enumerate(it):
        out += run_batch(params, jax.random.fold_in(root, bi), idx)
    return out


def _single_device(model: DiffusionModel, req: "SampleRequest", bucket: Bucket):
    run = make_sampler(model, guided=req.guided, interpolate=req.interpolate, config=req.config)

    def run_batch(params, key, idx: list[int]) -> list:
        batch = collate([req.encoded[i] for i in idx], bucket)
        if model.sde is not None:
            check_batch(model.sde, batch)  # VP on a periodic template: clear error, not NaN
        gen_mask = np.zeros(bucket.n_graph, bool)
        gen_mask[: len(idx)] = [req.generate[i] for i in idx]
        result = run(params, key, batch, jnp.asarray(gen_mask), jnp.float32(req.w))
        return req.to_atoms(model, jax.device_get(result), idx)

    return run_batch


def _data_parallel(model: DiffusionModel, req: "SampleRequest", batches: list, mesh: Any, shards_per_device: int):
    from agedi_jax import parallel
    from agedi_jax.config import replace

    if int(shards_per_device) < 1:
        raise ValueError(f"sample_atoms: shards_per_device must be >= 1, got {shards_per_device}")
    cfg = req.config
    num_shards = mesh.devices.size * int(shards_per_device)
    parts = {tuple(b): [list(p) for p in np.array_split(np.asarray(b), num_shards)] for b in batches}
    nonempty = [[req.encoded[i] for i in p] for ps in parts.values() for p in ps if p]
    small = common_bucket(nonempty)
    bucket = Bucket(small.n_node, small.n_edge, bucket_for(0, 0, cfg.sample.batch_size).n_graph)
    # seed and batch size do not enter the compiled sampler: keep them out of its cache key
    base = model.config.sample
    compiled_cfg = replace(cfg, sample=dict(seed=base.seed, batch_size=base.batch_size))
    run = make_sampler(model, guided=req.guided, interpolate=req.interpolate, config=compiled_cfg, mesh=mesh)
    mine = parallel.local_shards(mesh, num_shards)
    replicated: dict = {}

    def run_batch(params, key, idx: list[int]) -> list:
        if "params" not in replicated:
            replicated["params"] = parallel.replicate(params, mesh)  # a no-op when they already are
        ps = parts[tuple(idx)]
        stacked = parallel.stack_shards([[req.encoded[i] for i in p] for p in ps], bucket, mine)
        if model.sde is not None:  # VP on a periodic template is an error, not NaN
            for shard in parallel.unstack(stacked):
                check_batch(model.sde, shard)
        gen_mask = np.zeros(bucket.n_graph, bool)
        gen_mask[: len(idx)] = [req.generate[i] for i in idx]
        gen_mask = np.broadcast_to(gen_mask, (len(mine), bucket.n_graph)).copy()
        result = run(
            replicated["params"], key, parallel.shard_batch(stacked, mesh, num_shards),
            jax.make_array_from_process_local_data(parallel.data_sharding(mesh), gen_mask, (num_shards, bucket.n_graph)),
            jnp.float32(req.w),
        )
        out: list = []
        for shard, p in zip(parallel.unstack(parallel.fetch(result)), ps):
            if p:
                out += req.to_atoms(model, shard, p)
        return out

    return run_batch


# --------------------------------------------------------------------------------------
# The request
# --------------------------------------------------------------------------------------


class SampleRequest(NamedTuple):
    """What :func:`sample_atoms` generates:
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
        from agedi_jax.config import replace

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
