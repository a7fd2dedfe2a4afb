"""Where the JAX training step spends its time on the CPU: XLA's per-op profile and the
optimised HLO of the step, its FLOPs and bytes against this machine's measured matmul rate
and memory bandwidth (the roofline position).

    python -m experiments.benchmarks.profile_step                 # 2 threads, ~1 min
    python -m experiments.benchmarks.profile_step --threads 1     # pinned to core 0
    python -m experiments.benchmarks.profile_step --workload forward --hlo /tmp/step.hlo

Workload: the model of ``original_agedi.py`` (the run_all benchmark PaiNN, 64 features × 3
interactions, 30 radial basis functions, cutoff 6 Å; positions only unless ``--types``) on the
exact padding of 64 Pt13 clusters (833 atom, 9,985 edge slots), on the layout the model picks for
that batch (the dense per-structure layout, `agedi_jax.model.specialize`).

* ``compiled.cost_analysis()``: FLOPs, transcendentals and bytes accessed of the step;
* HLO census: every instruction of the optimised module (``compiled.as_text()``), fusions
  classified by what they contain (dot > scatter > gather > reduce > elementwise), counted;
* per-op time: ``jax.profiler`` trace of ``--calls`` steps on the CPU, whose thunk events
  carry the HLO instruction names; time per class (summed over threads), the top ops;
* machine: float32 matmul rate (jnp, 1024² and 256², ``--threads`` threads) and memory
  bandwidth (jnp ``a + s·b`` on 128 MiB arrays, bytes = 3 × 128 MiB; numpy copy);
* roofline: arithmetic intensity FLOPs / bytes, the time bounds FLOPs / matmul rate and
  bytes / bandwidth against the measured step time.

Process settings as ``run_all.py`` (glibc heap kept, YNNPACK on dots); ``--threads 1`` also
sets ``--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1`` and pins the
process to core 0. Writes ``results/profile_step.json``: one entry per thread count and
workload (``threads_2_train``, ``threads_1_train``, ...), a run replacing its own entry.
The profiler's per-thunk events add a fixed cost per op, so the shares of the many small
ops (reductions, small elementwise fusions) are somewhat inflated against the untraced step.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    if "--default-xla" in sys.argv:
        os.environ["AGEDI_JAX_TUNE_XLA"] = "0"
    from experiments.benchmarks import run_all as _ra

    _threads = 1 if "--threads" in sys.argv and sys.argv[sys.argv.index("--threads") + 1] == "1" else 0
    # the package's setting (agedi_jax.runtime.tune_xla, applied by the import of run_all's
    # agedi_jax: no YNNPACK fusion); --default-xla: XLA's default
    _flags = []
    if _threads == 1:
        _flags += ["--xla_cpu_multi_thread_eigen=false", "intra_op_parallelism_threads=1"]
        os.sched_setaffinity(0, {0})
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + " ".join(_flags)).strip()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    PROCESS = _ra._process_settings()
else:
    PROCESS = {}

import argparse
import collections
import glob
import json
import re
import tempfile
import time
from pathlib import Path

import numpy as np

from experiments.common import timed, write_json

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
CLASSES = ("dot", "scatter", "gather", "reduce", "elementwise", "copy/layout", "control", "other")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.+?)\s+([\w\-]+)\((.*)$")
_COMP = re.compile(r"^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s*(?:\(.*\))?.*\{\s*$")


def parse_hlo(text: str) -> tuple[dict, dict]:
    """``(instructions, computations)`` of an HLO module's text: name -> (computation,
    opcode, shape, attributes), and computation -> list of instruction names."""
    instrs, comps, current = {}, collections.defaultdict(list), None
    for line in text.splitlines():
        if line.rstrip().endswith("{") and "=" not in line.split("{")[0].split("(")[0]:
            m = _COMP.match(line)
            if m:
                current = m.group(1)
                continue
        m = _INSTR.match(line)
        if m and current is not None:
            name, shape, opcode, rest = m.groups()
            instrs[name] = (current, opcode, shape, rest)
            comps[current].append(name)
    return instrs, comps


def _called(rest: str) -> list[str]:
    return re.findall(r"(?:calls|to_apply|body|condition|branch_computations)=\{?%?([\w.\-]+)", rest)


def classify(name: str, instrs: dict, comps: dict, _depth: int = 0) -> str:
    """The class of an instruction; a fusion (or call) by the ops it contains."""
    _, opcode, _, rest = instrs[name]
    if opcode in ("fusion", "call", "custom-call") and _depth < 4:
        inner = set()
        for c in _called(rest):
            for n in comps.get(c, []):
                inner.add(instrs[n][1])
                if instrs[n][1] in ("fusion", "call"):
                    inner.add(classify(n, instrs, comps, _depth + 1))
        if "ynn" in name or "xnn" in name:
            inner.add("dot")
        for cls, ops in (("dot", ("dot", "convolution")), ("scatter", ("scatter",)), ("gather", ("gather",)),
                         ("reduce", ("reduce", "reduce-window"))):
            if any(o in inner for o in ops) or cls in inner:
                return cls
        return "elementwise" if inner else "other"
    if opcode in ("dot", "convolution"):
        return "dot"
    if opcode in ("scatter", "gather"):
        return opcode
    if opcode in ("reduce", "reduce-window", "all-reduce"):
        return "reduce"
    if opcode in ("copy", "transpose", "bitcast", "reshape", "broadcast", "slice", "concatenate", "pad",
                  "dynamic-slice", "dynamic-update-slice", "copy-start", "copy-done"):
        return "copy/layout"
    if opcode in ("while", "conditional", "call", "tuple", "get-tuple-element", "parameter", "constant",
                  "after-all", "partition-id", "replica-id"):
        return "control"
    if opcode in ("add", "multiply", "subtract", "divide", "exp", "log", "tanh", "select", "compare", "maximum",
                  "minimum", "sqrt", "rsqrt", "negate", "convert", "abs", "power", "logistic", "and", "or", "iota",
                  "sine", "cosine", "clamp", "log-plus-one", "exponential-minus-one", "sign", "floor", "not"):
        return "elementwise"
    return "other"


def phase(name: str, instrs: dict) -> str:
    """Forward / backward (``transpose(...)`` in the op's source) / other (optimiser, loss,
    noise draws) from the instruction's metadata; "unknown" without metadata."""
    m = re.search(r'op_name="([^"]*)"', instrs[name][3])
    if not m:
        return "unknown"
    src = m.group(1)
    if "transpose(" in src:
        return "backward"
    if "jvp(" in src or "PaiNN" in src or "NequIP" in src:
        return "forward"
    return "other"


def census(text: str) -> dict:
    """Instruction counts of the executed computations (entry, loop bodies, branches), by class,
    fusions by kind."""
    instrs, comps = parse_hlo(text)
    fused = set()
    for _, opcode, _, rest in instrs.values():
        if opcode == "fusion":
            fused.update(_called(rest))
    executed = [n for n, (c, _, _, _) in instrs.items() if c not in fused and not c.startswith(("fused", "wrapped", "region"))]
    by_class = collections.Counter(classify(n, instrs, comps) for n in executed
                                   if instrs[n][1] not in ("parameter", "constant", "get-tuple-element", "tuple", "bitcast"))
    by_opcode = collections.Counter(instrs[n][1] for n in executed)
    inside = collections.Counter(instrs[n][1] for n, (c, _, _, _) in instrs.items() if c in fused)
    return {"instructions": len(instrs), "executed_ops": sum(by_class.values()), "by_class": dict(by_class),
            "by_opcode": dict(by_opcode.most_common(25)), "ops_inside_fusions": dict(inside.most_common(25)),
            "fusions": by_opcode.get("fusion", 0), "computations": len(comps)}


def size_class(shape: str, sizes: dict) -> str:
    """"edges" / "nodes" / "graphs" by the leading dimension of an op's (first) output,
    else "small" (parameters, scalars)."""
    m = re.search(r"\[(\d+)", shape)
    lead = int(m.group(1)) if m else 0
    for name, n in sizes.items():
        if lead == n:
            return name
    return "small"


def trace_ops(fn, calls: int, text: str, sizes: dict | None = None) -> dict:
    """Profile ``calls`` calls of ``fn``; the thunk time per HLO instruction and class."""
    import jax
    from jax.profiler import ProfileData

    instrs, comps = parse_hlo(text)
    logdir = tempfile.mkdtemp(prefix="profile_step_")
    t0 = time.perf_counter()
    with jax.profiler.trace(logdir):
        for _ in range(calls):
            fn()
    wall = time.perf_counter() - t0
    path = glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)[0]
    per_op: dict[str, float] = collections.defaultdict(float)
    count: dict[str, int] = collections.defaultdict(int)
    unmatched: dict[str, float] = collections.defaultdict(float)
    for plane in ProfileData.from_file(path).planes:
        if plane.name != "/host:CPU":
            continue
        for line in plane.lines:
            if line.name == "python":
                continue
            for ev in line.events:
                if ev.name in instrs:
                    per_op[ev.name] += ev.duration_ns / 1e6
                    count[ev.name] += 1
                elif not ev.name.startswith(("end:", "Thread", "ThunkExecutor", "Pjrt", "PjRt")):
                    unmatched[ev.name] += ev.duration_ns / 1e6
    total = sum(per_op.values())
    by_class = collections.defaultdict(float)
    n_by_class = collections.defaultdict(int)
    for name, ms in per_op.items():
        c = classify(name, instrs, comps)
        by_class[c] += ms
        n_by_class[c] += 1
    by_phase = collections.defaultdict(float)
    by_size = collections.defaultdict(float)
    for name, ms in per_op.items():
        by_phase[phase(name, instrs)] += ms
        by_size[size_class(instrs[name][2], sizes or {})] += ms
    top = sorted(per_op.items(), key=lambda kv: -kv[1])[:20]
    return {
        "calls": calls, "wall_ms_per_call_traced": 1e3 * wall / calls, "op_ms_per_call": total / calls,
        "by_class_ms_per_call": {c: by_class[c] / calls for c in CLASSES if c in by_class},
        "by_class_share": {c: by_class[c] / total for c in CLASSES if c in by_class},
        "distinct_ops_timed": {c: n_by_class[c] for c in CLASSES if c in n_by_class},
        "by_phase_share": {k: v / total for k, v in sorted(by_phase.items(), key=lambda kv: -kv[1])},
        "by_leading_dim_share": {k: v / total for k, v in sorted(by_size.items(), key=lambda kv: -kv[1])},
        "top_ops": [{"name": n, "class": classify(n, instrs, comps), "opcode": instrs[n][1], "shape": instrs[n][2][:120],
                     "phase": phase(n, instrs), "ms_per_call": ms / calls, "share": ms / total} for n, ms in top],
        "unmatched_events_ms_per_call": {k: v / calls for k, v in sorted(unmatched.items(), key=lambda kv: -kv[1])[:8]},
    }


def machine_rates(repeats: int) -> dict:
    import jax
    import jax.numpy as jnp

    out = {}
    f = jax.jit(lambda x, y: x @ y)
    for size in (1024, 256):
        a = jax.random.normal(jax.random.PRNGKey(0), (size, size), jnp.float32)
        r = timed(lambda a=a: jax.block_until_ready(f(a, a)), repeats * (4 if size == 256 else 1), warmup=2)
        out[f"matmul_{size}_gflops"] = 2.0 * size**3 / r["median"] / 1e6
        out[f"matmul_{size}_gflops_best"] = 2.0 * size**3 / r["min"] / 1e6
    n = 1 << 25  # 128 MiB of float32
    a = jnp.ones(n, jnp.float32)
    b = jnp.ones(n, jnp.float32)
    g = jax.jit(lambda x, y: x + 1.5 * y)
    r = timed(lambda: jax.block_until_ready(g(a, b)), repeats, warmup=2)
    out["bandwidth_jax_triad_GBps"] = 3 * 4 * n / r["median"] / 1e6
    out["bandwidth_jax_triad_GBps_best"] = 3 * 4 * n / r["min"] / 1e6
    x = np.ones(n, np.float32)
    y = np.empty_like(x)
    r = timed(lambda: np.copyto(y, x), repeats, warmup=2)
    out["bandwidth_numpy_copy_GBps"] = 2 * 4 * n / r["median"] / 1e6
    out["bandwidth_numpy_copy_GBps_best"] = 2 * 4 * n / r["min"] / 1e6
    return out


def cost(compiled) -> dict:
    ca = compiled.cost_analysis()
    ca = ca[0] if isinstance(ca, (list, tuple)) else ca
    keep = ("flops", "transcendentals", "bytes accessed", "bytes accessedout{}", "optimal_seconds")
    return {k: float(v) for k, v in ca.items() if k in keep}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2, choices=(1, 2), help="1: single-threaded XLA, pinned to core 0")
    p.add_argument("--workload", choices=("train", "forward"), default="train")
    p.add_argument("--types", action="store_true", help="model positions and types (default: positions only)")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--calls", type=int, default=10, help="steps in the profiler trace")
    p.add_argument("--hlo", help="also write the optimised HLO text here")
    p.add_argument("--default-xla", action="store_true", help="XLA's default fusions (YNNPACK's included) instead of the package's setting")
    p.add_argument("--json", default=str(RESULTS / "profile_step.json"))
    args = p.parse_args(argv)

    import jax
    import jax.numpy as jnp

    from agedi_jax.model import dense_layout, init_state, make_train_step, specialize
    from experiments.benchmarks import run_all
    from experiments.benchmarks.original_agedi import N_CLUSTERS, T_LATE, jax_model

    res: dict = {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "threads": args.threads, "workload": args.workload,
                 "types": args.types, "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""), "process": PROCESS,
                 "affinity": sorted(os.sched_getaffinity(0)), "jax": jax.__version__, "load_start": list(os.getloadavg())}
    _, model, vocab = jax_model(args.types)
    batch = run_all.exact_batch(run_all.pt13_atoms(N_CLUSTERS), vocab)
    state = init_state(model, jax.random.PRNGKey(0), batch)
    res["params"] = int(sum(x.size for x in jax.tree.leaves(state.params)))
    res["layout"] = dense_layout(model, batch)[1]
    key = jax.random.PRNGKey(1)
    t0 = time.perf_counter()
    if args.workload == "train":
        compiled = make_train_step(model).lower(state, batch, key).compile()
        holder = {"s": state, "i": 0}

        def call():
            holder["i"] += 1
            holder["s"], m = compiled(holder["s"], batch, jax.random.fold_in(key, holder["i"]))
            jax.block_until_ready(m["loss"])
    else:
        late = run_all.near_data_state(model, batch, T_LATE)
        t = jnp.full((batch.num_graphs,), T_LATE, jnp.float32)
        smodel = specialize(model, batch)  # the layout the train step and the sampler pick for this batch
        compiled = jax.jit(lambda p, b, t: smodel.apply(p, b, t)).lower(state.params, late, t).compile()

        def call():
            jax.block_until_ready(compiled(state.params, late, t))
    res["compile_s"] = time.perf_counter() - t0
    text = compiled.as_text()
    if args.hlo:
        Path(args.hlo).write_text(text)
    res["cost_analysis"] = cost(compiled)
    res["hlo"] = census(text)
    res["step_ms"] = timed(call, args.repeats, warmup=3)
    sizes = {"edges": batch.num_edges, "nodes": batch.num_nodes, "graphs": batch.num_graphs}
    res["profile"] = trace_ops(call, args.calls, text, sizes)
    res["machine"] = machine_rates(max(5, args.repeats // 2))

    flops = res["cost_analysis"].get("flops", float("nan"))
    nbytes = res["cost_analysis"].get("bytes accessed", float("nan"))
    t_s = res["step_ms"]["median"] / 1e3
    peak = res["machine"]["matmul_1024_gflops"] * 1e9
    bw = res["machine"]["bandwidth_jax_triad_GBps"] * 1e9
    res["roofline"] = {
        "arithmetic_intensity_flop_per_byte": flops / nbytes,
        "machine_balance_flop_per_byte": peak / bw,
        "achieved_gflops": flops / t_s / 1e9, "achieved_GBps": nbytes / t_s / 1e9,
        "fraction_of_matmul_rate": flops / t_s / peak, "fraction_of_bandwidth": nbytes / t_s / bw,
        "time_bound_flops_ms": 1e3 * flops / peak, "time_bound_bytes_ms": 1e3 * nbytes / bw,
        "step_ms": 1e3 * t_s,
    }
    res["load_end"] = list(os.getloadavg())
    # one file for both thread settings: this run replaces its own entry
    path = Path(args.json)
    try:
        everything = json.loads(path.read_text())
    except (OSError, ValueError):
        everything = {}
    everything = {k: v for k, v in everything.items() if k.startswith("threads_")}
    everything[f"threads_{args.threads}_{args.workload}{'_types' if args.types else ''}"] = res
    write_json(path, everything)
    report(res)
    print(f"wrote {args.json}")
    return 0


def report(res: dict) -> None:
    ca, pr, m, rf = res["cost_analysis"], res["profile"], res["machine"], res["roofline"]
    print(f"\n=== {res['workload']} step of agedi_jax PaiNN ({res['params']:,} parameters), 64 x Pt13, "
          f"{res['threads']} thread(s), layout: {res.get('layout')}; load {res['load_start'][0]:.2f} -> "
          f"{res['load_end'][0]:.2f} ===")
    print(f"step: {res['step_ms']['median']:.1f} ms median (cpu {res['step_ms']['cpu_median']:.1f} ms); traced "
          f"{pr['wall_ms_per_call_traced']:.1f} ms/call, op time {pr['op_ms_per_call']:.1f} ms/call (summed over threads)")
    print(f"XLA cost analysis: {ca.get('flops', 0) / 1e9:.2f} GFLOP, {ca.get('bytes accessed', 0) / 1e6:.0f} MB accessed, "
          f"{ca.get('transcendentals', 0) / 1e6:.2f} M transcendentals")
    h = res["hlo"]
    print(f"HLO: {h['executed_ops']} executed ops ({h['fusions']} fusions) of {h['instructions']} instructions; by class "
          + ", ".join(f"{k} {v}" for k, v in sorted(h["by_class"].items(), key=lambda kv: -kv[1])))
    print("time by class (share of op time, ms per call):")
    for c, s in sorted(pr["by_class_share"].items(), key=lambda kv: -kv[1]):
        print(f"  {c:12s} {100 * s:5.1f} %  {pr['by_class_ms_per_call'][c]:7.2f} ms  ({pr['distinct_ops_timed'][c]} ops)")
    print("by phase: " + ", ".join(f"{k} {100 * v:.0f} %" for k, v in pr["by_phase_share"].items())
          + "; by leading dimension of the output: "
          + ", ".join(f"{k} {100 * v:.0f} %" for k, v in pr["by_leading_dim_share"].items()))
    print("top ops:")
    for o in pr["top_ops"][:10]:
        print(f"  {o['name'][:40]:40s} {o['class']:11s} {o['ms_per_call']:6.2f} ms {100 * o['share']:5.1f} %  {o['shape'][:60]}")
    print(f"machine: matmul {m['matmul_1024_gflops']:.0f} GFLOP/s (1024^2), {m['matmul_256_gflops']:.0f} (256^2); "
          f"bandwidth {m['bandwidth_jax_triad_GBps']:.1f} GB/s (jnp triad), {m['bandwidth_numpy_copy_GBps']:.1f} (numpy copy)")
    print(f"roofline: intensity {rf['arithmetic_intensity_flop_per_byte']:.2f} FLOP/B (machine balance "
          f"{rf['machine_balance_flop_per_byte']:.1f}); achieved {rf['achieved_gflops']:.1f} GFLOP/s "
          f"({100 * rf['fraction_of_matmul_rate']:.1f} % of matmul), {rf['achieved_GBps']:.1f} GB/s "
          f"({100 * rf['fraction_of_bandwidth']:.1f} % of bandwidth); bounds {rf['time_bound_flops_ms']:.1f} ms (FLOPs), "
          f"{rf['time_bound_bytes_ms']:.1f} ms (bytes) vs {rf['step_ms']:.1f} ms")


if __name__ == "__main__":
    sys.exit(main())
