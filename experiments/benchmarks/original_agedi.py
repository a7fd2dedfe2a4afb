"""The real original AGeDi (PyTorch, ``agedi`` 1.4 from the package index) against agedi_jax
on the same workload, each side timed in its own process.

    python -m experiments.benchmarks.original_agedi                  # driver (~8 min on 2 cores)
    python -m experiments.benchmarks.original_agedi --rounds 2 --repeats 4 --sample-steps 100
    python -m experiments.benchmarks.original_agedi --threads 1 --jax-sample-steps 100   # time to quality
    python -m experiments.benchmarks.original_agedi --report-only    # reprint the JSON
    python -m experiments.benchmarks.original_agedi --recreation     # also the PyTorch re-creation

The original is never imported by the package nor copied into the repository: it lives in a
scratch environment outside it (Python ≥ 3.12), whose interpreter is ``--original-python``,
else ``$AGEDI_ORIGINAL_PYTHON``, else ``../scratch/agedi_orig/.venv/bin/python`` beside the
checkout. Set it up once, e.g.::

    python3.12 -m venv ../scratch/agedi_orig/.venv
    ../scratch/agedi_orig/.venv/bin/pip install "agedi[full]==1.4" torch==2.13.0

When that interpreter is missing or cannot ``import agedi``, the driver says so and exits 0.

Workload (both sides): 64 rattled Pt13 icosahedra (832 atoms, all 9,984 directed pairs within
the 6 Å cutoff), a PaiNN score network of 64 features × 3 interactions with 30 radial basis
functions and cutoff 6 Å; positions only by default (the original's model then has the
180,061 parameters the issue quotes), positions + types (6 elements) with ``--types``.

* original (``--side original``, run with the scratch interpreter as a file path; imports
  nothing of this repository but ``timed`` of ``experiments/common.py``, loaded from the file,
  which needs only the standard library and numpy): the model from ``agedi.create_diffusion``
  (PaiNN backend of SchNetPack; its default position noiser and SDE), the batch from
  ``agedi.create_dataset`` (one batch of 64). Training step: ``Agedi.loss`` (time draw,
  forward noising, neighbour-list rebuild, score model, loss) + ``backward`` + the AdamW step
  of ``configure_optimizers`` (what Lightning runs per step, without its loop and logging).
  Sampling step: ``EulerMaruyamaSampler.step`` under ``torch.no_grad`` at t = 0.05 (score
  model, denoising update, wrap, neighbour-list rebuild), chained as in sampling. Network
  forward: the score model alone under ``no_grad``. 500-step sampling: ``agedi.sample`` of
  64 Pt13 (one batch).
* jax (``--side jax``, the project's venv): the benchmark model of ``run_all.py``
  (``benchmark_config("painn")`` with ``model.num_basis=30``) on the exact padding of the
  same batch: the jitted training step, one joint sampling step at t = 0.05 alone, the network
  forward (``model.apply``), and the compiled 500-step Euler–Maruyama sampler.

The driver launches every measurement in a fresh process, interleaved (original, jax,
original, jax, ... for ``--rounds`` rounds), pinned with ``taskset -c 0`` (1 thread) or
``taskset -c 0,1`` (2 threads). Thread settings: torch ``set_num_threads(n)``,
``set_num_interop_threads(1)``; XLA ``--xla_cpu_multi_thread_eigen=false
intra_op_parallelism_threads=1`` for 1 thread, its default pool (= the 2 pinned cores) for 2;
``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` = n. Both sides get the process settings of
``run_all.py``: passive OpenMP wait, glibc heap kept (``MALLOC_ARENA_MAX=1``, mmap and trim
thresholds 1 GiB), and XLA's YNNPACK on dot products only. Each process times ``--repeats``
calls after ``--warmup``; the figure of a side is the median of its rounds' medians
(``--rounds`` × ``--repeats`` calls in all). Writes ``results/original_agedi.json``.

With ``--recreation`` every round also runs ``torch_reference.py`` (the lean PyTorch
re-creation of the original's network, the reference of ``run_all.py``) with the scratch
interpreter's torch, 30 radial basis functions and the same pinning and settings, so that
both references are timed in one interleaved run (its training step builds the neighbour
list on the noised positions, about 3.4 k of the 10 k pairs; its sampling step is its EM step
under ``inference_mode`` at t = 0.05; it has no forward-only figure).

The load average the script records includes its own measured process (about 1 while a
1-thread side runs, 2 for 2 threads); the figures are flagged preliminary above 0.5. Process
CPU time is recorded beside wall time: cpu ≈ wall for a 1-thread run means nothing else took
its core; for 2 threads, cpu ≈ wall means the second core was busy with other work.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
RESULTS = HERE / "results"
DEFAULT_ORIGINAL_PYTHON = REPO.parent / "scratch" / "agedi_orig" / ".venv" / "bin" / "python"

N_CLUSTERS = 64
CUTOFF = 6.0
FEATURES = 64
LAYERS = 3
N_RBF = 30
T_LATE = 0.05
SAMPLE_EPS = 1e-3  # the original's default end of the time grid
CLUSTER_STD = 1.5  # Å, per-axis std of a Pt13 icosahedron's positions (the original's sampling score override)
ELEMENTS = ("Ni", "Cu", "Pd", "Ag", "Pt", "Au")  # run_all's vocabulary
TYPE_MAP = [0, 28, 29, 46, 47, 78, 79]  # the same elements for the original (0 = absorbing)
ISSUE_TARGETS = {"train_step": 3.0, "sample_step": 4.0, "forward": 3.0, "sample_500_structures_per_s": 8.0,
                 "time_to_quality": 20.0}
WORKLOADS = (("train_step_ms", "training step"), ("sample_step_ms", "one sampling step (t = 0.05)"),
             ("forward_ms", "network forward"))
MALLOC_ENV = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def pt13_positions(num: int, seed: int = 0):
    """Rattled (σ 0.1 Å), centred Pt13 icosahedra, as ``run_all.pt13_atoms`` makes them."""
    import numpy as np
    from ase.cluster import Icosahedron

    rng = np.random.default_rng(seed)
    base = Icosahedron("Pt", 2).positions
    pos = base[None] + rng.normal(scale=0.1, size=(num,) + base.shape)
    return pos - pos.mean(axis=1, keepdims=True)


def pairs_within(positions, cutoff: float = CUTOFF) -> int:
    """Directed pairs of one cluster closer than the cutoff."""
    import numpy as np

    d = np.linalg.norm(positions[:, None] - positions[None], axis=-1)
    return int(((d < cutoff) & (d > 0)).sum())


# --------------------------------------------------------------------------------------
# The original (scratch interpreter; nothing of this repository is imported but common.timed)
# --------------------------------------------------------------------------------------


def common_timed():
    """:func:`experiments.common.timed`, from the file: the original side runs outside the
    repository (``python -I``, a neutral cwd), so ``experiments`` is not importable there;
    ``common.py`` needs only the standard library and numpy to load."""
    import runpy

    return runpy.run_path(str(HERE.parent / "common.py"))["timed"]


def run_original(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    torch.manual_seed(0)

    import agedi
    from agedi import EulerMaruyamaSampler, create_dataset, create_diffusion
    from ase import Atoms

    timed = common_timed()

    out: dict = {"side": "original", "threads": args.threads, "torch_threads": torch.get_num_threads(),
                 "torch_interop_threads": torch.get_num_interop_threads(), "versions": versions_original(),
                 "affinity": sorted(os.sched_getaffinity(0)), "load_start": list(os.getloadavg())}
    atoms = [Atoms("Pt13", positions=p) for p in pt13_positions(N_CLUSTERS)]
    noisers = ("Positions", "Types") if args.types else ("Positions",)
    kw = {"type_map": TYPE_MAP} if args.types else {}
    diffusion = create_diffusion(model="PaiNN", cutoff=CUTOFF, feature_size=FEATURES, n_blocks=LAYERS, n_rbf=N_RBF,
                                 noisers=noisers, device="cpu", **kw)
    out["params"] = int(sum(p.numel() for p in diffusion.score_model.parameters()))
    out["noisers"] = [type(n).__name__ for n in diffusion.noisers]
    out["sde"] = type(getattr(diffusion.noisers[0], "sde", None)).__name__
    dataset = create_dataset(atoms, cutoff=CUTOFF, batch_size=N_CLUSTERS, train_split=1.0, val_split=0.0)
    batch = next(iter(dataset.train_dataloader()))
    out["batch"] = {"graphs": int(batch.num_graphs), "atoms": int(batch.pos.shape[0]), "edges": int(batch.edge_index.shape[1])}

    # training step: what Lightning's automatic optimisation runs per batch
    optimizer = diffusion.configure_optimizers()["optimizer"]
    diffusion.train()
    diffusion.score_model.training_mode()

    def train_once():
        optimizer.zero_grad(set_to_none=True)
        loss = diffusion.loss(batch, 0)["loss"]
        loss.backward()
        optimizer.step()

    out["train_step_ms"] = timed(train_once, args.repeats, args.warmup)
    edges = []
    with torch.no_grad():  # edges of the noised training batches (t ~ U(eps, 1)), outside the timing
        for _ in range(16):
            noised = batch.clone()
            diffusion.sample_time(noised)
            edges.append(int(diffusion.forward_step(noised).edge_index.shape[1]))
    out["train_edges_mean"] = statistics.mean(edges)

    # one sampling step at t = 0.05 from a state noised by the original's own forward kernel
    diffusion.eval()
    diffusion.score_model.sample_mode()
    n = batch.pos.shape[0]
    steps = args.sample_steps
    dt = torch.linspace(1, SAMPLE_EPS, steps)[0] - torch.linspace(1, SAMPLE_EPS, steps)[1]
    with torch.no_grad():
        state = batch.clone()
        state.add_batch_attr("time", torch.full((n, 1), T_LATE), type="node")
        state = diffusion.forward_step(state)
    out["sample_state_edges"] = int(state.edge_index.shape[1])
    score_fn = diffusion.score_model if args.network_score else cluster_score_fn(diffusion, torch)
    out["score_override"] = None if args.network_score else f"exact score of zero-CoM Gaussian clusters, std {CLUSTER_STD} A"
    sampler = EulerMaruyamaSampler(score_fn, diffusion.noisers)
    holder = {"b": state}

    def step_once():
        with torch.no_grad():
            b = holder["b"]
            b.add_batch_attr("time", torch.full((n, 1), T_LATE), type="node")
            holder["b"] = sampler.step(b, dt, False)

    out["sample_step_ms"] = timed(step_once, args.repeats, args.warmup)
    out["sample_state_edges_end"] = int(holder["b"].edge_index.shape[1])

    # the network alone
    def forward_once():
        with torch.no_grad():
            diffusion.score_model(holder["b"])

    out["forward_ms"] = timed(forward_once, args.repeats, args.warmup)

    if args.sample_runs > 0:
        import contextlib
        import io

        runs, finals = [], None
        for _ in range(args.sample_runs):
            sink = io.StringIO()
            t0, c0 = time.perf_counter(), time.process_time()
            with contextlib.redirect_stdout(sink):
                finals = agedi.sample(diffusion, n_samples=N_CLUSTERS, formula="Pt13", pbc=[False, False, False],
                                      steps=steps, batch_size=N_CLUSTERS, eps=SAMPLE_EPS, as_atoms=True,
                                      sampler=EulerMaruyamaSampler(score_fn, diffusion.noisers))
            runs.append({"s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0, "load": _load()})
        out["sample_run"] = {"steps": steps, "structures": len(finals), "runs": runs,
                             "median_s": statistics.median(r["s"] for r in runs),
                             "final_pairs_within_cutoff_mean": statistics.mean(pairs_within(a.positions) for a in finals)}
    out["load_end"] = list(os.getloadavg())
    return out


def cluster_score_fn(diffusion, torch):
    """The original's score model, then its position score (``pos_score``, which the
    noisers' denoising update reads) replaced by the exact score of zero-CoM Gaussian
    clusters of per-axis std ``CLUSTER_STD`` under the model's SDE: −(x − x̄) / (μ(t)² s² +
    σ²(t)). The network still runs every step (its cost is what is timed); the override
    keeps the trajectory cluster-sized, as a trained model's is. Without it the untrained
    network's output drives the atoms apart (no pair within the cutoff at the end), which
    would make the original's neighbour list and message passing artificially cheap
    (agedi_jax's cost does not depend on the state: its edge template is fixed)."""
    noiser = next(n for n in diffusion.noisers if n.key == "pos")
    sde = noiser.sde

    def fn(b):
        b = diffusion.score_model(b)
        x, g = b.pos, b.batch
        n_graphs = int(b.num_graphs)
        count = torch.bincount(g, minlength=n_graphs).clamp(min=1).to(x.dtype)
        com = torch.zeros(n_graphs, 3, dtype=x.dtype).index_add_(0, g, x) / count[:, None]
        t = b.time
        b["pos_score"] = -(x - com[g]) / (sde.mean(t) ** 2 * CLUSTER_STD**2 + sde.var(t))
        return b

    return fn


def versions_original() -> dict:
    from importlib import metadata

    v = {"python": platform.python_version()}
    for name in ("agedi", "torch", "schnetpack", "torch_geometric", "lightning", "ase", "matscipy", "numpy"):
        try:
            v[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            v[name] = None
    return v


# --------------------------------------------------------------------------------------
# agedi_jax (the project's venv)
# --------------------------------------------------------------------------------------


def jax_model(types: bool):
    """The run_all benchmark model with 30 radial basis functions (``types`` off: positions only)."""
    from agedi_jax.model import build_model
    from agedi_jax.vocab import TypeVocab
    from experiments.benchmarks import run_all

    vocab = TypeVocab(ELEMENTS)
    cfg = run_all.benchmark_config("painn", num_basis=N_RBF, types=types)
    return cfg, build_model(cfg, vocab), vocab


def run_jax(args) -> dict:
    import jax
    import jax.numpy as jnp

    from agedi_jax.config import replace
    from agedi_jax.edges import edge_vectors
    from agedi_jax.generate import make_sampler
    from agedi_jax.model import init_state, specialize
    from experiments.benchmarks import run_all
    from experiments.common import timed

    out: dict = {"side": "jax", "threads": args.threads, "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
                 "versions": {"python": platform.python_version(), "jax": jax.__version__,
                              "jaxlib": __import__("jaxlib").__version__},
                 "affinity": sorted(os.sched_getaffinity(0)), "load_start": list(os.getloadavg())}
    cfg, model, vocab = jax_model(args.types)
    atoms = run_all.pt13_atoms(N_CLUSTERS)
    batch = run_all.exact_batch(atoms, vocab)
    state = init_state(model, jax.random.PRNGKey(0), batch)
    out["params"] = int(sum(x.size for x in jax.tree.leaves(state.params)))
    out["batch"] = {"graphs": len(atoms), "atoms": int(batch.node_mask.sum()), "edges": int(batch.edge_mask.sum()),
                    "bucket": [batch.num_nodes, batch.num_edges, batch.num_graphs]}
    late = run_all.near_data_state(model, batch, T_LATE)
    out["sample_state_edges"] = int(jnp.sum(edge_vectors(late, CUTOFF).mask))
    cfg = replace(cfg, sample={"steps": args.sample_steps})

    # training step and one sampling step alone, as run_all times them
    params = run_all.step_timings(model, cfg, state, batch, late, args.repeats, out, train=True, warmup=args.warmup)
    for k in ("compile_train_s", "compile_step_s"):
        out[k] = round(out[k], 2)

    # the forward on the layout the batch gets (model.specialize: dense for these clusters)
    smodel = specialize(model, batch)
    out["layout"] = str(smodel.network.layout)
    t = jnp.full((batch.num_graphs,), T_LATE, jnp.float32)
    fwd = jax.jit(lambda p, b, t: smodel.apply(p, b, t)).lower(params, late, t).compile()
    out["forward_ms"] = timed(lambda: jax.block_until_ready(fwd(params, late, t)), args.repeats, args.warmup)

    if args.sample_runs > 0:
        key = jax.random.PRNGKey(1)
        gen, w = jnp.asarray(batch.graph_mask), jnp.float32(1.0)
        # the package's own sampler: it picks the layout from the template (generate.LayoutSampler)
        run = make_sampler(model, config=replace(cfg, sample={"sampler": "em", "steps": args.sample_steps}))
        run_c = run.lower(params, key, batch, gen, w).compile()  # the whole sampler as one program
        out["sampler_layouts"] = [str(x) for x in getattr(run, "layouts", [])]
        r = timed(lambda: jax.block_until_ready(run_c(params, key, batch, gen, w).positions), args.sample_runs, warmup=1)
        out["compile_sampler_s"] = round(r["first_ms"] / 1e3, 2)  # first call (compile + run; cached across processes)
        final = run_c(params, key, batch, gen, w)
        pos = jax.device_get(final.positions)[: N_CLUSTERS * 13].reshape(N_CLUSTERS, 13, 3)
        out["sample_run"] = {"steps": args.sample_steps, "structures": len(atoms), "timed": r,
                             "runs": [{"s": r["median"] / 1e3, "cpu_s": r["cpu_median"] / 1e3}], "median_s": r["median"] / 1e3,
                             "final_pairs_within_cutoff_mean": statistics.mean(pairs_within(p) for p in pos)}
    out["load_end"] = list(os.getloadavg())
    return out


# --------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------


def original_python(arg: str | None) -> Path:
    return Path(arg or os.environ.get("AGEDI_ORIGINAL_PYTHON") or DEFAULT_ORIGINAL_PYTHON)


def check_original(python: Path) -> tuple[bool, str]:
    if not python.exists():
        return False, f"no interpreter at {python}"
    code = "import agedi, torch, schnetpack; print(agedi.__file__, torch.__version__)"
    try:
        p = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=300, cwd="/", check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        return False, f"{python} failed to start: {err}"
    if p.returncode != 0:
        return False, f"`import agedi` failed with {python}: {p.stderr.strip().splitlines()[-1:]}"
    return True, p.stdout.strip()


def child_env(side: str, threads: int) -> dict:
    env = dict(os.environ)
    env.update(MALLOC_ENV)
    env.update(OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               OPENBLAS_NUM_THREADS=str(threads))
    if side == "jax":
        from agedi_jax.runtime import XLA_CPU_FLAG

        flags = [XLA_CPU_FLAG]  # the package's own setting (runtime.tune_xla)
        if threads == 1:
            flags += ["--xla_cpu_multi_thread_eigen=false", "intra_op_parallelism_threads=1"]
        env["XLA_FLAGS"] = " ".join(flags)
        env.setdefault("AGEDI_JAX_CACHE", str(Path(tempfile.gettempdir()) / "agedi_jax_original_bench_cache"))
        env.setdefault("JAX_PLATFORMS", "cpu")
    else:
        env.pop("XLA_FLAGS", None)
        env.pop("PYTHONPATH", None)
    return env


def launch_recreation(threads: int, args, python: Path) -> dict:
    """One process of ``torch_reference.py`` (the PyTorch re-creation) with the torch of the
    original's scratch interpreter, the original's 30 radial basis functions, pinned as the
    other sides; its figures under the driver's keys (``sample_step_ms``: its EM step under
    ``inference_mode`` at t = 0.05; no forward-only figure)."""
    cpus = "0" if threads == 1 else ",".join(str(i) for i in range(threads))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.json"
        cmd = ["taskset", "-c", cpus, str(python), "-I", str(HERE / "torch_reference.py"), "--threads", str(threads),
               "--n-rbf", str(N_RBF), "--batch", str(N_CLUSTERS), "--repeats", str(args.repeats), "--leak-steps", "2",
               "--json", str(out)]
        t0 = time.perf_counter()
        p = subprocess.run(cmd, cwd=tmp, env=child_env("original", threads), capture_output=True, text=True, check=False)
        wall = time.perf_counter() - t0
        if p.returncode != 0 or not out.exists():
            print(p.stdout[-3000:], p.stderr[-3000:], sep="\n", file=sys.stderr)
            raise RuntimeError(f"re-creation ({threads} thread(s)) failed with exit code {p.returncode}")
        ref = json.loads(out.read_text())
    def load(x):
        return list(x) if isinstance(x, (list, tuple)) else [x]

    res = {"side": "recreation", "threads": threads, "params": ref["params"], "process_wall_s": round(wall, 1),
           "taskset": cpus, "load_start": load(ref["load_average_start"]), "load_end": load(ref["load_average_end"]),
           "edges_train_mean": ref["edges_train_mean"], "edges_sample_step": ref["edges_sample_step"],
           "sample_500_steps_s_along_t": ref["sample_500_steps_s_along_t"]}
    for key, src in (("train_step_ms", "train_step_ms"), ("sample_step_ms", "sample_step_nograd_ms")):
        res[key] = dict(ref[src], repeats=args.repeats)
    return res


def launch(side: str, threads: int, args, python: Path, sample_runs: int) -> dict:
    if side == "recreation":
        return launch_recreation(threads, args, python)
    cpus = "0" if threads == 1 else ",".join(str(i) for i in range(threads))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.json"
        steps = args.jax_sample_steps if side == "jax" and args.jax_sample_steps else args.sample_steps
        common = ["--side", side, "--threads", str(threads), "--repeats", str(args.repeats), "--warmup", str(args.warmup),
                  "--sample-steps", str(steps), "--sample-runs", str(sample_runs), "--out", str(out)]
        if args.types:
            common.append("--types")
        if args.network_score:
            common.append("--network-score")
        if side == "original":  # a file path and a neutral cwd: the other Python sees nothing of the repository
            cmd, cwd = [str(python), "-I", str(Path(__file__).resolve())] + common, tmp
        else:
            cmd, cwd = [sys.executable, "-m", "experiments.benchmarks.original_agedi"] + common, str(REPO)
        cmd = ["taskset", "-c", cpus] + cmd
        t0 = time.perf_counter()
        p = subprocess.run(cmd, cwd=cwd, env=child_env(side, threads), capture_output=True, text=True, check=False)
        wall = time.perf_counter() - t0
        if p.returncode != 0 or not out.exists():
            print(p.stdout[-3000:], p.stderr[-3000:], sep="\n", file=sys.stderr)
            raise RuntimeError(f"{side} side ({threads} thread(s)) failed with exit code {p.returncode}")
        res = json.loads(out.read_text())
    res["process_wall_s"] = round(wall, 1)
    res["taskset"] = cpus
    return res


def summarize(runs: list[dict]) -> dict:
    """Median of the rounds' medians per workload (and the spread of the round medians)."""
    s: dict = {}
    for key, _ in WORKLOADS:
        meds = [r[key]["median"] for r in runs if key in r]
        cpus = [r[key]["cpu_median"] for r in runs if key in r]
        if meds:
            s[key] = {"median": statistics.median(meds), "round_medians": meds, "cpu_median": statistics.median(cpus),
                      "calls": sum(r[key]["repeats"] for r in runs if key in r)}
    samp = [r["sample_run"] for r in runs if "sample_run" in r]
    if samp:
        secs = [x["s"] for sr in samp for x in sr["runs"]]
        med = statistics.median(secs)
        cpu = statistics.median(x["cpu_s"] for sr in samp for x in sr["runs"])
        s["sample_run"] = {"steps": samp[0]["steps"], "runs_s": secs, "median_s": med, "cpu_s": cpu,
                           "structures_per_s": samp[0]["structures"] / med,
                           "final_pairs_within_cutoff_mean": samp[-1]["final_pairs_within_cutoff_mean"]}
    return s


def report(res: dict) -> None:
    print(f"\n=== original AGeDi {res['versions'].get('original', {}).get('agedi')} (torch "
          f"{res['versions'].get('original', {}).get('torch')}) vs agedi_jax: {N_CLUSTERS} x Pt13, "
          f"PaiNN {FEATURES}x{LAYERS}, {N_RBF} RBF, cutoff {CUTOFF} A, {'positions + types' if res['types'] else 'positions only'} ===")
    print(f"machine: {res['machine']['cpu']} ({res['machine']['nproc']} cores); load average "
          f"start {res['load_start']} end {res['load_end']}; {res['rounds']} rounds x {res['repeats']} calls per side")
    p = res.get("params", {})
    print(f"parameters: original {p.get('original')}, agedi_jax {p.get('jax')}; edges: original sampling state "
          f"{res.get('edges', {}).get('original_sample_state')}, training mean {res.get('edges', {}).get('original_train_mean')}; "
          f"agedi_jax {res.get('edges', {}).get('jax')} (fixed template)")
    print("ms per call: median of round medians [range of round medians]; speed-up = original / agedi_jax "
          "(wall; cpu: the same from process CPU time, less sensitive to other jobs)")
    hdr = f"{'workload':34s} {'thr':>3s} {'original':>22s} {'agedi_jax':>22s} {'speed-up':>9s} {'cpu':>7s} {'target':>7s}"
    print(hdr)
    for thr in res["threads"]:
        s = res["summary"][str(thr)]
        o, j = s.get("original", {}), s.get("jax", {})
        for key, name in WORKLOADS:
            if key not in o or key not in j:
                continue
            a, b = o[key], j[key]

            def cell(x):
                return f"{x['median']:.1f} [{min(x['round_medians']):.0f}-{max(x['round_medians']):.0f}]"

            tkey = key.replace("_ms", "")
            print(f"{name:34s} {thr:>3d} {cell(a):>22s} {cell(b):>22s} {a['median'] / b['median']:>8.2f}x "
                  f"{a['cpu_median'] / b['cpu_median']:>6.2f}x {ISSUE_TARGETS.get(tkey, ''):>6}x")
        if "sample_run" in o and "sample_run" in j:
            a, b = o["sample_run"], j["sample_run"]
            steps = str(a["steps"]) if a["steps"] == b["steps"] else f"{a['steps']} / {b['steps']}"
            print(f"{steps + '-step sampling, structures/s':34s} {thr:>3d} "
                  f"{a['structures_per_s']:>13.2f} ({a['median_s']:.0f} s) {b['structures_per_s']:>13.2f} ({b['median_s']:.1f} s) "
                  f"{b['structures_per_s'] / a['structures_per_s']:>8.2f}x {a['cpu_s'] / b['cpu_s']:>6.2f}x "
                  f"{ISSUE_TARGETS['sample_500_structures_per_s' if a['steps'] == b['steps'] else 'time_to_quality']:>6}x")
        rec = s.get("recreation")
        if rec:
            for key, name in WORKLOADS:
                if key in rec and key in j:
                    a, b = rec[key], j[key]
                    print(f"{name + ' (re-creation)':34s} {thr:>3d} {a['median']:>22.1f} {b['median']:>22.1f} "
                          f"{a['median'] / b['median']:>8.2f}x {a['cpu_median'] / b['cpu_median']:>6.2f}x")
    if any(s.get("recreation") for s in res["summary"].values()):
        print("(re-creation: experiments/benchmarks/torch_reference.py, 30 RBF, its EM step under inference_mode "
              "at t = 0.05; its training step builds the neighbour list on the noised positions, fewer edges)")
    if res.get("figures_preliminary"):
        print("(preliminary: the load average exceeded 0.5 during the run)")


def machine() -> dict:
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "nproc": os.cpu_count(), "platform": platform.platform()}


def drive(args) -> int:
    from experiments.common import write_json

    path = RESULTS / "original_agedi.json"
    if args.report_only:
        report(json.loads(path.read_text()))
        return 0
    python = original_python(args.original_python)
    ok, msg = check_original(python)
    if not ok:
        print(f"original AGeDi not available ({msg}); skipping. Set --original-python or $AGEDI_ORIGINAL_PYTHON "
              "to an interpreter with `agedi[full]==1.4` installed (see this script's docstring).")
        return 0
    print(f"original: {python} ({msg})")
    t_start = time.time()
    res: dict = {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine(), "load_start": list(os.getloadavg()),
                 "original_python": os.path.relpath(python, REPO), "rounds": args.rounds, "repeats": args.repeats, "warmup": args.warmup,
                 "threads": args.threads, "types": args.types, "sample_steps": args.sample_steps,
                 "jax_sample_steps": args.jax_sample_steps or args.sample_steps, "sample_rounds": args.sample_rounds, "workload": {
                     "structures": N_CLUSTERS, "atoms_per_structure": 13, "cutoff": CUTOFF, "features": FEATURES,
                     "interactions": LAYERS, "n_rbf": N_RBF, "t_sample_step": T_LATE, "elements": ELEMENTS},
                 "settings": {"original": {k: v for k, v in child_env("original", 1).items()
                                           if k.startswith(("MALLOC", "OMP", "MKL", "OPENBLAS"))},
                              "jax_1_thread_XLA_FLAGS": child_env("jax", 1)["XLA_FLAGS"],
                              "jax_2_threads_XLA_FLAGS": child_env("jax", 2)["XLA_FLAGS"],
                              "pinning": "taskset -c 0 (1 thread), taskset -c 0,1 (2 threads)",
                              "torch": "set_num_threads(n), set_num_interop_threads(1)"},
                 "runs": []}
    for r in range(args.rounds):
        for thr in args.threads:
            for side in ("original", "jax") + (("recreation",) if args.recreation else ()):
                sample_runs = (args.original_sample_runs if side == "original" else args.jax_sample_runs) \
                    if r < args.sample_rounds else 0
                print(f"round {r + 1}/{args.rounds}, {thr} thread(s), {side}: load {_load()} ...", flush=True)
                out = launch(side, thr, args, python, sample_runs)
                out["round"] = r
                res["runs"].append(out)
                print("   " + ", ".join(f"{k} {out[k]['median']:.1f} ms" for k, _ in WORKLOADS if k in out)
                      + (f", {out['sample_run']['steps']} steps {out['sample_run']['median_s']:.1f} s" if "sample_run" in out else "")
                      + f" (process {out['process_wall_s']} s)", flush=True)
    res["load_end"] = list(os.getloadavg())
    res["wall_s"] = round(time.time() - t_start, 1)
    res["summary"] = {str(thr): {side: summarize([o for o in res["runs"] if o["side"] == side and o["threads"] == thr])
                                 for side in ("original", "jax") + (("recreation",) if args.recreation else ())}
                      for thr in args.threads}
    first = {side: next(o for o in res["runs"] if o["side"] == side) for side in ("original", "jax")}
    res["versions"] = {side: first[side]["versions"] for side in first}
    res["params"] = {side: first[side]["params"] for side in first}
    res["edges"] = {"original_batch": first["original"]["batch"]["edges"],
                    "original_train_mean": first["original"]["train_edges_mean"],
                    "original_sample_state": first["original"]["sample_state_edges"],
                    "jax": first["jax"]["batch"]["edges"], "jax_within_cutoff_late": first["jax"]["sample_state_edges"]}
    res["speedup"] = {str(thr): {key: res["summary"][str(thr)]["original"][key]["median"]
                                 / res["summary"][str(thr)]["jax"][key]["median"] for key, _ in WORKLOADS}
                      for thr in args.threads}
    for thr in args.threads:
        o, j = res["summary"][str(thr)]["original"], res["summary"][str(thr)]["jax"]
        if "sample_run" in o and "sample_run" in j:
            res["speedup"][str(thr)]["sample_structures_per_s"] = j["sample_run"]["structures_per_s"] / o["sample_run"]["structures_per_s"]
            res["speedup"][str(thr)]["sample_cpu"] = o["sample_run"]["cpu_s"] / j["sample_run"]["cpu_s"]
        for key, _ in WORKLOADS:
            res["speedup"][str(thr)][key.replace("_ms", "_cpu")] = o[key]["cpu_median"] / j[key]["cpu_median"]
        rec = res["summary"][str(thr)].get("recreation")
        if rec:
            res["speedup_vs_recreation"] = res.get("speedup_vs_recreation", {})
            res["speedup_vs_recreation"][str(thr)] = {key: rec[key]["median"] / j[key]["median"] for key in rec
                                                      if key in j and key.endswith("_ms")}
    loads = [res["load_start"][0], res["load_end"][0]] + [o["load_start"][0] for o in res["runs"]]
    res["load_max_1min"] = max(loads)
    res["figures_preliminary"] = max(loads) > 0.5
    res["targets"] = ISSUE_TARGETS
    write_json(args.json or path, res)
    report(res)
    print(f"wrote {args.json or path} ({res['wall_s']:.0f} s)")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--side", choices=("original", "jax"), help="time one side in this process (else: drive both)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts (driver); one value per side run")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (driver)")
    p.add_argument("--repeats", type=int, default=8, help="timed calls per workload per process")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls first")
    p.add_argument("--types", action="store_true", help="model positions and types (default: positions only)")
    p.add_argument("--sample-steps", type=int, default=500, help="steps of the full sampling run")
    p.add_argument("--jax-sample-steps", type=int,
                   help="driver: steps of agedi_jax's full sampling run (default --sample-steps); e.g. 100 against the "
                        "original's 500 for time to quality (EM 100 keeps the PR-AUC of EM 500 for the geometric-schedule "
                        "cluster model, experiments/ablations/README.md)")
    p.add_argument("--sample-runs", type=int, default=1, help="full sampling runs in this process (side runs)")
    p.add_argument("--sample-rounds", type=int, default=1, help="rounds that also run the full sampler (driver)")
    p.add_argument("--original-sample-runs", type=int, default=1, help="full sampling runs per original process (driver)")
    p.add_argument("--jax-sample-runs", type=int, default=3, help="full sampling runs per jax process (driver)")
    p.add_argument("--network-score", action="store_true",
                   help="original: sample with the untrained network's own score (no cluster override)")
    p.add_argument("--recreation", action="store_true",
                   help="driver: also time the PyTorch re-creation (torch_reference.py, with the original's interpreter)")
    p.add_argument("--original-python", help="interpreter of the original's scratch env ($AGEDI_ORIGINAL_PYTHON)")
    p.add_argument("--out", help="side runs: write the figures here (JSON)")
    p.add_argument("--json", help="driver: results file (default results/original_agedi.json)")
    p.add_argument("--report-only", action="store_true", help="reprint the table from the results file")
    args = p.parse_args(argv)
    if args.side is None:
        return drive(args)
    args.threads = args.threads[0]
    res = run_original(args) if args.side == "original" else run_jax(args)
    text = json.dumps(res, indent=1)
    if args.out:
        Path(args.out).write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
