"""Typed, frozen configuration: data, model, processes, training, sampling.

Every field can be overridden from the command line with ``--set section.field=value``
(e.g. ``--set model.num_layers=4 --set train.steps=500``), so ablation scripts can sweep
them. The resolved config is saved (as JSON) with every checkpoint and every output file;
:func:`config_hash` identifies it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from typing import Any, Mapping, Sequence


class Params(tuple):
    """A frozen, hashable mapping of parameter names to numbers (or bools/strings) for the
    plug-ins' own settings (``process.schedule_params``, ``process.type_schedule_params``,
    ``model.network_params``). Written as a JSON object; from the command line either
    ``--set process.schedule_params=s=0.01,alpha_max=12`` or one key at a time,
    ``--set process.schedule_params.s=0.01``."""

    def __new__(cls, items: Any = ()) -> "Params":
        if isinstance(items, str):
            items = _parse_params(items)
        if isinstance(items, Mapping):
            items = items.items()
        pairs = {}
        for k, v in items:
            pairs[str(k)] = v
        return super().__new__(cls, tuple(sorted(pairs.items())))

    def as_dict(self) -> dict:
        return dict(self)

    def updated(self, **kwargs: Any) -> "Params":
        return Params({**dict(self), **kwargs})

    def __repr__(self) -> str:
        return f"Params({dict(self)!r})"


def _scalar(text: str) -> Any:
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text.strip()


def _parse_params(text: str) -> dict:
    text = text.strip()
    if not text:
        return {}
    if text.startswith("{"):
        try:
            return dict(json.loads(text))
        except (json.JSONDecodeError, TypeError, ValueError):
            raise ValueError(f"parameters {text!r}: not a JSON object") from None
    out = {}
    for part in text.split(","):
        if "=" not in part:
            raise ValueError(f"parameters {text!r}: expected name=value pairs separated by commas")
        k, v = part.split("=", 1)
        out[k.strip()] = _scalar(v)
    return out


def _params_fields(obj: Any) -> None:
    """Turn dict / str values of ``Params`` fields into :class:`Params` (frozen dataclasses)."""
    for f in dataclasses.fields(obj):
        if f.type in ("Params", Params):
            v = getattr(obj, f.name)
            if not isinstance(v, Params):
                object.__setattr__(obj, f.name, Params(v if v is not None else ()))


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the training structures come from and how they are padded.

    Attributes:
      dataset: a spec for :func:`agedi_jax.data.load_dataset` ("builtin", a QCD directory,
        "qcd:PATH:gm", a C2DB csv / ase db, a bulk CSV, an extxyz file); a path inside the
        shared data directory is written ``$AGEDI_JAX_DATA/...`` (training stores it so).
      subset: optional subset name passed to the loader (QCD: "gm", "de200").
      max_atoms: the configured padding: the largest structure a model accepts.
      val_fraction: fraction of structures held out for validation.
      split_seed: seed of the deterministic train/validation split.
      label: name of the per-structure label (``atoms.info`` key or loader label, e.g.
        "layer_group"); "" for an unconditional model.
      elements: comma-separated chemical symbols to restrict the data to ("" = all).
    """

    dataset: str = "builtin"
    subset: str = ""
    max_atoms: int = 64
    val_fraction: float = 0.1
    split_seed: int = 0
    label: str = ""
    elements: str = ""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The score network (see :mod:`agedi_jax.nn`).

    Attributes:
      network: "nequip" (default, e3nn-jax) or "painn" (the paper's).
      features: scalar channels per atom.
      vector_features: vector (l ≥ 1) channels per atom (NequIP).
      num_layers: interaction blocks.
      l_max: largest spherical-harmonic order (NequIP).
      num_basis: Bessel radial basis functions.
      cutoff: neighbour cutoff, Å.
      avg_num_neighbors: message normalisation; 0 = computed from the training data.
      edges_per_atom: 0 = the network runs on the whole edge template. > 0: only the edges
        inside the cutoff are kept, in ``ceil(edges_per_atom · atom slots)`` edge slots per
        batch (:func:`agedi_jax.edges.compact_edges`) — for a diffusing cell, whose template
        holds every image the most compressed allowed cell could bring within the cutoff
        (tens of times the real edges). Graphs whose real edges do not fit are left out of
        the loss (the training log's ``edges_complete`` is the fraction that fit); in
        sampling such a graph runs on the edges that fit — pick a budget that keeps
        ``edges_complete`` at 1 in training (the noised states are the sampler's).
      num_labels: size of the label vocabulary (labels 1..num_labels, 0 = null); 0 = none.
        The label embedding has ``features`` dimensions (the paper: 64).
      global_context: per-graph pooled context and log N in every layer (lets isolated
        atoms at high noise agree on the element and size).
      com_vector: input vectors towards the centre of mass along non-periodic axes.
      normalize: equivariant layer normalisation (stability).
      positions: model atomic positions (position head and position process on).
      types: model atomic types (type head and absorbing type process on).
      network_params: further fields of the network class (e.g. ``envelope_p``,
        ``radial_hidden``), for settings that only one network has. Every field above that
        the network class has is passed to it by name.
      energy_head: learn a force field next to the score (:mod:`agedi_jax.forcefield`): a
        per-atom energy read out at t = 0 on the clean structure, forces ``−∂E/∂R``,
        trained on the data's energies and forces (``train.lambda_energy``,
        ``train.lambda_forces``).
      energy_network: "shared" (the energy head reads the score network's own final
        invariant features) or "separate" (a second network of the same family and
        size, with only an energy head).
      energy_reference: per-element reference energies, eV/atom (``{"Pt": -5.1, ...}``),
        fitted by least squares on the training data
        (:func:`agedi_jax.forcefield.prepare_config`); predictions are
        ``Σ_i (ref[z_i] + energy_scale · head_i)`` in absolute eV.
      energy_scale: eV, the spread of the referenced per-atom energies of the training
        data (scales the head's output and normalises the energy and force losses);
        0 = not set (1 eV is used).
    """

    network: str = "nequip"
    features: int = 64
    vector_features: int = 32
    num_layers: int = 3
    l_max: int = 2
    num_basis: int = 8
    cutoff: float = 6.0
    avg_num_neighbors: float = 0.0
    edges_per_atom: float = 0.0
    num_labels: int = 0
    global_context: bool = True
    com_vector: bool = True
    normalize: bool = True
    positions: bool = True
    types: bool = True
    network_params: Params = Params()
    energy_head: bool = False
    energy_network: str = "shared"
    energy_reference: Params = Params()
    energy_scale: float = 0.0

    def __post_init__(self) -> None:
        _params_fields(self)


@dataclasses.dataclass(frozen=True)
class ProcessConfig:
    """The forward processes (paper Sec. II A–B).

    Attributes:
      sde: a name of :data:`agedi_jax.sde.SDES`: "ve" (Eq. 8, the paper's choice) or
        "vp" (Eq. 5).
      schedule: a schedule registered for the SDE: VE "linear" (the paper's) or
        "geometric"; VP "linear" or "cosine".
      sigma_min, sigma_max: VE noise scales, Å (σ_max comparable to the largest
        interatomic distance in the data).
      beta_min, beta_max: VP linear β(t) range.
      schedule_params: any other field of the schedule, e.g. ``s`` and ``alpha_max`` of
        the VP cosine schedule (:func:`sde_params` combines them with the fields above).
      type_schedule: a name of :data:`agedi_jax.discrete.TYPE_SCHEDULES`: "loglinear"
        (SEDD) or "geometric" σ̄(t) of the absorbing process.
      type_eps: ε of the log-linear schedule.
      type_schedule_params: any other field of the type schedule (e.g. ``sigma_min``,
        ``sigma_max`` of "geometric").
      t_eps: smallest time used in training and the end of the sampling grid.
      t_beta_a, t_beta_b: training times are ``t_eps + (1 − t_eps) · Beta(a, b)``; (1, 1) is
        uniform (the default). E.g. (3, 2) puts most of the effort around t ≈ 0.65 — with the
        geometric schedule σ ≈ 0.2–1.5 Å, where the in-plane registry of a layer is decided.
      parametrization: "eps" (the network predicts the noise ε, score = −ε̂/std) or
        "score" (the network predicts the score, loss weighted by std²).
      independent_t: draw independent times for positions and types (else the same t).
      data_scale: s0 (Å) of the Gaussian skip added to the position output
        (:func:`agedi_jax.scores.gaussian_skip`): per-axis data variance s² = s0² N^{2/3};
        -1 = computed from the training data, 0 = no skip.
      type_parametrization: "mean" (the type head predicts logits of the clean type,
        log ŝ = log a(σ̄) + log_softmax; exact form of the absorbing concrete score) or
        "direct" (the head predicts log ŝ itself).
      lattice: diffuse the periodic cell too (bulk crystals, or the in-plane cell of
        layers with pbc T, T, F whose vacuum axis c along z stays fixed;
        :mod:`agedi_jax.lattice`): "" (off, the default: the cell is a fixed template),
        "log" (``log(S/ℓ_N)``) or "linear" (``S``). With a lattice the network gets a
        lattice head, positions diffuse in fractional coordinates along periodic axes
        (fractional σ = σ(t)/ℓ_N, so ``sigma_max`` should exceed ℓ_N; a layer's z stays
        Cartesian) and samples start from the density-scaled prior cell; needs ``sde=ve``.
      lattice_scale: ``c`` (Å) of the density length ``ℓ_N = c N^{1/k}`` (k = 3 bulk,
        2 layers: ``c²`` is then the area per atom); 0 = fitted on the training data
        (:func:`agedi_jax.lattice.fit_lattice`) and stored here.
      lattice_layer_c: for a model of layers, the length (Å) of the fixed vacuum vector
        ``c = (0, 0, c_z)`` of the cells it samples from a composition or a number of
        atoms (templates keep their own); 0 for bulk crystals. Set from the training data
        (their median ``c_z``) when they are layers and this is 0.
      lattice_sigma: stationary σ of the lattice coordinates (dimensionless); 0 = fitted.
      lattice_schedule: VP schedule of the lattice process ("linear", "cosine").
      lattice_schedule_params: its fields (e.g. ``beta_min``, ``beta_max``).
      lattice_y_max: the smallest eigenvalue of every cell is kept ≥ ``ℓ_N e^{−y_max}``
        (:func:`agedi_jax.lattice.spd_floor`) so that the edge templates, built for that
        bound, always hold every periodic image within the cutoff.
    """

    sde: str = "ve"
    schedule: str = "linear"
    sigma_min: float = 0.01
    sigma_max: float = 8.0
    beta_min: float = 0.1
    beta_max: float = 20.0
    type_schedule: str = "loglinear"
    type_eps: float = 1e-3
    t_eps: float = 1e-3
    t_beta_a: float = 1.0
    t_beta_b: float = 1.0
    parametrization: str = "eps"
    independent_t: bool = False
    type_parametrization: str = "mean"
    data_scale: float = -1.0
    schedule_params: Params = Params()
    type_schedule_params: Params = Params()
    lattice: str = ""
    lattice_scale: float = 0.0
    lattice_sigma: float = 0.0
    lattice_schedule: str = "linear"
    lattice_schedule_params: Params = Params()
    lattice_y_max: float = 1.0
    lattice_layer_c: float = 0.0

    def __post_init__(self) -> None:
        _params_fields(self)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation (Eq. 18 joint loss, optax AdamW with clipping, warm-up + cosine decay).

    Attributes:
      steps: optimiser steps.
      batch_size: structures per batch.
      learning_rate: peak learning rate.
      warmup_steps: linear warm-up steps.
      final_lr_fraction: cosine decay ends at this fraction of the peak.
      weight_decay: AdamW weight decay.
      grad_clip: global-norm gradient clipping.
      ema_decay: decay of the exponential moving average of the parameters (0 = off).
      lambda_positions, lambda_types: loss weights λ_R, λ_z (Eq. 18).
      label_dropout: probability of replacing the label by the null label (CFG).
      seed: training seed (initialisation, batches, noise).
      log_every, val_every, checkpoint_every: intervals in steps.
      checkpoint_minutes: also save ``checkpoints/latest`` after this much wall time since
        the last save (0 = only by steps), so an interrupted run loses little.
      val_batches: validation batches per evaluation.
      lambda_energy, lambda_forces: weights of the force-field losses (with
        ``model.energy_head``): mean squared per-atom energy error and mean squared force
        component error, both divided by ``model.energy_scale²`` (eV², eV²/Å²).
      lambda_lattice: weight of the lattice loss (with ``process.lattice``).
    """

    steps: int = 2000
    batch_size: int = 32
    learning_rate: float = 2e-3
    warmup_steps: int = 100
    final_lr_fraction: float = 0.05
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.995
    lambda_positions: float = 1.0
    lambda_types: float = 1.0
    label_dropout: float = 0.1
    seed: int = 0
    log_every: int = 50
    val_every: int = 250
    checkpoint_every: int = 500
    checkpoint_minutes: float = 5.0
    val_batches: int = 4
    lambda_energy: float = 1.0
    lambda_forces: float = 1.0
    lambda_lattice: float = 1.0


@dataclasses.dataclass(frozen=True)
class SampleConfig:
    """Sampling (Eq. 9 and better samplers; τ-leaping for types).

    Attributes:
      sampler: "em" (Euler–Maruyama, Eq. 9), "pc" (predictor–corrector) or "ode"
        (probability-flow ODE, Heun).
      type_sampler: "tau" (τ-leaping) or "analytic" (SEDD's analytic step).
      steps: number of steps of the time grid.
      grid: spacing of the time grid (:func:`agedi_jax.samplers.time_grid`): "uniform"
        (equal steps in t), "quadratic" (finer near the data) or "log" (geometric in t).
        With the linear VE schedule a uniform grid's last step spans most of the small-σ
        range (σ 0.065 → 0.015 Å at 100 steps): "quadratic" spends more steps there.
      snr: signal-to-noise ratio of the Langevin corrector ("pc").
      corrector_steps: Langevin corrector steps per predictor step ("pc").
      guidance: classifier-free guidance weight w (Eq. 19): 1 = conditional,
        0 = unconditional, > 1 = stronger guidance.
      batch_size: structures per compiled sampling batch.
      seed: sampling seed.
      use_ema: sample with the EMA parameters.
      denoise: finish with one Tweedie denoising step at the last grid time (removes the
        remaining ~σ(t_eps) noise); the paper's Eq. 9 sampler has no such step.
      energy_guidance: force-field guidance (:func:`agedi_jax.samplers.energy_guided`):
        the position score becomes ``s + λ(t) F``, ``λ(t) = energy_guidance · (1 − t)^ζ``
        in eV⁻¹ (an inverse temperature 1/kT at t = 0: samples are tilted towards
        ``p(x) exp(−λ E(x))``); 0 = off.
      guidance_zeta: ζ of the guidance weight (1 − t)^ζ (larger: guidance only near the end).
      guidance_on: where the force is evaluated: "xt" (on the current noisy state) or
        "x0" (on Tweedie's denoised estimate x̂0 = E[x_0 | x_t], force divided by the mean
        coefficient m(t)); "xt" was as good or better in every comparison so far
        (``experiments/clusters/results/cpu/forcefield.json``).
      guidance_potential: "model" (the learned force field, needs ``model.energy_head``)
        or "emt" (:func:`agedi_jax.potentials.make_emt`, for Al Cu Ag Au Ni Pd Pt).
      guidance_max_force: per-atom force norm cap, eV/Å, before the force enters the
        score (0 = no cap; noisy states can have overlapping atoms).
      guidance_in: "all" (every score evaluation is guided) or "corrector" (with
        ``sampler=pc``, only the Langevin corrector blends in the force field).
      z_window: default z window ``"lo,hi"`` (Å above the topmost fixed atom) of slab
        templates (pbc T, T, F) with fixed atoms, e.g. the window a surface model was
        trained with; "" = none (:func:`agedi_jax.generate.sample_atoms`' ``z_window``
        overrides it; :mod:`agedi_jax.surfaces`).
    """

    sampler: str = "em"
    type_sampler: str = "tau"
    steps: int = 500
    grid: str = "uniform"
    snr: float = 0.16
    corrector_steps: int = 1
    guidance: float = 1.0
    batch_size: int = 64
    seed: int = 0
    use_ema: bool = True
    denoise: bool = True
    energy_guidance: float = 0.0
    guidance_zeta: float = 1.0
    guidance_on: str = "xt"
    guidance_potential: str = "model"
    guidance_max_force: float = 10.0
    guidance_in: str = "all"
    z_window: str = ""


@dataclasses.dataclass(frozen=True)
class Config:
    """The whole configuration of a run."""

    name: str = "default"
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    process: ProcessConfig = ProcessConfig()
    train: TrainConfig = TrainConfig()
    sample: SampleConfig = SampleConfig()

    def to_dict(self) -> dict:
        def plain(x: Any) -> Any:
            if isinstance(x, Params):
                return {k: plain(v) for k, v in x}
            if isinstance(x, dict):
                return {k: plain(v) for k, v in x.items()}
            return x

        return plain(dataclasses.asdict(self))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        """Rebuild a config; unknown keys raise (a config from another version)."""
        kwargs = {}
        hints = typing.get_type_hints(cls)
        for key, value in d.items():
            if key not in hints:
                raise ValueError(f"unknown config section {key!r}")
            sub = hints[key]
            if dataclasses.is_dataclass(sub):
                names = {f.name for f in dataclasses.fields(sub)}
                unknown = set(value) - names
                if unknown:
                    raise ValueError(f"unknown fields in config section {key!r}: {sorted(unknown)}")
                kwargs[key] = sub(**value)
            else:
                kwargs[key] = value
        cfg = cls(**kwargs)
        validate(cfg)
        return cfg

    @classmethod
    def from_json(cls, text: str) -> "Config":
        return cls.from_dict(json.loads(text))


def config_hash(cfg: Config) -> str:
    """Short stable hash of the resolved config (written into every output file).

    Only the values that differ from the field defaults enter it, so a field added to the
    config in a later version (at its default) leaves the hash of every earlier config —
    and so of every committed checkpoint — unchanged."""
    return hashlib.sha256(json.dumps(_non_default(cfg.to_dict(), Config().to_dict()), sort_keys=True).encode()).hexdigest()[:12]


def _non_default(values: dict, defaults: dict) -> dict:
    """The entries of the nested dict ``values`` that differ from ``defaults``."""
    out = {}
    for key, value in values.items():
        if isinstance(value, dict) and isinstance(defaults.get(key), dict):
            sub = _non_default(value, defaults[key])
            if sub:
                out[key] = sub
        elif key not in defaults or defaults[key] != value:
            out[key] = value
    return out


def _coerce(text: str, annotation: Any, where: str) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        if text.lower() in ("none", "null") and len(options) < len(typing.get_args(annotation)):
            return None
        annotation = options[0]
    if annotation is bool:
        low = text.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{where}: expected true/false, got {text!r}")
    if annotation is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{where}: expected an integer, got {text!r}") from None
    if annotation is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{where}: expected a number, got {text!r}") from None
    if annotation is Params:
        try:
            return Params(text)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
    return text


def override(cfg: Config, assignments: Sequence[str]) -> Config:
    """Apply ``section.field=value`` overrides (strings, as from the command line)."""
    hints = typing.get_type_hints(Config)
    for item in assignments:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form section.field=value")
        path, value = item.split("=", 1)
        path = path.strip()
        if path == "name":
            cfg = dataclasses.replace(cfg, name=value)
            continue
        if "." not in path:
            raise ValueError(f"override {item!r}: give section.field (sections: data, model, process, train, sample)")
        section, field = path.split(".", 1)
        key = None
        if "." in field:  # one entry of a Params field: process.schedule_params.s=0.01
            field, key = field.split(".", 1)
        if section not in hints or not dataclasses.is_dataclass(hints[section]):
            raise ValueError(
                f"override {item!r}: unknown section {section!r} (sections: data, model, process, train, sample)"
            )
        sub = getattr(cfg, section)
        sub_hints = typing.get_type_hints(type(sub))
        if field not in sub_hints:
            raise ValueError(
                f"override {item!r}: {section} has no field {field!r}; fields: {sorted(sub_hints)}"
            )
        if key is not None:
            if sub_hints[field] is not Params:
                raise ValueError(f"override {item!r}: {section}.{field} is not a parameter mapping")
            new_value = getattr(sub, field).updated(**{key: _scalar(value)})
        else:
            new_value = _coerce(value.strip(), sub_hints[field], path)
        cfg = dataclasses.replace(cfg, **{section: dataclasses.replace(sub, **{field: new_value})})
    validate(cfg)
    return cfg


def replace(cfg: Config, **sections: dict) -> Config:
    """``replace(cfg, train={"steps": 10})``: functional update of fields by section."""
    for section, fields in sections.items():
        cfg = dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **fields)})
    validate(cfg)
    return cfg


def sde_params(p: ProcessConfig) -> dict:
    """The schedule parameters of the position SDE: the common fields (``sigma_min``,
    ``sigma_max``, ``beta_min``, ``beta_max``) that the chosen schedule has, then
    ``schedule_params`` (for :func:`agedi_jax.sde.make_sde`)."""
    from agedi_jax.sde import schedule_fields

    try:
        fields = schedule_fields(p.sde, p.schedule)
    except ValueError:
        fields = ()
    common = {k: getattr(p, k) for k in ("sigma_min", "sigma_max", "beta_min", "beta_max") if k in fields}
    return {**common, **dict(p.schedule_params)}


def type_schedule_params(p: ProcessConfig) -> dict:
    """The parameters of the type schedule: ``type_eps`` as the log-linear ``eps``, then
    ``type_schedule_params`` (for :func:`agedi_jax.discrete.make_type_process`)."""
    common = {"eps": p.type_eps} if p.type_schedule == "loglinear" else {}
    return {**common, **dict(p.type_schedule_params)}


def validate(cfg: Config) -> None:
    """Raise ``ValueError`` naming the field for inconsistent settings."""

    def check(cond: bool, msg: str) -> None:
        if not cond:
            raise ValueError(f"invalid config: {msg}")

    m, p, t, s, d = cfg.model, cfg.process, cfg.train, cfg.sample, cfg.data
    # The plug-in families are checked against their registries (lazy: importing this
    # module does not import JAX) by the very constructors that build them.
    from agedi_jax import discrete, samplers
    from agedi_jax import sde as sde_lib
    from agedi_jax.nn import NETWORKS, network_fields

    check(m.network in NETWORKS, f"model.network={m.network!r} (one of {' | '.join(sorted(NETWORKS))})")
    if m.network in NETWORKS:
        valid = set(network_fields(m.network))
        bad = sorted(set(dict(m.network_params)) - valid)
        check(not bad, f"model.network_params: {m.network} has no field(s) {bad}; valid: {sorted(valid)}")
    check(m.positions or m.types, "model.positions and model.types are both off: nothing to model")
    check(m.cutoff > 0, "model.cutoff must be > 0 Å")
    check(m.edges_per_atom >= 0, "model.edges_per_atom must be >= 0 (0 = the whole edge template)")
    check(m.num_layers >= 1 and m.features >= 1, "model.num_layers and model.features must be >= 1")
    check(m.num_labels >= 0, "model.num_labels must be >= 0")
    check(0 < p.sigma_min < p.sigma_max, "need 0 < process.sigma_min < process.sigma_max")
    check(0 < p.beta_min < p.beta_max, "need 0 < process.beta_min < process.beta_max")
    try:
        sde_lib.make_sde(p.sde, p.schedule, **sde_params(p))
    except (ValueError, TypeError) as err:
        check(False, f"process.sde={p.sde!r}, process.schedule={p.schedule!r}: {err}")
    try:
        discrete.make_type_process(1, p.type_schedule, **type_schedule_params(p))
    except (ValueError, TypeError) as err:
        check(False, f"process.type_schedule={p.type_schedule!r}: {err}")
    check(0 < p.t_eps < 0.5, "process.t_eps must be in (0, 0.5)")
    check(p.t_beta_a > 0 and p.t_beta_b > 0, "process.t_beta_a and process.t_beta_b must be > 0")
    check(p.parametrization in ("eps", "score"), f"process.parametrization={p.parametrization!r} (eps | score)")
    check(p.type_parametrization in ("mean", "direct"), f"process.type_parametrization={p.type_parametrization!r} (mean | direct)")
    check(not (p.independent_t and p.type_parametrization == "mean" and m.types and m.positions),
          "process.independent_t needs process.type_parametrization=direct (the network sees only the position time)")
    check(t.steps >= 0 and t.batch_size >= 1, "train.steps >= 0 and train.batch_size >= 1")
    check(t.learning_rate > 0, "train.learning_rate must be > 0")
    check(0 <= t.ema_decay < 1, "train.ema_decay must be in [0, 1)")
    check(0 <= t.label_dropout <= 1, "train.label_dropout must be in [0, 1]")
    pos_names, type_names = sorted(samplers.POSITION_SAMPLERS), sorted(samplers.TYPE_SAMPLERS)
    check(s.sampler in pos_names, f"sample.sampler={s.sampler!r} ({' | '.join(pos_names)})")
    check(s.type_sampler in type_names, f"sample.type_sampler={s.type_sampler!r} ({' | '.join(type_names)})")
    check(s.grid in samplers.GRIDS, f"sample.grid={s.grid!r} ({' | '.join(samplers.GRIDS)})")
    check(s.steps >= 1, "sample.steps must be >= 1")
    check(s.batch_size >= 1, "sample.batch_size must be >= 1")
    check(d.max_atoms >= 1, "data.max_atoms must be >= 1")
    _validate_force_field(cfg, check)
    _validate_lattice(cfg, check)
    if s.z_window:
        from agedi_jax.surfaces import parse_z_window

        try:
            parse_z_window(s.z_window)
        except ValueError as err:
            check(False, f"sample.z_window={s.z_window!r}: {err}")
    check(0 <= d.val_fraction < 1, "data.val_fraction must be in [0, 1)")


def _validate_lattice(cfg: Config, check) -> None:
    """The lattice fields (process.lattice*, train.lambda_lattice)."""
    p, m, t = cfg.process, cfg.model, cfg.train
    check(p.lattice in ("", "log", "linear"), f"process.lattice={p.lattice!r} ('' | log | linear)")
    check(t.lambda_lattice >= 0, "train.lambda_lattice must be >= 0")
    if not p.lattice:
        return
    check(p.sde == "ve", f"process.lattice needs process.sde=ve (positions on the torus), got {p.sde!r}")
    check(m.positions, "process.lattice needs a model of positions (model.positions)")
    check(p.lattice_scale >= 0 and p.lattice_sigma >= 0,
          "process.lattice_scale and process.lattice_sigma must be >= 0 (0 = fitted on the data)")
    check(p.lattice_y_max > 0, "process.lattice_y_max must be > 0")
    check(p.lattice_layer_c >= 0, "process.lattice_layer_c must be >= 0 Å (0 = bulk crystals, or fitted on layers)")
    check(cfg.sample.sampler in ("em", "ode"),
          f"sample.sampler={cfg.sample.sampler!r} is not available with process.lattice (em | ode)")
    from agedi_jax.lattice import make_lattice_sde

    try:
        make_lattice_sde(p.lattice_schedule, scale=p.lattice_scale or 1.0, sigma_rel=p.lattice_sigma or 0.1,
                         param=p.lattice, **dict(p.lattice_schedule_params))
    except (ValueError, TypeError) as err:
        check(False, f"process.lattice_schedule={p.lattice_schedule!r}: {err}")


def _validate_force_field(cfg: Config, check) -> None:
    """The force-field fields (model.energy_*, train.lambda_energy/forces, sample guidance)."""
    m, t, s = cfg.model, cfg.train, cfg.sample
    check(m.energy_network in ("shared", "separate"), f"model.energy_network={m.energy_network!r} (shared | separate)")
    check(m.energy_scale >= 0, "model.energy_scale must be >= 0 eV (0 = not set)")
    for k, v in m.energy_reference:
        check(isinstance(v, (int, float)) and not isinstance(v, bool),
              f"model.energy_reference[{k!r}] must be a number (eV/atom), got {v!r}")
    check(t.lambda_energy >= 0 and t.lambda_forces >= 0, "train.lambda_energy and train.lambda_forces must be >= 0")
    check(s.energy_guidance >= 0, "sample.energy_guidance must be >= 0 (eV^-1; 0 = off)")
    check(s.guidance_zeta >= 0, "sample.guidance_zeta must be >= 0")
    check(s.guidance_on in ("x0", "xt"), f"sample.guidance_on={s.guidance_on!r} (x0 | xt)")
    check(s.guidance_potential in ("model", "emt"), f"sample.guidance_potential={s.guidance_potential!r} (model | emt)")
    check(s.guidance_max_force >= 0, "sample.guidance_max_force must be >= 0 eV/Å (0 = no cap)")
    check(s.guidance_in in ("all", "corrector"), f"sample.guidance_in={s.guidance_in!r} (all | corrector)")
    if s.energy_guidance > 0:
        check(m.positions, "sample.energy_guidance needs a model of positions (model.positions)")
        check(s.guidance_potential != "model" or m.energy_head,
              "sample.energy_guidance with sample.guidance_potential=model needs model.energy_head "
              "(a learned force field); or use sample.guidance_potential=emt")
        check(s.guidance_in == "all" or s.sampler == "pc",
              "sample.guidance_in=corrector needs sample.sampler=pc (the Langevin corrector)")


# --------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------


def preset(name: str) -> Config:
    """Named configurations.

    * ``quickstart`` — a small joint model on the built-in EMT clusters, trains in a few
      minutes on 2 CPU cores.
    * ``qcd_gm`` / ``qcd_de200`` — the paper's cluster models (Sec. III A): joint positions
      and types, VE SDE, linear schedule; GM subset (N < 30) / ΔE < 200 meV subset.
    * ``c2db`` — the paper's 2D model (Sec. III B): positions only, conditioned on the
      layer group (1–80) with classifier-free guidance. Geometric VE schedule (the paper
      used the linear one): at equal network it recovers the layer groups of noised
      structures far better below 0.25 Å and samples slightly more of them
      (``experiments/two_d/README.md``); with the linear schedule sample on a
      ``sample.grid=log`` grid. Sampler: predictor–corrector, 100 steps with 6 Langevin
      corrector steps each — on the committed CPU model it lifts the layer-group accuracy
      from 0.384 (EM 100) / 0.396 (EM 300) to 0.532 at w = 3 (``experiments/ablations``).
    * ``c2db_cell`` — ``c2db`` with the in-plane cell generated too (issue 18):
      ``process.lattice=log`` on the layers (pbc T, T, F; the vacuum vector c along z never
      moves), density-scaled prior on the area per atom fitted on the training split
      (C2DB: c ≈ 1.80 Å, σ ≈ 0.27), ``lattice_y_max`` 1.2 (the training cells reach log
      eigenvalues −1.06); samples a composition (and a layer group for guidance) without a
      template cell. Same as ``--preset c2db --set process.lattice=log --set
      process.lattice_y_max=1.2``.
    * ``perov5`` / ``carbon24`` — bulk crystals (issue 18): the cell diffuses with the
      fractional positions and the types (``process.lattice=log``, density-scaled prior
      fitted on the training split), PaiNN; sample a composition (crystal structure
      prediction) or a number of atoms (de novo). The data are the CDVAE benchmark files
      in ``$AGEDI_JAX_DATA/bulk`` (a 10 % validation split is held out by seed).
      ``lattice_y_max`` is 0.5 for perov_5 (its cells spread by 5 % only: a tighter
      eigenvalue floor, 8× fewer template edges) and 1 for carbon_24 (data minimum −0.83).
    """
    if name == "default":
        return Config()
    if name == "quickstart":
        return Config(
            name="quickstart",
            data=DataConfig(dataset="builtin", max_atoms=16, val_fraction=0.1),
            model=ModelConfig(network="nequip", features=32, vector_features=16, num_layers=2, l_max=1, cutoff=5.0),
            process=ProcessConfig(sde="ve", schedule="linear", sigma_min=0.01, sigma_max=6.0),
            train=TrainConfig(steps=3000, batch_size=16, learning_rate=3e-3, warmup_steps=50, log_every=50,
                              val_every=500, checkpoint_every=500, ema_decay=0.99),
            sample=SampleConfig(sampler="em", steps=500, batch_size=32),
        )
    if name in ("qcd_gm", "qcd_de200"):
        return Config(
            name=name,
            data=DataConfig(dataset="$AGEDI_JAX_DATA/qcd_gap_relaxed", subset=name.split("_")[1],
                            max_atoms=29 if name == "qcd_gm" else 55),
            model=ModelConfig(network="nequip", features=64, vector_features=32, num_layers=3, cutoff=6.0),
            process=ProcessConfig(sde="ve", schedule="linear", sigma_min=0.01, sigma_max=10.0),
            train=TrainConfig(steps=100_000, batch_size=64, learning_rate=1e-3),
            sample=SampleConfig(sampler="em", steps=500),
        )
    if name == "c2db":
        return Config(
            name="c2db",
            data=DataConfig(dataset="$AGEDI_JAX_DATA/c2db/train.csv", max_atoms=20, label="layer_group"),
            model=ModelConfig(network="nequip", features=64, vector_features=32, num_layers=3, cutoff=5.0,
                              num_labels=80, types=False),
            process=ProcessConfig(sde="ve", schedule="geometric", sigma_min=0.01, sigma_max=5.0),
            train=TrainConfig(steps=100_000, batch_size=32, learning_rate=1e-3, label_dropout=0.1),
            sample=SampleConfig(sampler="pc", steps=100, corrector_steps=6, guidance=1.0),
        )
    if name == "c2db_cell":
        base = dataclasses.replace(preset("c2db"), name="c2db_cell")
        # the lattice step has no corrector: Euler–Maruyama as before. Edge budget: the
        # template holds ~21x the real edges (at most ~20 per atom slot in noised batches)
        return replace(base, process={"lattice": "log", "lattice_y_max": 1.2}, model={"edges_per_atom": 32.0},
                       sample={"sampler": "em", "steps": 500, "corrector_steps": 1})
    if name in ("perov5", "carbon24"):
        perov = name == "perov5"
        return Config(
            name=name,
            data=DataConfig(dataset=f"$AGEDI_JAX_DATA/bulk/{'perov_5' if perov else 'carbon_24'}.csv",
                            max_atoms=5 if perov else 24, val_fraction=0.1),
            # carbon_24: ~80 real edges per atom within 5 Å, ~4,800 template candidates
            model=ModelConfig(network="painn", features=64, num_layers=3, cutoff=5.0,
                              edges_per_atom=0.0 if perov else 128.0),
            process=ProcessConfig(sde="ve", schedule="linear", sigma_min=0.01, sigma_max=5.0 if perov else 6.0,
                                  data_scale=0.0, lattice="log", lattice_y_max=0.5 if perov else 1.0),
            train=TrainConfig(steps=100_000, batch_size=32 if perov else 8, learning_rate=1e-3),
            sample=SampleConfig(sampler="em", steps=500, batch_size=32 if perov else 8),
        )
    raise ValueError(f"unknown preset {name!r} (default | quickstart | qcd_gm | qcd_de200 | c2db | c2db_cell | perov5 | carbon24)")


PRESETS = ("default", "quickstart", "qcd_gm", "qcd_de200", "c2db", "c2db_cell", "perov5", "carbon24")
