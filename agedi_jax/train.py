"""The training loop: data → model → jitted steps, validation, metrics, checkpoints.

``fit(config, run_dir)`` trains a model and writes into ``run_dir``::

    config.json          the resolved config (data-derived fields filled in)
    metrics.jsonl        one JSON object per logged step (train / val)
    loss.png             the loss curves
    checkpoints/latest   the most recent state (orbax, atomic)
    checkpoints/best     the state with the lowest validation loss

A run directory that already holds ``checkpoints/latest`` is resumed: batches and noise
keys are pure functions of ``(seed, step)`` (:mod:`agedi_jax.batching`), so a run stopped
and resumed ends with exactly the parameters of a run that never stopped.

What an interruption keeps: ``latest`` is written every ``train.checkpoint_every`` steps,
every ``train.checkpoint_minutes`` of wall time, at every validation, at the end, and when
the process receives SIGINT (Ctrl-C) or SIGTERM (the step in flight finishes first, then
:class:`TrainingInterrupted` is raised). A ``kill -9`` or a power cut loses at most the
steps since the last of these. One training at a time may write to a run directory
(:class:`~agedi_jax.runlog.RunLock`); its output location is checked before any work.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from agedi_jax.batching import BatchStream, fixed_batches
from agedi_jax.checkpoint import (
    CheckpointError,
    check_compatible,
    load_config_and_vocab,
    restore_state,
    save_checkpoint,
)
from agedi_jax.config import Config, config_hash, replace
from agedi_jax.convert import encode_structures
from agedi_jax.model import (
    DiffusionModel,
    TrainState,
    build_model,
    init_state,
    learning_rate,
    make_eval_step,
    make_train_step,
)
from agedi_jax.runlog import (
    MetricsLog,
    RunLock,
    check_writable,
    plot_losses,
    read_metrics,
)
from agedi_jax.runtime import release_compiled
from agedi_jax.vocab import TypeVocab

__all__ = [
    "PreparedData",
    "TrainResult",
    "TrainingInterrupted",
    "run_keys",
    "load_training_data",
    "prepare_data",
    "data_scale",
    "fit",
]


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by SIGINT / SIGTERM after saving ``checkpoints/latest``; rerunning
    the same command resumes. ``signum`` is the signal, ``step`` the step saved."""

    def __init__(self, signum: int, step: int, checkpoint: Path):
        super().__init__(f"interrupted by signal {signum} at step {step}; saved {checkpoint}")
        self.signum, self.step, self.checkpoint = signum, step, checkpoint


class _StopRequests:
    """SIGINT / SIGTERM handlers that only set a flag (the loop saves and stops at the end
    of the step in flight); the previous handlers come back on exit. Only in the main
    thread (signals cannot be caught elsewhere)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict = {}

    def __enter__(self) -> _StopRequests:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc) -> None:
        import signal

        for sig, old in self._old.items():
            signal.signal(sig, old)


class PreparedData(NamedTuple):
    """Training and validation structures, encoded, with the vocabulary and the resolved
    config (``avg_num_neighbors`` and ``num_labels`` filled in from the data)."""

    config: Config
    vocab: TypeVocab
    train: list
    val: list
    train_atoms: list
    val_atoms: list


class TrainResult(NamedTuple):
    run_dir: Path
    model: DiffusionModel
    state: TrainState
    metrics: list


def load_training_data(config: Config):
    """The data set of a config (loaded with :func:`agedi_jax.data.load_dataset`)."""
    from agedi_jax.data import load_dataset

    d = config.data
    kwargs: dict[str, Any] = {}
    if d.subset:
        kwargs["subset"] = d.subset
    dataset = load_dataset(d.dataset, **kwargs)
    if d.elements:
        wanted = {e.strip() for e in d.elements.split(",") if e.strip()}
        keep = [i for i, a in enumerate(dataset.structures) if set(a.get_chemical_symbols()) <= wanted]
        if not keep:
            raise ValueError(f"no structure of {dataset.name!r} is made only of data.elements={d.elements!r}")
        dataset = dataset.subset(keep)
    return dataset


def _labels_of(dataset, config: Config) -> list[int] | None:
    key = config.data.label
    if not key:
        return None
    if dataset.labels is not None and key in ("label", "layer_group", dataset.source.get("label_name", key)):
        return [int(x) for x in dataset.labels]
    out = []
    for k, atoms in enumerate(dataset.structures):
        if key not in atoms.info:
            raise ValueError(f"structure {k} of {dataset.name!r} has no label {key!r} in atoms.info")
        out.append(int(atoms.info[key]))
    return out


def prepare_data(config: Config, dataset=None) -> PreparedData:
    """Load, split, encode; fill in ``model.avg_num_neighbors`` and ``model.num_labels``."""
    from agedi_jax.nn import average_num_neighbors

    if dataset is None:
        dataset = load_training_data(config)
    if len(dataset) == 0:
        raise ValueError("the training data set is empty")
    labels = _labels_of(dataset, config)
    if config.process.sde == "vp" and config.model.positions:
        periodic = [k for k, a in enumerate(dataset.structures) if np.any(a.pbc)]
        if periodic:
            raise ValueError(
                f"process.sde=vp cannot diffuse periodic structures ({len(periodic)} of {len(dataset)}, e.g. "
                f"structure {periodic[0]}); use process.sde=ve"
            )
    n = len(dataset)
    rng = np.random.default_rng(config.data.split_seed)
    order = rng.permutation(n)
    n_val = int(round(config.data.val_fraction * n)) if n > 1 else 0
    val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
    structures = dataset.structures
    vocab = TypeVocab.from_atoms(structures)
    cutoff = config.model.cutoff
    image_cells = None
    if config.process.lattice:
        structures, config = prepare_lattice(config, structures, train_idx)
        p = config.process
        from agedi_jax.lattice import template_cell

        image_cells = [template_cell(p.lattice_scale, len(a), a.pbc, p.lattice_y_max) for a in structures]

    def enc(idx):
        return encode_structures(
            [structures[i] for i in idx],
            vocab,
            cutoff,
            labels=None if labels is None else [labels[i] for i in idx],
            max_atoms=config.data.max_atoms,
            image_cells=None if image_cells is None else [image_cells[i] for i in idx],
        )

    train = enc(train_idx)
    val = enc(val_idx) if len(val_idx) else []
    updates: dict[str, Any] = {}
    if not config.model.avg_num_neighbors:
        sample = [structures[i] for i in train_idx[: min(len(train_idx), 500)]]
        updates["avg_num_neighbors"] = round(float(average_num_neighbors(sample, cutoff)), 4)
    if config.process.data_scale < 0:
        updates_p = {"data_scale": round(data_scale([structures[i] for i in train_idx]), 4)}
        config = replace(config, process=updates_p)
    if labels is not None:
        top = int(max(labels))
        if config.model.num_labels == 0:
            updates["num_labels"] = top
        elif top > config.model.num_labels:
            raise ValueError(f"data label {top} exceeds model.num_labels={config.model.num_labels}")
    if updates:
        config = replace(config, model=updates)
    if config.model.energy_head:  # per-element reference energies and the energy scale
        from agedi_jax import forcefield

        config = forcefield.prepare_config(config, vocab, [structures[i] for i in train_idx])
    return PreparedData(
        config, vocab, train, val, [structures[i] for i in train_idx], [structures[i] for i in val_idx]
    )


def prepare_lattice(config: Config, structures: list, train_idx) -> tuple[list, Config]:
    """For a model of the cell (``process.lattice``): every structure Niggli-reduced
    (:func:`agedi_jax.lattice.reduce_cell`, positions wrapped into the new cell; the same
    crystal; for layers the 2D reduction of the in-plane basis, ``c`` untouched) and,
    where ``process.lattice_scale`` / ``lattice_sigma`` are 0, the density-scaled prior
    fitted on the training structures (:func:`agedi_jax.lattice.fit_lattice`; volume per
    atom for bulk, area per atom for layers) and stored in the config; for layers also
    ``process.lattice_layer_c`` (the median ``c_z`` of the training layers, Å) when 0.

    The structures must be all bulk crystals (pbc T, T, T) or all layers (pbc T, T, F) in
    the package's 2D convention (:func:`agedi_jax.lattice.check_cell_layout`); anything
    else raises ``ValueError`` naming the first offending structure."""
    from agedi_jax.lattice import check_cell_layout, fit_lattice, reduce_cell

    periodic = [k for k, a in enumerate(structures) if np.any(a.pbc)]
    if len(periodic) < len(structures):
        bad = [k for k in range(len(structures)) if k not in set(periodic)]
        raise ValueError(
            f"process.lattice needs bulk crystals (pbc T, T, T) or layers (pbc T, T, F): {len(bad)} of "
            f"{len(structures)} structures have no periodic axis, e.g. structure {bad[0]}"
        )
    dims = [check_cell_layout(a.cell[:], a.pbc, what=f"structure {k}") for k, a in enumerate(structures)]
    if len(set(dims)) > 1:
        first = dims.index(2)
        raise ValueError(
            f"process.lattice: the data mix bulk crystals and layers (e.g. structure {first} is a layer); "
            "train a model of one kind"
        )
    layers = dims[0] == 2
    from agedi_jax.surfaces import Z_WINDOW_KEY

    windowed = [k for k, a in enumerate(structures) if a.info.get(Z_WINDOW_KEY) is not None]
    if windowed:
        raise ValueError(f"process.lattice: structure {windowed[0]} has a z window ({Z_WINDOW_KEY}); a model of the "
                         "cell does not confine atoms")
    p = config.process
    if not layers and p.lattice_layer_c > 0:
        raise ValueError(f"process.lattice_layer_c={p.lattice_layer_c} is for layers, but the data are bulk crystals")
    reduced = []
    for a in structures:
        b = a.copy()
        b.set_cell(reduce_cell(np.asarray(a.cell[:]), a.pbc), scale_atoms=False)
        b.wrap()
        reduced.append(b)
    if not (p.lattice_scale > 0 and p.lattice_sigma > 0):
        fit = fit_lattice([reduced[i] for i in train_idx], reduce=False)
        sigma = fit.sigma_log if p.lattice == "log" else fit.sigma_linear
        config = replace(config, process={"lattice_scale": p.lattice_scale or round(fit.scale, 5),
                                          "lattice_sigma": p.lattice_sigma or round(sigma, 5)})
    if layers and not p.lattice_layer_c > 0:
        c_z = float(np.median([reduced[i].cell[2, 2] for i in train_idx]))
        config = replace(config, process={"lattice_layer_c": round(c_z, 4)})
    return reduced, config


def data_scale(structures) -> float:
    """s0 (Å) with per-axis positional variance ≈ s0² N^{2/3} along the non-periodic axes of
    the data (a cluster's radius of gyration grows like N^{1/3}); see
    :func:`agedi_jax.scores.gaussian_skip`. 0 if no structure has a non-periodic axis."""
    vals = []
    for a in structures:
        free = ~np.asarray(a.pbc, bool)
        if not free.any() or len(a) < 2:
            continue
        x = a.positions[:, free]
        var = ((x - x.mean(0)) ** 2).mean()
        vals.append(var / len(a) ** (2.0 / 3.0))
    return float(np.sqrt(np.mean(vals))) if vals else 0.0


def run_keys(seed: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(init_key, step_key, val_key)`` of a training run with ``train.seed = seed``; step
    ``s`` uses ``fold_in(step_key, s)``."""
    init_key, step_key, val_key = jax.random.split(jax.random.PRNGKey(seed), 3)
    return init_key, step_key, val_key


def _mean_metrics(records: list[dict]) -> dict:
    keys = records[0].keys()
    return {k: float(np.mean([float(r[k]) for r in records])) for k in keys}


def fit(
    config: Config,
    run_dir: str | os.PathLike,
    *,
    resume: bool = True,
    progress: bool = True,
    dataset=None,
    stop_at: int | None = None,
    mesh: Any = None,
) -> TrainResult:
    """Train (or resume) a model; see the module docstring for what is written.

    Args:
      config: the configuration (data-derived fields are filled in).
      run_dir: output directory.
      resume: continue from ``run_dir/checkpoints/latest`` if present (the saved config's
        model and process sections must match).
      progress: show a tqdm progress bar.
      dataset: a :class:`agedi_jax.data.Dataset` to use instead of ``config.data.dataset``.
      stop_at: stop after this step (as if interrupted; a later call resumes).
      mesh: a device mesh (:func:`agedi_jax.parallel.make_mesh`) for data-parallel
        training: every step takes ``mesh.size`` consecutive packed batches of
        ``train.batch_size`` structures, one shard per device
        (:class:`~agedi_jax.parallel.ShardedBatchStream`), and equals the one-device step
        on their union. The state is replicated; checkpoints are the same as without a
        mesh (a run may be resumed with or without one, or with another device count —
        batches then follow the new layout).
    """
    run_dir = Path(run_dir)
    check_writable(run_dir, "run directory")  # before any work
    data = prepare_data(config, dataset)  # errors here leave nothing behind
    run_dir.mkdir(parents=True, exist_ok=True)
    with RunLock(run_dir):
        return _fit_locked(data, run_dir, resume=resume, progress=progress, stop_at=stop_at, mesh=mesh)


def _fit_locked(data: PreparedData, run_dir: Path, *, resume: bool, progress: bool, stop_at: int | None,
                mesh: Any) -> TrainResult:
    from agedi_jax.data import portable_data_spec

    ckpt_dir = run_dir / "checkpoints"
    config, vocab = data.config, data.vocab
    try:  # store where the data are so that a clone elsewhere resolves it
        config = replace(config, data={"dataset": portable_data_spec(config.data.dataset)})
    except (OSError, ValueError):
        pass

    latest = ckpt_dir / "latest"
    resumed_from = None
    if resume and latest.exists():
        saved_cfg, saved_vocab, meta = load_config_and_vocab(latest)
        if meta.get("contents") == "params":
            raise CheckpointError(f"{latest} holds parameters only (an export for sampling, "
                                  "agedi_jax.checkpoint.export_params): training cannot resume from it")
        check_compatible(saved_cfg, config, "checkpoint in " + str(run_dir))
        if saved_vocab != vocab:
            raise CheckpointError(
                f"checkpoint in {run_dir} has type vocabulary {list(saved_vocab.symbols)}, "
                f"the data give {list(vocab.symbols)}"
            )
        resumed_from = int(meta["step"])
        best_val = float(meta.get("extra", {}).get("best_val", math.inf))
    else:
        best_val = math.inf

    _write_text_atomic(run_dir / "config.json", config.to_json())
    model = build_model(config, vocab)
    tcfg = config.train
    stream = BatchStream(data.train, tcfg.batch_size, seed=tcfg.seed)
    val_batches = fixed_batches(data.val, tcfg.batch_size, tcfg.val_batches) if data.val else []
    init_key, step_key, val_key = run_keys(tcfg.seed)

    if mesh is None:
        example, next_batch = stream.batch(0), stream.batch
    else:
        from agedi_jax.parallel import ShardedBatchStream, replicate

        pstream = ShardedBatchStream(stream, mesh.devices.size)
        example = pstream.union_batch(0)

        def next_batch(step: int):
            return pstream.sharded(step, mesh)

    state = init_state(model, init_key, example)
    if resumed_from is not None:
        state = restore_state(latest, state)
    state = jax.device_put(state) if mesh is None else replicate(state, mesh)
    train_step = make_train_step(model, mesh)
    eval_step = make_eval_step(model)
    log = MetricsLog(run_dir / "metrics.jsonl", resume_step=resumed_from)

    start = int(state.step)
    end = tcfg.steps if stop_at is None else min(tcfg.steps, stop_at)
    say = _Reporter(progress)

    def validate(step: int) -> float | None:
        if not val_batches:
            return None
        recs = [
            jax.device_get(eval_step(state.ema_params, b, jax.random.fold_in(val_key, i)))
            for i, b in enumerate(val_batches)
        ]
        m = _mean_metrics(recs)
        log.write({"step": step, "split": "val", **m})
        return m["loss"]

    last_save = time.monotonic()

    def checkpoint(step: int, val_loss: float | None) -> None:
        nonlocal best_val, last_save
        extra = {"best_val": best_val, "config_hash": config_hash(config)}
        if val_loss is not None and val_loss < best_val:
            best_val = val_loss
            extra["best_val"] = best_val
            save_checkpoint(ckpt_dir / "best", state, config, vocab, step=step, extra=extra)
        save_checkpoint(ckpt_dir / "latest", state, config, vocab, step=step, extra=extra)
        last_save = time.monotonic()

    pending: list = []
    t_last = time.perf_counter()
    wall_every = 60.0 * tcfg.checkpoint_minutes
    with _StopRequests() as stop:
        for step in range(start, end):
            first = step == start
            if first:
                say.start_compile("training step", start, end)
            state, metrics = train_step(state, next_batch(step), jax.random.fold_in(step_key, step))
            if first:
                jax.block_until_ready(metrics)
                say.compiled(start + 1, end, config.name)
                t_last = time.perf_counter()
            pending.append(metrics)
            done = step + 1
            if done % tcfg.log_every == 0 or done == end:
                recs = jax.device_get(pending)
                pending = []
                m = _mean_metrics(recs)
                if not all(math.isfinite(v) for v in m.values()):
                    raise FloatingPointError(f"non-finite training metrics at step {done}: {m}")
                now = time.perf_counter()
                rate = len(recs) / max(now - t_last, 1e-9)
                t_last = now
                log.write({"step": done, "split": "train", "lr": learning_rate(config, done),
                           "steps_per_s": rate, **m})
                say.loss(m["loss"])
                release_compiled()  # XLA:CPU code mappings of many batch shapes (agedi_jax.runtime)
            val_loss = validate(done) if (done % tcfg.val_every == 0 or done == end) else None
            due = wall_every > 0 and time.monotonic() - last_save >= wall_every
            if done % tcfg.checkpoint_every == 0 or done == end or val_loss is not None or due:
                checkpoint(done, val_loss)
            say.advance(done)
            if stop.signum is not None and done < end:
                if pending:
                    pending = []
                checkpoint(done, None)
                say.close()
                _plot(run_dir, config)
                raise TrainingInterrupted(stop.signum, done, ckpt_dir / "latest")
    say.close()
    if start == end and not latest.exists():
        checkpoint(start, validate(start))
    records = _plot(run_dir, config)
    return TrainResult(run_dir, model, state, records)


def _plot(run_dir: Path, config: Config) -> list:
    records = read_metrics(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").exists() else []
    if records:
        plot_losses(records, run_dir / "loss.png", title=f"{config.name} ({config_hash(config)})")
    return records


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class _Reporter:
    """Progress of a training run on stderr: "compiling…" with its duration, then a tqdm
    bar whose rate and ETA count only the steps after compilation."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar = None
        self.t0 = 0.0

    def start_compile(self, what: str, start: int, end: int) -> None:
        self.t0 = time.perf_counter()
        if self.enabled:
            import sys

            print(f"compiling the {what} (steps {start} → {end})…", end="", file=sys.stderr, flush=True)

    def compiled(self, done: int, end: int, name: str) -> None:
        if not self.enabled:
            return
        import sys

        from tqdm.auto import tqdm

        print(f" {time.perf_counter() - self.t0:.1f} s (compilation and the first step)", file=sys.stderr, flush=True)
        if end > done:
            self.bar = tqdm(total=end, initial=done, desc=f"train {name}", unit="step", dynamic_ncols=True)

    def loss(self, value: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{value:.4f}")

    def advance(self, done: int) -> None:
        if self.bar is not None and done > self.bar.n:
            self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
