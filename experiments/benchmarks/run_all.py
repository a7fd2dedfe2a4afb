"""All performance figures of issue 9 side by side, in one command: the PyTorch reference and
agedi_jax on the same batch of 64 Pt13 clusters, FLOP rate against the machine's matmul
rate, compile times, bfloat16, the untuned process, scaling and time to quality.

    python -m experiments.benchmarks.run_all                 # ~10 min on 2 shared cores
    python -m experiments.benchmarks.run_all --quick         # fewer repeats, no untuned run
    python -m experiments.benchmarks.run_all --scaling --quality   # also rerun those scripts

Sections (``--sections``; default all but the slow reruns):

* ``jax``: the package's default joint PaiNN model (64 features, 3 layers, cutoff 6 Å, VE
  SDE + absorbing types) on the exact padding of the batch (833 atom, 9,985 edge, 65 graph
  slots): the training step (``model.make_train_step``), one sampling step (the joint
  Euler–Maruyama + τ-leaping step of ``samplers.make_step``, jitted alone, at t = 0.05),
  the same step inside the compiled ``lax.scan`` of ``generate.make_sampler`` (time of N
  steps / N, prior, scan and final step included), the other samplers' cost per step,
  XLA's FLOP count per step, compile times (train step; sampler with the default 500 steps);
* ``matmul``: the float32 matmul rate of this machine (jnp and torch, 2 threads);
* ``bf16``: the network forward in bfloat16 against float32 (speed, output error);
* ``torch``: ``torch_reference.run_reference`` (training step, EM step with autograd off /
  on, memory growth), in this process, after the JAX sections;
* ``untuned``: the ``jax`` section again in a fresh process without the process settings
  below (what a user gets by default);
* ``scaling`` / ``quality``: figures of ``scaling.py`` and ``quality.py`` read from their
  JSON files (``--scaling`` / ``--quality`` rerun them first; quality takes about an hour).

Process settings (recorded in the JSON; ``--no-tuning`` leaves them out): glibc keeps freed
memory in one heap (``mallopt`` M_ARENA_MAX = 1, mmap and trim thresholds 1 GiB) — XLA's
temporary buffer of a call (≈ 100 MB for the training step) is otherwise mmap'ed by a
worker thread's arena and faulted in again, page by page, at every call; no YNNPACK fusion
(``--xla_cpu_experimental_ynn_fusion_type=``, as ``agedi_jax.runtime.tune_xla``; ``=dot``
before 2026-12-08); OpenMP waits passively (for
torch). Timings: median of ``--repeats`` calls after warm-up, with quartiles, process CPU
time and the load average, because the machine is shared.

Writes ``results/run_all.json`` and ``run_all.png`` (the side-by-side bars).
"""

from __future__ import annotations

import os
import sys

# tuning applies when run as a script; importing the helpers (gpu.py, scaling.py) changes nothing
TUNED = __name__ == "__main__" and "--no-tuning" not in sys.argv
if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _process_settings() -> dict:
    """glibc heap settings for this process (before any worker thread exists)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_arena_max, m_mmap_threshold, m_trim_threshold = -8, -3, -1
        ok = [bool(libc.mallopt(m_arena_max, 1)), bool(libc.mallopt(m_mmap_threshold, 1 << 30)),
              bool(libc.mallopt(m_trim_threshold, 1 << 30))]
        return {"malloc_arena_max_1": ok[0], "mmap_trim_threshold_1GiB": ok[1] and ok[2]}
    except (OSError, AttributeError):
        return {"malloc_arena_max_1": False, "mmap_trim_threshold_1GiB": False}


SETTINGS: dict = {"tuned": TUNED}
if TUNED:
    SETTINGS.update(_process_settings())
elif __name__ == "__main__":  # --no-tuning: XLA's default fusions too
    os.environ["AGEDI_JAX_TUNE_XLA"] = "0"
import agedi_jax.runtime  # noqa: E402,F401  (tune_xla: no YNNPACK fusion unless opted out above)
SETTINGS["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "")
SETTINGS["OMP_WAIT_POLICY"] = os.environ.get("OMP_WAIT_POLICY", "")

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

import numpy as np  # noqa: E402

from experiments import common  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
N_CLUSTERS = 64
ATOMS = 13
CUTOFF = 6.0
T_LATE = 0.05
ISSUE_TARGETS = {"sample_step_speedup": 4.0, "train_step_speedup": 3.0, "flop_fraction": 0.5,
                 "equal_quality_speedup": 20.0, "compile_s": 30.0}


def load() -> float:
    return round(os.getloadavg()[0], 2)


def timed(fn: Callable[[], Any], repeats: int, warmup: int = 2) -> dict:
    """:func:`experiments.common.timed` with this driver's default of two warm-up calls."""
    return common.timed(fn, repeats, warmup)


def fmt(r: dict | None, key: str = "median") -> str:
    if not r:
        return "n/a"
    if not isinstance(r, dict):
        return f"{float(r):.1f}"
    extra = [f"{r['p25']:.0f}-{r['p75']:.0f}"] if "p25" in r and "p75" in r else []
    if "cpu_median" in r:
        extra.append(f"cpu {r['cpu_median']:.0f}")
    if r.get("load"):
        extra.append(f"load {r['load'][0]:.1f}")
    return f"{r[key]:.1f}" + (f" ({'; '.join(extra)})" if extra else "")


def load_torch_reference():
    spec = importlib.util.spec_from_file_location("torch_reference", HERE / "torch_reference.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# --------------------------------------------------------------------------------------
# The JAX workload
# --------------------------------------------------------------------------------------


def pt13_atoms(num: int, seed: int = 0) -> list:
    """The reference's clusters (``torch_reference.pt13_clusters``: rattled, centred Pt13
    icosahedra) as ``ase.Atoms``."""
    from ase import Atoms
    from ase.cluster import Icosahedron

    rng = np.random.default_rng(seed)
    base = Icosahedron("Pt", 2).positions
    pos = base[None] + rng.normal(scale=0.1, size=(num,) + base.shape)
    pos -= pos.mean(axis=1, keepdims=True)
    return [Atoms("Pt13", positions=p) for p in pos]


def benchmark_config(network: str = "painn", **model):
    """The cluster model of the benchmark: the qcd_gm preset (VE linear SDE, σ_max 10 Å,
    joint positions + types) with a PaiNN of the reference's size (64 features, 3 layers,
    cutoff 6 Å), 6 element types like the reference's type head."""
    from agedi_jax import config as C

    m = dict(network=network, cutoff=CUTOFF, avg_num_neighbors=12.0)
    if network == "painn":
        m.update(features=64, num_layers=3)
    m.update(model)
    return C.replace(C.preset("qcd_gm"), model=m, process=dict(data_scale=0.759),
                     train=dict(batch_size=N_CLUSTERS, warmup_steps=10), sample=dict(batch_size=N_CLUSTERS))


def exact_batch(atoms: list, vocab, cutoff: float = CUTOFF):
    """A batch padded to exactly one spare atom, edge and graph slot (jax arrays)."""
    import jax
    import jax.numpy as jnp

    from agedi_jax.batch import Bucket
    from agedi_jax.convert import batch_from_atoms

    n = sum(len(a) for a in atoms)
    e = sum(len(a) * (len(a) - 1) for a in atoms)
    batch = batch_from_atoms(atoms, vocab, cutoff, bucket=Bucket(n + 1, e + 1, len(atoms) + 1))
    return jax.tree.map(jnp.asarray, batch)


def near_data_state(model, batch, t: float, seed: int = 1):
    """Clean positions plus the forward kernel's noise at time t (zero centre of mass): the
    state of a late sampling step, where every pair of a cluster is within the cutoff."""
    import jax
    import jax.numpy as jnp

    from agedi_jax.geometry import remove_com

    std = float(model.sde.std(jnp.float32(t)))
    noise = remove_com(batch, jax.random.normal(jax.random.PRNGKey(seed), batch.positions.shape))
    return batch._replace(positions=batch.positions + std * noise)


def _flops(compiled) -> float:
    ca = compiled.cost_analysis()
    ca = ca[0] if isinstance(ca, (list, tuple)) else ca
    return float(ca.get("flops", float("nan")))


def step_timings(model, cfg, state, batch, late, repeats: int, out: dict, train: bool = True, warmup: int = 2,
                 dense: bool = True):
    """Compile and time the package's jitted training step on ``batch`` (state donated,
    chained as in training; it picks the network's layout from the batch) and one joint
    sampling step (``samplers.make_step`` at t = T_LATE, jitted alone, with the model
    specialised to the batch as a sampler is: ``model.specialize``) on ``late``; figures
    go into ``out``. ``dense=False`` keeps both on the edge path. Returns the parameters
    the sampling step used (the trained EMA parameters when ``train``)."""
    import jax
    import jax.numpy as jnp

    from agedi_jax.model import make_train_step, specialize
    from agedi_jax.samplers import make_step

    key = jax.random.PRNGKey(1)
    layout = specialize(model, late).network.layout if dense else None
    out["layout"] = None if layout is None else str(layout)
    params = state.ema_params
    if train:
        t0, c0 = time.perf_counter(), time.process_time()
        train_c = make_train_step(model, dense=dense).lower(state, batch, key).compile()
        out["compile_train_s"] = time.perf_counter() - t0
        out["compile_train_cpu_s"] = time.process_time() - c0
        holder = {"s": state, "i": 0}

        def train_once():
            holder["i"] += 1
            holder["s"], m = train_c(holder["s"], batch, jax.random.fold_in(key, holder["i"]))
            jax.block_until_ready(m["loss"])

        out["train_step_ms"] = timed(train_once, repeats, warmup)
        out["train_flops"] = _flops(train_c)
        params = holder["s"].ema_params

    dt = (1.0 - cfg.process.t_eps) / cfg.sample.steps
    step_fn = make_step(model.sde, model.process, cfg.sample)
    score_fn = (specialize(model, late) if dense else model).score_fn(params)
    one = jax.jit(lambda k, s: step_fn(k, s, jnp.float32(T_LATE), jnp.float32(T_LATE - dt), score_fn))
    t0 = time.perf_counter()
    one_c = one.lower(key, late).compile()
    out["compile_step_s"] = time.perf_counter() - t0
    out["sample_step_flops"] = _flops(one_c)
    out["sample_step_ms"] = timed(lambda: jax.block_until_ready(one_c(key, late).positions), repeats, warmup)
    return params


def jax_workloads(network: str, repeats: int, scan_steps: int, samplers: bool = True, compile_sampler: bool = True,
                  clusters: int = N_CLUSTERS, atoms_list: list | None = None, model_overrides: dict | None = None) -> dict:
    """Time the training step, the sampling step (alone and inside the scan) and compiles."""
    import jax
    import jax.numpy as jnp

    from agedi_jax.config import replace
    from agedi_jax.edges import edge_vectors
    from agedi_jax.generate import make_sampler
    from agedi_jax.model import build_model, init_state, specialize
    from agedi_jax.vocab import TypeVocab

    vocab = TypeVocab(("Ni", "Cu", "Pd", "Ag", "Pt", "Au"))
    atoms = atoms_list if atoms_list is not None else pt13_atoms(clusters)
    cfg = benchmark_config(network, **(model_overrides or {}))
    model = build_model(cfg, vocab)
    batch = exact_batch(atoms, vocab)
    out: dict[str, Any] = {"network": network, "structures": len(atoms), "atoms": int(batch.node_mask.sum()),
                           "bucket": [batch.num_nodes, batch.num_edges, batch.num_graphs],
                           "template_edges": int(batch.edge_mask.sum())}
    state = init_state(model, jax.random.PRNGKey(0), batch)
    out["params"] = int(sum(x.size for x in jax.tree.leaves(state.params)))
    late = near_data_state(model, batch, T_LATE)
    out["edges_in_cutoff_late"] = int(jnp.sum(edge_vectors(late, CUTOFF).mask))

    key = jax.random.PRNGKey(1)
    params = step_timings(model, cfg, state, batch, late, repeats, out, train=True)
    out["train_structures_per_s"] = 1e3 * len(atoms) / out["train_step_ms"]["median"]

    # the same step inside the compiled scan of make_sampler: (prior + N steps + final) / N
    gen = jnp.asarray(batch.graph_mask)
    w = jnp.float32(1.0)
    kinds = ("em", "ode", "pc") if samplers else ("em",)
    out["scan"] = {}
    for kind in kinds:
        c = replace(cfg, sample=dict(sampler=kind, steps=scan_steps))
        run = make_sampler(specialize(model, batch), config=c)
        t0 = time.perf_counter()
        run_c = run.lower(params, key, batch, gen, w).compile()
        comp = time.perf_counter() - t0
        r = timed(lambda: jax.block_until_ready(run_c(params, key, batch, gen, w).positions),
                  max(2, repeats // 5), warmup=1)
        evals = {"em": 1, "ode": 2, "pc": 2}[kind] * scan_steps + 1
        out["scan"][kind] = {"steps": scan_steps, "evals": evals, "compile_s": comp, "run_ms": r,
                             "ms_per_step": r["median"] / scan_steps, "ms_per_eval": r["median"] / evals,
                             "cpu_ms_per_eval": r["cpu_median"] / evals}
    em = out["scan"]["em"]
    out["sample_500_steps_s"] = 500 * em["ms_per_step"] / 1e3
    out["sample_structures_per_s_500_steps"] = len(atoms) / out["sample_500_steps_s"]
    if compile_sampler:  # the default sampler (500 steps) as sample_atoms compiles it
        run = make_sampler(specialize(model, batch), config=replace(cfg, sample=dict(sampler="em", steps=500)))
        t0, c0 = time.perf_counter(), time.process_time()
        run.lower(params, key, batch, gen, w).compile()
        out["compile_sampler_s"] = time.perf_counter() - t0
        out["compile_sampler_cpu_s"] = time.process_time() - c0
    return out


def matmul_rate(repeats: int, size: int = 1024) -> dict:
    """float32 GFLOP/s of a square matmul (jnp; torch with 2 threads when installed)."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.PRNGKey(0), (size, size), jnp.float32)
    f = jax.jit(lambda x, y: x @ y)
    flops = 2.0 * size**3
    r = timed(lambda: jax.block_until_ready(f(a, a)), repeats)
    out = {"size": size, "jax_ms": r, "jax_gflops": flops / r["median"] / 1e6,
           "jax_gflops_best": flops / r["min"] / 1e6}
    try:
        import torch

        torch.set_num_threads(2)
        x = torch.randn(size, size)
        rt = timed(lambda: torch.mm(x, x), repeats)
        out.update(torch_ms=rt, torch_gflops=flops / rt["median"] / 1e6, torch_gflops_best=flops / rt["min"] / 1e6)
    except ImportError:
        pass
    return out


def bf16_forward(repeats: int) -> dict:
    """Network forward with parameters and features in bfloat16 (edge geometry computed in
    float32 and cast) against float32: time and relative error of the position output."""
    import jax
    import jax.numpy as jnp

    from agedi_jax.edges import edge_vectors
    from agedi_jax.model import build_model, init_state
    from agedi_jax.vocab import TypeVocab

    vocab = TypeVocab(("Ni", "Cu", "Pd", "Ag", "Pt", "Au"))
    model = build_model(benchmark_config("painn"), vocab)
    batch = exact_batch(pt13_atoms(N_CLUSTERS), vocab)
    params = init_state(model, jax.random.PRNGKey(0), batch).params
    late = near_data_state(model, batch, T_LATE)
    t = jnp.full((batch.num_graphs,), T_LATE, jnp.float32)

    def fwd(p, b, t, dtype):
        e = edge_vectors(b, CUTOFF)
        e = e._replace(vectors=e.vectors.astype(dtype), lengths=e.lengths.astype(dtype))
        b = b._replace(positions=b.positions.astype(dtype), cell=b.cell.astype(dtype), shifts=b.shifts.astype(dtype))
        p = jax.tree.map(lambda x: x.astype(dtype), p)
        return model.network.apply(p, b, t.astype(dtype), edges=e).positions.astype(jnp.float32)

    out = {}
    ref = None
    for name, dtype in (("float32", jnp.float32), ("bfloat16", jnp.bfloat16)):
        f = jax.jit(lambda p, b, t, dtype=dtype: fwd(p, b, t, dtype)).lower(params, late, t).compile()
        y = f(params, late, t)
        ref = y if ref is None else ref
        out[name] = {"forward_ms": timed(lambda: jax.block_until_ready(f(params, late, t)), repeats),
                     "rel_error": float(jnp.linalg.norm(y - ref) / jnp.linalg.norm(ref))}
    return out


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------


def equal_quality(res: dict) -> dict | None:
    """From ``quality.py``'s rows: the cheapest setting whose PR-AUC (both protocols) is
    within 0.02 of the 500-step EM samples of the same seed, and its structures/s on the
    benchmark batch (cost per network evaluation from the scan timings)."""
    q = res.get("quality")
    jx = res.get("jax")
    if not q or not jx:
        return None
    rows = [r for r in q["rows"] if r.get("evals")]
    base = [r for r in rows if r["kind"] == "em" and r["steps"] == 500]
    if not base:  # the 500-step samples of experiments/clusters/sample.py (another seed)
        base = [dict(r, kind="em", steps=500, evals=501) for r in q["rows"] if str(r["kind"]).startswith("em500")]
    if not base:
        return None
    base = base[0]
    ok = [r for r in rows if all(abs(r[f"auc_{p}"] - base[f"auc_{p}"]) <= 0.02 for p in ("paper", "agnostic"))]
    best = min(ok, key=lambda r: r["evals"])
    per_eval = jx["scan"][best["kind"]]["ms_per_eval"] if best["kind"] in jx["scan"] else jx["scan"]["em"]["ms_per_eval"]
    jax_rate = jx["structures"] / (best["evals"] * per_eval / 1e3)
    out = {"baseline": {k: base[k] for k in ("kind", "steps", "evals", "auc_paper", "auc_agnostic")},
           "chosen": {k: best[k] for k in ("kind", "steps", "evals", "auc_paper", "auc_agnostic", "frac_valid")},
           "jax_structures_per_s": jax_rate}
    t = res.get("torch")
    if t and t.get("available"):
        out["torch_structures_per_s_500_em"] = t["sample_structures_per_s_500_steps"]
        out["speedup"] = jax_rate / t["sample_structures_per_s_500_steps"]
    return out


def report(res: dict) -> None:
    jx, tr, mm = res.get("jax"), res.get("torch"), res.get("matmul")
    print(f"\n=== agedi_jax vs torch reference: {N_CLUSTERS} x Pt13 on {res['machine']} ===")
    print(f"process settings: {json.dumps(res['settings'])}")
    have_torch = bool(tr and tr.get("available"))
    if jx:
        print(f"JAX model: {jx['network']}, {jx['params']:,} parameters, bucket {jx['bucket']} (exact), "
              f"{jx['edges_in_cutoff_late']} of {jx['template_edges']} template edges within {CUTOFF} Å at t = {T_LATE}")
    if have_torch:
        print(f"torch model: {tr['params']:,} parameters (n_rbf {tr['n_rbf']}), {tr['edges_sample_step']} edges in the timed "
              f"sampling step, {tr['edges_train_mean']:.0f} in training (mean)")
    print("ms per call: median (quartiles; process CPU ms; load average at start)")
    rows = []
    if jx:
        rows.append(("training step", jx["train_step_ms"], tr.get("train_step_ms") if have_torch else None))
        rows.append(("sampling step (late, alone)", jx["sample_step_ms"], tr.get("sample_step_nograd_ms") if have_torch else None))
        em = jx["scan"]["em"]
        rows.append((f"sampling step in scan (/{em['steps']})", {**em["run_ms"], **{k: em["run_ms"][k] / em["steps"]
                     for k in ("median", "p25", "p75", "min", "cpu_median")}}, None))
    print(f"{'workload':30s} {'agedi_jax':>40s} {'torch':>40s} {'speed-up':>9s}")
    for name, a, b in rows:
        ratio = f"{b['median'] / a['median']:.2f}x" if b else ""
        print(f"{name:30s} {fmt(a):>40s} {fmt(b):>40s} {ratio:>9s}")
    if have_torch:
        print(f"torch EM step with autograd on: {fmt(tr['sample_step_autograd_ms'])}; 500 EM steps "
              f"(mean cost along t): {tr['sample_500_steps_s_along_t']:.1f} s = {tr['sample_structures_per_s_500_steps']:.2f} "
              f"structures/s; RSS growth carried / detached: {tr['chain_carried_late']['growth_mb']:.0f} / "
              f"{tr['chain_detached_late']['growth_mb']:.0f} MB over {tr['chain_carried_late']['steps']} steps")
    if jx:
        print(f"agedi_jax 500 EM steps: {jx['sample_500_steps_s']:.1f} s = {jx['sample_structures_per_s_500_steps']:.2f} "
              f"structures/s (scan cost per step x 500; every template edge is computed at every step); training "
              f"{jx['train_structures_per_s']:.0f} structures/s")
        sc = jx["scan"]
        print("cost per network evaluation in the scan: " + ", ".join(
            f"{k} {v['ms_per_eval']:.1f} ms (cpu {v['cpu_ms_per_eval']:.1f})" for k, v in sc.items()))
        print(f"compile: train step {jx['compile_train_s']:.1f} s (cpu {jx['compile_train_cpu_s']:.1f}), sampler "
              f"(500 EM steps) {jx.get('compile_sampler_s', float('nan')):.1f} s (cpu {jx.get('compile_sampler_cpu_s', float('nan')):.1f}),"
              f" one step {jx['compile_step_s']:.1f} s; target <= {ISSUE_TARGETS['compile_s']:.0f} s")
    if jx and mm:
        rate = mm["jax_gflops"]
        for name, fl, t in (("sampling step", jx["sample_step_flops"], jx["sample_step_ms"]),
                            ("training step", jx["train_flops"], jx["train_step_ms"])):
            g = fl / t["median"] / 1e6
            gb = fl / t["min"] / 1e6
            print(f"{name}: {fl / 1e9:.3f} GFLOP (XLA cost analysis) -> {g:.1f} GFLOP/s median, {gb:.1f} best = "
                  f"{100 * g / rate:.0f} % / {100 * gb / rate:.0f} % of the matmul rate {rate:.1f} GFLOP/s "
                  f"(floor {fl / rate / 1e6:.1f} ms)")
        tm = f", torch {mm['torch_gflops']:.1f} (best {mm['torch_gflops_best']:.1f})" if "torch_gflops" in mm else ""
        print(f"matmul {mm['size']}^3 float32: jnp {mm['jax_gflops']:.1f} GFLOP/s (best {mm['jax_gflops_best']:.1f}){tm}")
    if res.get("bf16"):
        b = res["bf16"]
        print(f"bfloat16 forward: {fmt(b['bfloat16']['forward_ms'])} vs float32 {fmt(b['float32']['forward_ms'])}; "
              f"relative error of the position output {b['bfloat16']['rel_error']:.2f}")
    un = res.get("untuned")
    if un and jx:
        print(f"untuned process (default glibc heap and XLA fusions): training {fmt(un['train_step_ms'])}, "
              f"sampling step {fmt(un['sample_step_ms'])}, scan {un['scan']['em']['ms_per_step']:.1f} ms/step; "
              f"tuned/untuned: training {un['train_step_ms']['median'] / jx['train_step_ms']['median']:.2f}x, "
              f"sampling step {un['sample_step_ms']['median'] / jx['sample_step_ms']['median']:.2f}x")
    eq = equal_quality(res)
    if eq:
        c, b = eq["chosen"], eq["baseline"]
        s = f"; torch 500 EM steps {eq['torch_structures_per_s_500_em']:.2f} -> {eq['speedup']:.1f}x" if "speedup" in eq else ""
        print(f"equal quality: {c['kind']} {c['steps']} steps ({c['evals']} evaluations) keeps PR-AUC within 0.02 of "
              f"EM 500 (paper {c['auc_paper']:.3f} vs {b['auc_paper']:.3f}, agnostic {c['auc_agnostic']:.3f} vs "
              f"{b['auc_agnostic']:.3f}): {eq['jax_structures_per_s']:.1f} structures/s on the benchmark batch{s}")
    if jx and have_torch:
        sp = tr["sample_step_nograd_ms"]["median"] / jx["sample_step_ms"]["median"]
        spt = tr["train_step_ms"]["median"] / jx["train_step_ms"]["median"]
        print(f"targets: sampling step {sp:.2f}x (>= {ISSUE_TARGETS['sample_step_speedup']}x), training step {spt:.2f}x "
              f"(>= {ISSUE_TARGETS['train_step_speedup']}x)")


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    jx, tr = res.get("jax"), res.get("torch")
    if not jx or not tr or not tr.get("available"):
        return
    names = ["training step", "sampling step\n(late, alone)", "sampling step\n(500-step mean)"]
    torch_ms = [tr["train_step_ms"]["median"], tr["sample_step_nograd_ms"]["median"],
                1e3 * tr["sample_500_steps_s_along_t"] / 500]
    jax_ms = [jx["train_step_ms"]["median"], jx["sample_step_ms"]["median"], jx["scan"]["em"]["ms_per_step"]]
    un = res.get("untuned")
    fig, ax = plt.subplots(figsize=(7, 3.6))
    x = np.arange(len(names))
    width = 0.27 if un else 0.38
    ax.bar(x - width, torch_ms, width, label="torch reference")
    ax.bar(x, jax_ms, width, label="agedi_jax")
    if un:
        ax.bar(x + width, [un["train_step_ms"]["median"], un["sample_step_ms"]["median"], un["scan"]["em"]["ms_per_step"]],
               width, label="agedi_jax, untuned process")
    for i, (a, b) in enumerate(zip(torch_ms, jax_ms)):
        ax.text(x[i], b, f"{a / b:.1f}x", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, names)
    ax.set_ylabel("ms per step (median)")
    ax.set_title(f"{N_CLUSTERS} x Pt13, 2 shared CPU cores (load {jx['train_step_ms']['load'][0]:.1f})", fontsize=10)
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sections", nargs="+",
                    default=["jax", "matmul", "bf16", "torch", "untuned", "scaling", "quality"])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--scan-steps", type=int, default=50)
    ap.add_argument("--quick", action="store_true", help="5 repeats, 20 scan steps, no untuned run")
    ap.add_argument("--scaling", action="store_true", help="rerun scaling.py first")
    ap.add_argument("--quality", action="store_true", help="rerun quality.py first (about an hour)")
    ap.add_argument("--no-tuning", action="store_true", help="default glibc heap and XLA fusions")
    ap.add_argument("--report-only", action="store_true", help="print the report and plot of an existing --json")
    ap.add_argument("--json", type=Path, default=RESULTS / "run_all.json")
    ap.add_argument("--plot", type=Path, default=HERE / "run_all.png")
    args = ap.parse_args(argv)
    if args.report_only:
        res = json.loads(args.json.read_text())
        for key, name in (("quality", "quality_gm.json"), ("scaling", "scaling.json")):
            if (RESULTS / name).exists():  # the latest figures of the slow scripts
                res[key] = json.loads((RESULTS / name).read_text())
        res["equal_quality"] = equal_quality(res)
        args.json.write_text(json.dumps(res, indent=1, default=float))
        report(res)
        plot(res, args.plot)
        return 0
    if args.quick:
        args.repeats, args.scan_steps = 5, 20
        args.sections = [s for s in args.sections if s != "untuned"]

    import jax

    res: dict[str, Any] = {"settings": SETTINGS, "jax": None, "load_average_start": load(),
                           "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                                      f"jax {jax.__version__} ({jax.default_backend()})",
                           "repeats": args.repeats, "time": time.strftime("%Y-%m-%d %H:%M")}
    t_start = time.perf_counter()
    if "jax" in args.sections:
        print(f"[jax] PaiNN workloads (load {load()})", flush=True)
        res["jax"] = jax_workloads("painn", args.repeats, args.scan_steps, compile_sampler=not args.quick)
    if "matmul" in args.sections:
        print(f"[matmul] (load {load()})", flush=True)
        res["matmul"] = matmul_rate(args.repeats)
    if "bf16" in args.sections:
        print(f"[bf16] (load {load()})", flush=True)
        res["bf16"] = bf16_forward(args.repeats)
    if "torch" in args.sections:
        print(f"[torch] reference (load {load()})", flush=True)
        res["torch"] = load_torch_reference().run_reference(repeats=args.repeats, batch=N_CLUSTERS)
    if "untuned" in args.sections and TUNED:
        print(f"[untuned] jax section in a fresh process without the process settings (load {load()})", flush=True)
        tmp = RESULTS / "run_all_untuned.json"
        env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
        subprocess.run([sys.executable, __file__, "--no-tuning", "--sections", "jax", "--repeats", str(args.repeats),
                        "--scan-steps", str(args.scan_steps), "--json", str(tmp), "--plot", "/dev/null"],
                       check=True, env=env, stdout=subprocess.DEVNULL)
        res["untuned"] = json.loads(tmp.read_text())["jax"]
    if "scaling" in args.sections:
        path = RESULTS / "scaling.json"
        if args.scaling:
            subprocess.run([sys.executable, str(HERE / "scaling.py")], check=True)
        res["scaling"] = json.loads(path.read_text()) if path.exists() else None
    if "quality" in args.sections:
        path = RESULTS / "quality_gm.json"
        if args.quality:
            subprocess.run([sys.executable, str(HERE / "quality.py")], check=True)
        res["quality"] = json.loads(path.read_text()) if path.exists() else None
        res["equal_quality"] = equal_quality(res)
    res["load_average_end"] = load()
    res["wall_s"] = time.perf_counter() - t_start
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(res, indent=1, default=float))
    report(res)
    if str(args.plot) != "/dev/null":
        plot(res, args.plot)
    print(f"wrote {args.json}" + (f" and {args.plot}" if str(args.plot) != "/dev/null" else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
