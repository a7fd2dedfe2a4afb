"""Generating structures from a trained model: templates → compiled reverse diffusion →
``ase.Atoms``, on one device or data-parallel over a mesh.

Three ways to say what to generate (paper Sec. III):

* ``n_atoms``: only the number of atoms — positions and types are generated (joint model);
* ``compositions``: formulas such as ``"Pt13"`` — types fixed, positions generated;
* ``templates``: ``ase.Atoms`` with cell and pbc (2D materials) and optionally fixed atoms
  (ASE ``FixAtoms``), which keep their positions and types (inpainting);
* ``templates`` with ``formula`` (or ``n_atoms``): new atoms added to every template — a
  substrate slab whose atoms are all held fixed — with the formula's types (or generated
  types), placed by the prior; on a slab (pbc T, T, F) they are confined to a z window
  (``z_window=(lo, hi)``, Å above the topmost template atom; :mod:`agedi_jax.surfaces`).
  The samples keep the template's own constraints and tags (new atoms: free, tag 0).

Options: a label and guidance weight ``w`` (classifier-free guidance, Eq. 19), type
interpolation between two elements (Eq. 20), the samplers of :mod:`agedi_jax.samplers`,
the step count and a seed. Templates are processed in batches of ``sample.batch_size``
structures, all padded to one bucket, so the sampler compiles once per call (once per
network layout: batches of small structures run on the dense per-structure layout,
:class:`LayoutSampler`). With
``mesh=`` every batch is split into shards over the mesh's devices
(:mod:`agedi_jax.parallel`); the structures are those of the one-device call.
"""

from __future__ import annotations

import dataclasses
import inspect
from types import SimpleNamespace
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from agedi_jax import lattice as lattice_lib
from agedi_jax import samplers
from agedi_jax.batch import (
    AtomsBatch,
    Bucket,
    StructureError,
    bucket_for,
    collate,
    common_bucket,
)
from agedi_jax.cache import compiled
from agedi_jax.config import Config, config_hash
from agedi_jax.convert import atoms_from_batch, encode_structures, fixed_mask
from agedi_jax.model import DiffusionModel
from agedi_jax.runtime import release_compiled
from agedi_jax.sde import check_batch
from agedi_jax.vocab import MASK

__all__ = [
    "CompiledSampler",
    "LayoutSampler",
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


def layer_model(model: DiffusionModel) -> bool:
    """Whether a model of the cell (``process.lattice``) generates layers (pbc T, T, F:
    ``process.lattice_layer_c > 0``) rather than bulk crystals."""
    return model.lattice is not None and model.config.process.lattice_layer_c > 0


def _blank(model: DiffusionModel, atoms: Any) -> Any:
    """A copy of ``atoms`` as a sampling template: for a model of the cell
    (``process.lattice``) the prior's centre cell — bulk: ``ℓ_N I``, ``ℓ_N = c N^{1/3}``;
    layers: ``diag(ℓ_N, ℓ_N, c_z)``, ``ℓ_N = c N^{1/2}``, ``c_z`` =
    ``process.lattice_layer_c``, pbc (T, T, F), atoms at ``z = c_z/2`` (the sampler draws
    the cell, the fractional in-plane positions and z around that centre) — else as it is."""
    atoms = atoms.copy()
    if model.lattice is not None:
        n = max(len(atoms), 1)
        if layer_model(model):
            c_z = float(model.config.process.lattice_layer_c)
            ell = model.lattice.scale * n ** 0.5
            atoms.set_cell(np.diag([ell, ell, c_z]))
            atoms.pbc = (True, True, False)
            atoms.positions = np.zeros((len(atoms), 3)) + np.array([0.0, 0.0, 0.5 * c_z])
        else:
            atoms.set_cell(np.eye(3) * model.lattice.scale * n ** (1.0 / 3.0))
            atoms.pbc = True
    return atoms


def make_templates(
    model: DiffusionModel, *, n_atoms: int | Sequence[int] | None = None,
    compositions: str | Sequence[str] | None = None, templates: Any = None, num_samples: int | None = None,
    generate_types: bool | None = None,
) -> tuple[list, list[bool]]:
    """Template structures and, per template, whether its free atoms' types are generated.

    ``num_samples`` copies of each size / composition / template (default 1 per template,
    ``sample.batch_size`` per size or composition)."""
    from ase import Atoms

    if num_samples is not None and (not isinstance(num_samples, (int, np.integer)) or num_samples < 1):
        raise ValueError(f"num_samples must be a whole number >= 1, got {num_samples!r}")
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
        reps = model.config.sample.batch_size if num_samples is None else int(num_samples)
        for n in sizes:
            if n < 1:
                raise ValueError(f"n_atoms must be >= 1, got {n}")
            if n > max_atoms:
                raise StructureError(
                    f"{n} atoms is more than the model's configured maximum of {max_atoms} atoms per structure"
                )
            out += [_blank(model, Atoms([placeholder] * n, positions=np.zeros((n, 3)))) for _ in range(reps)]
            gen += [True] * reps
    elif formulas:
        reps = model.config.sample.batch_size if num_samples is None else int(num_samples)
        for f in formulas:
            try:
                atoms = Atoms(f)
            except Exception:
                raise ValueError(f"composition {f!r} is not a chemical formula") from None
            out += [_blank(model, atoms) for _ in range(reps)]
            gen += [False] * reps
    else:
        reps = 1 if num_samples is None else int(num_samples)
        for k, a in enumerate(tmpl):
            if model.lattice is not None:
                try:
                    dim = lattice_lib.check_cell_layout(a.cell[:], a.pbc, what=f"template {k}")
                except ValueError as err:
                    raise StructureError(str(err)) from None
                want = 2 if layer_model(model) else 3
                if dim != want:
                    kinds = {2: "layers (pbc T, T, F)", 3: "bulk crystals (pbc T, T, T)"}
                    raise StructureError(f"template {k}: this model of the cell generates {kinds[want]}, "
                                         f"got one of the {kinds[dim].split(' (')[0]}")
            out += [a.copy() for _ in range(reps)]
            gen += [bool(generate_types) and model.config.model.types] * reps
    if generate_types is not None and not tmpl:
        gen = [bool(generate_types) and model.config.model.types] * len(out)
    return out, gen


# --------------------------------------------------------------------------------------
# The compiled sampler
# --------------------------------------------------------------------------------------


class CompiledSampler(NamedTuple):
    """The compiled reverse diffusion of a model, in three jitted pieces so that a long
    sample can report its progress between chunks of steps without any host callback
    inside the loop (the chunks give exactly the numbers of one uninterrupted loop):

    * ``start(params, key, template, generate_types[g], w) -> state`` — the prior
      (positions, MASK for generated types);
    * ``advance(params, key, state, i0, i1, w) -> state`` — steps ``i0 .. i1 − 1`` of the
      time grid (traced bounds: every chunk shares one compilation);
    * ``finish(params, key, state, w) -> state`` — resolve MASKs, Tweedie denoising;
    * ``whole`` — all of it in one program (:meth:`lower` for ahead-of-time compilation).

    With a mesh, ``template``, ``generate_types`` and ``state`` are stacked over its
    devices. Calling the object runs all three."""

    start: Any
    advance: Any
    finish: Any
    num_steps: int
    whole: Any = None

    def lower(self, params, key, template, generate_types, w):
        """``jax.jit(...).lower`` of the whole reverse diffusion as ONE compiled program
        (prior, a ``lax.scan`` over every step, final step; same numbers as the chunks) —
        for ahead-of-time compilation and benchmarks: ``run.lower(...).compile()(...)``."""
        return self.whole.lower(params, key, template, generate_types, jnp.float32(w))

    def chunks(self, size: int | None = None) -> list[tuple[int, int]]:
        """``[(i0, i1), ...]`` covering the grid in chunks of ``size`` steps (default: about
        twenty chunks)."""
        size = size or max(1, -(-self.num_steps // 20))
        return [(i, min(i + size, self.num_steps)) for i in range(0, self.num_steps, size)]

    def __call__(self, params, key, template, generate_types, w, *, on_chunk=None, chunk: int | None = None):
        w = jnp.float32(w)
        state = self.start(params, key, template, generate_types, w)
        for i0, i1 in self.chunks(chunk):
            state = self.advance(params, key, state, jnp.int32(i0), jnp.int32(i1), w)
            if on_chunk is not None:
                jax.block_until_ready(state.positions)
                on_chunk(i1 - i0)
        return self.finish(params, key, state, w)


class LayoutSampler:
    """A :class:`CompiledSampler` per network layout, picked from each template batch
    (what :func:`make_sampler` returns for a model that picks its layout per batch,
    :func:`agedi_jax.model.picks_layout`): the dense per-structure layout
    (:mod:`agedi_jax.nn.dense`) for a batch of small structures with a complete edge
    template, else the edge path; one compilation per layout, and a layout compiled
    before that also fits the batch is reused (a smaller last batch of ``sample_atoms``
    runs in the first batch's layout). Same interface as :class:`CompiledSampler`
    (``start``, ``advance``, ``finish`` and ``whole`` dispatch on their batch argument,
    the template or the state); :meth:`for_batch` gives the sampler a batch runs on.
    The samples equal those of the edge path up to float rounding."""

    def __init__(self, model: DiffusionModel, build, num_steps: int):
        from agedi_jax.layouts import PerLayout as _PerLayout

        self._pick = _PerLayout(model, build, batch_arg=2, reuse_ratio=None)
        self.num_steps = num_steps

    @property
    def layouts(self) -> list:
        """The dense layouts compiled so far."""
        return self._pick.layouts

    def for_batch(self, batch: AtomsBatch) -> CompiledSampler:
        """The compiled sampler of a concrete template (or state) batch."""
        return self._pick.for_batch(batch)

    def _dispatch(self, name: str):
        return lambda *args: getattr(self.for_batch(args[2]), name)(*args)

    start = property(lambda self: self._dispatch("start"))
    advance = property(lambda self: self._dispatch("advance"))
    finish = property(lambda self: self._dispatch("finish"))
    whole = property(lambda self: self._dispatch("whole"))
    chunks = CompiledSampler.chunks

    def lower(self, params, key, template, generate_types, w):
        """:meth:`CompiledSampler.lower` of the layout picked for ``template``: the program
        is specialised to that layout (a batch needing more atom slots or rows gets NaN
        there; call the sampler, or :meth:`for_batch`, per batch instead)."""
        return self.for_batch(template).lower(params, key, template, generate_types, w)

    def __call__(self, params, key, template, generate_types, w, **kwargs):
        return self.for_batch(template)(params, key, template, generate_types, w, **kwargs)


def make_sampler(
    model: DiffusionModel,
    *,
    guided: bool = False,
    interpolate: tuple[int, int] | None = None,
    config: Config | None = None,
    mesh: Any = None,
    dense: bool = True,
) -> CompiledSampler | LayoutSampler:
    """The :class:`CompiledSampler` of the configured sampler: prior → the steps of the
    time grid → final step (resolve MASK, Tweedie denoising). With ``guided`` the score is
    classifier-free guided with the weight ``w`` (a traced scalar: every w shares one
    compilation). With a ``mesh`` every device samples its shards with the same key
    (randomness is keyed by global graph slot). Cached per (model, guided, interpolation,
    sampler settings, mesh): compiles once per bucket.

    Without a mesh, a model whose network has the dense per-structure layout
    (:func:`agedi_jax.model.picks_layout`; PaiNN, unless ``model.network_params.dense=false``
    or ``dense=False`` here) gets a :class:`LayoutSampler`: the network's layout is picked
    from every template batch (dense for batches of small structures, several times
    cheaper; samples equal to the edge path's up to float rounding), one compilation per
    layout. With a mesh the sampler stays on the edge path: the layout is chosen on the
    host from an unstacked batch, and the stacked shards of a data-parallel sampler are
    not (the dense layout is not supported under ``shard_map`` yet)."""
    from agedi_jax.layouts import picks_layout

    cfg = config or model.config
    # the seed and batch size do not change the compiled code (the bucket is a jit shape)
    sample_key = dataclasses.replace(cfg.sample, seed=0, batch_size=1)
    if mesh is None and dense and picks_layout(model):
        return compiled(
            "sample_dispatch", model,
            lambda: LayoutSampler(
                model,
                lambda m: make_sampler(m, guided=guided, interpolate=interpolate, config=cfg, dense=False),
                cfg.sample.steps,
            ),
            guided, interpolate, sample_key, cfg.process,
        )
    return compiled(
        "sample", model, lambda: _build_sampler(model, guided, interpolate, cfg, mesh),
        guided, interpolate, sample_key, cfg.process, mesh,
    )


def _build_sampler(model: DiffusionModel, guided: bool, interpolate, cfg: Config, mesh: Any) -> CompiledSampler:
    step = samplers.make_step(model.sde, model.process, cfg.sample, lattice=model.lattice,
                              y_max=cfg.process.lattice_y_max)
    grid = samplers.time_grid(cfg.sample.steps, cfg.process.t_eps, cfg.sample.grid)
    denoise = cfg.sample.denoise and model.lattice is None  # Tweedie's step is Cartesian
    final = samplers.finalize(model.sde if denoise else None, resolve_types=model.process is not None)

    def score(params, w):
        # (score function, step): interpolation, classifier-free and force-field guidance
        return model.sampling_fns(params, cfg, interpolate=interpolate, guided=guided, w=w)

    def start(params, key, template: AtomsBatch, generate_types: jax.Array, w: jax.Array) -> AtomsBatch:
        if model.lattice is None:
            state = samplers.prior_state(jax.random.fold_in(key, 0), template, model.sde, mask_types=False)
        else:  # cell from the density-scaled prior, fractional positions uniform
            state = samplers.prior_state(jax.random.fold_in(key, 0), template, None, mask_types=False)
            state = lattice_lib.crystal_prior_sample(jax.random.fold_in(key, 0), model.lattice, state,
                                                     cfg.process.lattice_y_max, pos_sde=model.sde)
        free = jnp.asarray(state.node_mask) & ~jnp.asarray(state.fixed)
        types = jnp.where(free & generate_types[state.graph_index], MASK, state.types)
        return samplers.sample_start(state._replace(types=types.astype(state.types.dtype)), step)

    def advance(params, key, state: AtomsBatch, i0, i1, w) -> AtomsBatch:
        score_fn, guided_step = score(params, w)
        return samplers.sample_steps(jax.random.fold_in(key, 1), state, score_fn, guided_step, grid, i0, i1)

    def finish(params, key, state: AtomsBatch, w) -> AtomsBatch:
        return samplers.sample_finish(jax.random.fold_in(key, 1), state, score(params, w)[0], grid, final)

    def whole(params, key, template: AtomsBatch, generate_types: jax.Array, w: jax.Array) -> AtomsBatch:
        state = start(params, key, template, generate_types, w)
        score_fn, guided_step = score(params, w)
        state = samplers.sample_steps(jax.random.fold_in(key, 1), state, score_fn, guided_step, grid, 0,
                                      cfg.sample.steps)
        return finish(params, key, state, w)

    if mesh is not None:
        from agedi_jax import parallel

        start = _checked(parallel.shard_parallel(start, mesh, stacked=(False, False, True, True, False)), mesh, 2)
        advance = _checked(parallel.shard_parallel(advance, mesh, stacked=(False, False, True, False, False, False)),
                           mesh, 2)
        finish = _checked(parallel.shard_parallel(finish, mesh, stacked=(False, False, True, False)), mesh, 2)
        whole = _checked(parallel.shard_parallel(whole, mesh, stacked=(False, False, True, True, False)), mesh, 2)
    return CompiledSampler(jax.jit(start), jax.jit(advance), jax.jit(finish), cfg.sample.steps, jax.jit(whole))


def _checked(fn, mesh: Any, index: int):
    """``fn`` with a check that its argument ``index`` is a stacked batch for ``mesh``."""
    from agedi_jax import parallel

    def wrapped(*args):
        parallel.check_stacked(args[index], mesh, "sharded sampler")
        return fn(*args)

    return wrapped


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
    grid: str | None = None,
    seed: int | None = None,
    batch_size: int | None = None,
    energy_guidance: float | None = None,
    guidance_potential: str | None = None,
    guidance_on: str | None = None,
    guidance_zeta: float | None = None,
    formula: str | Sequence[str] | None = None,
    z_window: Any = None,
    z_window_absolute: bool = False,
    progress: bool = False,
    mesh: Any = None,
    shards_per_device: int = 1,
) -> list:
    """Generate structures; returns ``list[ase.Atoms]`` (info: seed, label, guidance,
    interpolation, sampler, steps, grid, config hash, index).

    Args:
      model, params: from :func:`agedi_jax.checkpoint.load_model` or training.
      n_atoms / compositions / templates: what to generate (module docstring).
      num_samples: copies per size / composition / template (≥ 1).
      generate_types: for templates, generate the free atoms' types (default: keep them).
      label: condition label(s) per structure (e.g. layer group); None = the template's
        ``info['label']`` if present, else unconditional (null label).
      guidance: CFG weight w (Eq. 19); default ``sample.guidance``. Only used with labels;
        w = 1 (conditional) and w = 0 (unconditional) cost one network call per step,
        any other w two.
      interpolate: two element symbols, e.g. ``("Pt", "Cu")`` (Eq. 20).
      sampler, type_sampler, steps, grid, seed, batch_size: override the ``sample`` config.
      energy_guidance, guidance_potential, guidance_on, guidance_zeta: force-field guidance
        (override ``sample.*``): the position score plus ``λ(t) F`` with
        ``λ = energy_guidance · (1 − t)^ζ`` (eV⁻¹), F from the learned force field
        (``"model"``, needs ``model.energy_head``) or EMT (``"emt"``), evaluated on the
        noisy state (``"xt"``) or the denoised estimate (``"x0"``)
        (:func:`agedi_jax.samplers.energy_guided`). Each scale value compiles once.
      formula: with ``templates``, the formula(s) of the atoms added to every template
        (e.g. ``"Pt4"``; each template × formula × ``num_samples``, default 1); every
        template atom is held fixed while sampling. ``n_atoms`` with ``templates`` adds
        that many atoms whose types are generated (joint model). Without templates,
        ``formula`` is ``compositions``.
      z_window: ``(lo, hi)`` Å: confine the free atoms of slab templates (pbc T, T, F) to
        this z window, relative to the topmost fixed atom (with ``formula``: the topmost
        template atom) unless ``z_window_absolute``; default: the template's
        ``info[agedi_jax.surfaces.Z_WINDOW_KEY]``, else ``sample.z_window`` of the config
        for slab templates with fixed atoms. Bad windows (empty, outside the cell,
        overlapping the fixed atoms, taller than the model's noise σ(1)) raise ValueError.
      progress: show a progress bar over the sampler's steps (after a "compiling…" line).
      mesh: a device mesh (:func:`agedi_jax.parallel.make_mesh`): every batch is split
        into ``mesh.size × shards_per_device`` contiguous shards, one block per device
        (a shard may be empty), all in one bucket. Same ``seed`` and ``batch_size`` give
        the structures of the one-device call (up to rounding).

    Without a mesh the network's layout is picked per batch (:func:`make_sampler`): the
    dense per-structure layout for batches of small structures (PaiNN; same samples as the
    edge path up to float rounding; ``model.network_params.dense=false`` opts out). With a
    mesh every batch runs on the edge path.

    A process near the kernel's memory-map limit first drops its compiled executables
    (:func:`agedi_jax.runtime.release_compiled`), so that a long notebook session sampling
    many shapes does not die in XLA:CPU's code allocation.
    """
    req = prepare_request(model, **{k: v for k, v in locals().items() if k not in _NOT_REQUEST})
    release_compiled()
    s = req.config.sample
    n = len(req.structures)
    batches = [list(range(i, min(i + s.batch_size, n))) for i in range(0, n, s.batch_size)]
    if mesh is None:
        bucket = common_bucket([[req.encoded[i] for i in c] for c in batches])
        run_batch = _single_device(model, req, bucket)
    else:
        run_batch = _data_parallel(model, req, batches, mesh, shards_per_device)
    root = jax.random.PRNGKey(s.seed)
    report = _SampleProgress(progress, len(batches) * s.steps, n)
    out: list = []
    for bi, idx in enumerate(batches):
        out += run_batch(params, jax.random.fold_in(root, bi), idx, report)
    report.close()
    return out


_NOT_REQUEST = ("model", "params", "progress", "mesh", "shards_per_device")
"""The arguments of :func:`sample_atoms` that are not part of the request."""


class _SampleProgress:
    """"compiling the sampler… X s", then a bar over all sampler steps of all batches."""

    def __init__(self, enabled: bool, total_steps: int, num: int):
        self.enabled, self.total, self.num = enabled, total_steps, num
        self.bar = None
        self.done = 0
        self.t0 = None

    def __call__(self, steps: int) -> None:
        if not self.enabled:
            return
        import sys
        import time

        self.done += steps
        if self.bar is None:
            from tqdm.auto import tqdm

            print(f" {time.perf_counter() - self.t0:.1f} s (compilation and the first {self.done} steps)",
                  file=sys.stderr, flush=True)
            self.bar = tqdm(total=self.total, initial=self.done, unit="step", dynamic_ncols=True,
                            desc=f"sample {self.num} structures")
        else:
            self.bar.update(steps)

    def start(self) -> None:
        if self.enabled and self.t0 is None:
            import sys
            import time

            self.t0 = time.perf_counter()
            print("compiling the sampler…", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _single_device(model: DiffusionModel, req: "SampleRequest", bucket: Bucket):
    run = make_sampler(model, guided=req.guided, interpolate=req.interpolate, config=req.config)

    def run_batch(params, key, idx: list[int], report: _SampleProgress) -> list:
        batch = collate([req.encoded[i] for i in idx], bucket)
        if model.sde is not None:
            check_batch(model.sde, batch)  # VP on a periodic template: clear error, not NaN
        gen_mask = np.zeros(bucket.n_graph, bool)
        gen_mask[: len(idx)] = [req.generate[i] for i in idx]
        report.start()
        result = run(params, key, batch, jnp.asarray(gen_mask), req.w, on_chunk=report if report.enabled else None)
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

    def run_batch(params, key, idx: list[int], report: _SampleProgress) -> list:
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
        report.start()
        result = run(
            replicated["params"], key, parallel.shard_batch(stacked, mesh, num_shards),
            jax.make_array_from_process_local_data(parallel.data_sharding(mesh), gen_mask, (num_shards, bucket.n_graph)),
            req.w, on_chunk=report if report.enabled else None,
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
    windows: list | None = None  # per structure: absolute z window [2] (Å) or None
    origins: list | None = None  # per structure: the template atoms were added to, or None

    def frame_info(self, model: DiffusionModel, i: int) -> dict:
        """``atoms.info`` of generated structure ``i``."""
        s = self.config.sample
        d = {
            "seed": s.seed,
            "index": i,
            "label": int(self.labels[i]),
            "guidance": self.w if int(self.labels[i]) else 0.0,
            "sampler": s.sampler,
            "type_sampler": s.type_sampler,
            "steps": s.steps,
            "grid": s.grid,
            "energy_guidance": s.energy_guidance,
            "config_hash": config_hash(model.config),  # the model; sampling settings are above
        }
        if self.interpolate_names is not None:
            d["interpolate"] = f"{self.interpolate_names[0]}:{self.interpolate_names[1]}"
        if self.windows is not None and self.windows[i] is not None:
            d["sample_z_window"] = [float(v) for v in self.windows[i]]  # absolute z, Å
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
            if self.windows is not None and self.windows[i] is not None:
                # fixed atoms never moved: give them back exactly (float64, unwrapped) as in the template
                held = np.asarray(self.encoded[i].fixed, bool)
                a.positions[held] = np.asarray(src.positions, np.float64)[held]
            origin = None if self.origins is None else self.origins[i]
            if origin is not None:  # the template's own constraints and tags; added atoms free, tag 0
                from ase.constraints import FixAtoms

                n_t = len(origin)
                keep = np.where(fixed_mask(origin))[0]
                a.set_constraint(FixAtoms(indices=keep) if keep.size else None)
                tags = np.zeros(len(a), int)
                tags[:n_t] = origin.get_tags()
                a.set_tags(tags)
        return atoms


def prepare_request(model: DiffusionModel, **request: Any) -> SampleRequest:
    """Validate a sampling request on the host: ``request`` holds keyword arguments of
    :func:`sample_atoms` (all but ``progress``, ``mesh`` and ``shards_per_device``; an
    unknown keyword is a TypeError, as in a call of :func:`sample_atoms`)."""
    bound = inspect.signature(sample_atoms).bind(model, None, **request)
    bound.apply_defaults()
    r = SimpleNamespace(**bound.arguments)
    overrides = ("sampler", "type_sampler", "steps", "grid", "seed", "batch_size", "energy_guidance",
                 "guidance_potential", "guidance_on", "guidance_zeta")  # fields of the ``sample`` config
    updates = {k: getattr(r, k) for k in overrides if getattr(r, k) is not None}
    cfg = model.config
    if updates:
        from agedi_jax.config import replace

        cfg = replace(cfg, sample=updates)
    formulas = [str(x) for x in _as_list(r.formula)]
    if formulas and _as_list(r.compositions):
        raise ValueError("give formula or compositions, not both")
    tmpl = _as_list(r.templates)
    adding = bool(tmpl) and bool(formulas or _as_list(r.compositions) or _as_list(r.n_atoms))
    if adding and model.lattice is not None:
        raise ValueError("adding atoms to templates is not available for a model of the cell (process.lattice)")
    origins = fixed = None
    if adding:
        structures, gen, fixed, origins, abs_windows = _added_atoms(
            model, cfg, tmpl, r.n_atoms, formulas or [str(x) for x in _as_list(r.compositions)], r.num_samples,
            r.z_window, r.z_window_absolute,
        )
    else:
        structures, gen = make_templates(
            model, n_atoms=r.n_atoms, compositions=formulas or r.compositions, templates=r.templates,
            num_samples=r.num_samples, generate_types=r.generate_types,
        )
        abs_windows = _template_windows(cfg, structures, r.z_window, r.z_window_absolute, bool(tmpl))
    _check_windows(model, abs_windows)
    n = len(structures)
    labels = [int(x) for x in _as_list(r.label)]
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
    w = cfg.sample.guidance if r.guidance is None else float(r.guidance)
    if not np.isfinite(w):
        raise ValueError(f"guidance weight must be a finite number, got {w}")
    # Guidance needs labels. w = 1 is the conditional score and w = 0 the unconditional one
    # (Eq. 19): one network call per step; any other w needs both calls.
    conditional = num_labels > 0 and any(labels)
    guided = conditional and w not in (0.0, 1.0)
    net_labels = [0] * n if conditional and w == 0.0 else labels
    interp = names = None
    if r.interpolate is not None:
        if model.process is None:
            raise ValueError("type interpolation needs a model of atomic types (model.types is on)")
        names = (str(r.interpolate[0]), str(r.interpolate[1]))
        interp = (model.vocab.index(names[0]), model.vocab.index(names[1]))
        gen = [True] * n
    windowed = any(x is not None for x in abs_windows)
    image_cells = None
    if model.lattice is not None:  # r.templates hold every image the moving cell can need
        image_cells = [lattice_lib.template_cell(model.lattice.scale, len(a), a.pbc, cfg.process.lattice_y_max)
                       for a in structures]
    encoded = encode_structures(
        structures, model.vocab, cfg.model.cutoff, labels=net_labels, max_atoms=cfg.data.max_atoms, fixed=fixed,
        z_window=abs_windows if windowed else None, z_window_relative=False, check_window=False,
        image_cells=image_cells,
    )
    if windowed:  # exact: pairs of fixed atoms beyond the cutoff never enter the network (nor EMT)
        from agedi_jax.surfaces import prune_fixed_pairs

        cut = cfg.model.cutoff
        if cfg.sample.energy_guidance > 0 and cfg.sample.guidance_potential == "emt":
            from agedi_jax.potentials.emt import emt_constants

            cut = max(cut, float(emt_constants().rc_list))
        encoded = [prune_fixed_pairs(e, cut) if e.z_window is not None else e for e in encoded]
    return SampleRequest(cfg, structures, gen, labels, w, guided, interp, names, encoded,
                         abs_windows if windowed else None, origins)


def _window_spec(explicit: Any, atoms: Any, cfg: Config, fixed: np.ndarray) -> tuple[Any, bool]:
    """The window asked for a template (explicit > ``info[Z_WINDOW_KEY]`` > the config's
    ``sample.z_window`` for slabs with fixed atoms) and whether it is the explicit one."""
    from agedi_jax.surfaces import Z_WINDOW_KEY, parse_z_window

    if explicit is not None:
        return explicit, True
    if atoms.info.get(Z_WINDOW_KEY) is not None:
        return parse_z_window(atoms.info[Z_WINDOW_KEY]), False
    if cfg.sample.z_window and list(np.asarray(atoms.pbc, bool)) == [True, True, False] and fixed.any():
        return parse_z_window(cfg.sample.z_window), False
    return None, False


def _template_windows(cfg: Config, structures: list, z_window: Any, absolute: bool, templates: bool) -> list:
    """Absolute z windows (or None) of plain templates (their FixAtoms atoms fixed)."""
    from agedi_jax.surfaces import parse_z_window, resolve_z_window

    explicit = parse_z_window(z_window)
    if not templates:
        if explicit is not None:
            raise ValueError("a z window needs templates: give the slab(s) to generate on (templates=, --template)")
        return [None] * len(structures)
    out = []
    for k, atoms in enumerate(structures):
        f = fixed_mask(atoms)
        spec, given = _window_spec(explicit, atoms, cfg, f)
        rel = not (given and absolute)
        out.append(None if spec is None else resolve_z_window(atoms, spec, f, relative=rel, check_free=False, k=k))
    return out


def _added_atoms(model: DiffusionModel, cfg: Config, templates: list, n_atoms, formulas: list, num_samples,
                 z_window: Any, absolute: bool):
    """Templates with atoms added (:func:`agedi_jax.surfaces.add_atoms`): structures, whether
    their types are generated, fixed masks (every template atom), the original templates
    and the absolute windows, one per (template, addition, copy)."""
    from ase import Atoms

    from agedi_jax.surfaces import add_atoms, parse_z_window, resolve_z_window

    if num_samples is not None and (not isinstance(num_samples, (int, np.integer)) or num_samples < 1):
        raise ValueError(f"num_samples must be a whole number >= 1, got {num_samples!r}")
    reps = 1 if num_samples is None else int(num_samples)
    additions = []
    for nn in [int(x) for x in _as_list(n_atoms)]:
        if not model.config.model.types:
            raise ValueError(
                "this model does not generate atomic types (model.types is off): give the added atoms' formula"
            )
        if nn < 1:
            raise ValueError(f"n_atoms must be >= 1, got {nn}")
        additions.append((Atoms([model.vocab.symbols[0]] * nn), True))
    for f in formulas:
        try:
            add = Atoms(f)
        except Exception:
            raise ValueError(f"formula {f!r} is not a chemical formula") from None
        if len(add) == 0:
            raise ValueError(f"formula {f!r} has no atoms")
        additions.append((add, False))
    explicit = parse_z_window(z_window)
    out, gen, fixed, origins, windows = [], [], [], [], []
    for k, t in enumerate(templates):
        if len(t) == 0:
            raise StructureError(f"template {k} is empty: nothing to add atoms to")
        all_fixed = np.ones(len(t), bool)
        spec, given = _window_spec(explicit, t, cfg, all_fixed)
        slab = list(np.asarray(t.pbc, bool)) == [True, True, False]
        if spec is None and slab:
            raise ValueError(
                f"template {k} is a slab (pbc T, T, F): atoms added to it need a z window "
                "(z_window=(lo, hi) Å above the topmost template atom; --z-window LO HI)"
            )
        rel = not (given and absolute)
        window = None if spec is None else resolve_z_window(t, spec, all_fixed, relative=rel, check_free=False, k=k)
        for add, g in additions:
            structure, f = add_atoms(t, add, window)
            for _ in range(reps):
                out.append(structure.copy())
                gen.append(g)
                fixed.append(f)
                origins.append(t)
                windows.append(window)
    return out, gen, fixed, origins, windows


def _check_windows(model: DiffusionModel, windows: list) -> None:
    """A window needs a model of positions whose noise σ(1) is at least the window's
    height (else its prior, uniform in the window, is far from the noised data)."""
    heights = [float(w[1] - w[0]) for w in windows if w is not None]
    if not heights:
        return
    if model.lattice is not None:
        raise ValueError("a z window is not available for a model of the cell (process.lattice)")
    if model.sde is None:
        raise ValueError("a z window confines positions, but this model does not generate them (model.positions is off)")
    reach = float(model.sde.prior_std)
    if max(heights) > reach:
        raise ValueError(
            f"the z window is {max(heights):.2f} Å tall but this model's noise reaches only σ(1) = {reach:.2f} Å: "
            "its prior, uniform in the window, would not match the noised data; use a window at most "
            f"{reach:.2f} Å tall (or a model trained with a larger process.sigma_max)"
        )
