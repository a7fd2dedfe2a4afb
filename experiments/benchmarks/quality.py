"""Time to quality: the fewest network evaluations whose samples keep the PR-AUC of the
500-step Euler–Maruyama samples (performance issue, "time to quality").

For each sampler setting ``KIND:STEPS`` (``em`` Euler–Maruyama, paper Eq. 9; ``ode``
probability-flow ODE with Heun's method; ``pc`` Euler–Maruyama predictor + one Langevin
corrector) the script samples one cluster for every structure of the model's training split
(same atom counts, positions and types generated), times the compiled sampler (compile
separately), and scores the samples against the training split with precision–recall
curves (Sajjadi et al. 2018) on two feature protocols:

* ``paper``: species-resolved SOAP averaged over atoms, k-means 20 clusters, 10 runs;
* ``agnostic``: element-agnostic SOAP (geometry only), 20 clusters, 10 runs — the protocol
  that reacts to position errors (see :func:`agedi_jax.evaluation.soap_features`).

Network evaluations per structure: ``em`` steps + 1, ``ode`` 2 × steps + 1, ``pc`` steps × (1 +
corrector steps) + 1 (the ``+ 1`` is the final step that resolves MASK types and denoises). A
setting may also set sampler options: ``em:500:grid=quadratic``,
``pc:200:corrector_steps=3,snr=0.05`` (grid, snr, corrector_steps, denoise).

    python -m experiments.benchmarks.quality --run experiments/clusters/runs/cpu_gm \\
        --settings em:500 em:100 ode:50 pc:50 --json experiments/benchmarks/results/quality_gm.json

Structures are sampled in batches of ``--batch`` clusters whose atom counts are shuffled so
that every batch has a similar size mix and one exact padding bucket serves them all (one
compilation per setting). ``--extra NAME=PATH.extxyz`` scores an existing sample file as
well (e.g. ``experiments/clusters/results/cpu/samples_gm.extxyz``, 500 EM steps with
another seed: the seed-to-seed spread of the AUC). The JSON is rewritten after every
setting, so a long run can be read while it goes on.
"""

from __future__ import annotations

import os
import sys

# Process-wide settings of the benchmarks (README): glibc keeps freed memory in one heap
# (XLA's per-call temporary buffer is otherwise faulted in again at every call), and
# no YNNPACK fusion (agedi_jax.runtime.tune_xla, which ``import agedi_jax`` applies too).
# Must be set before jax starts.
os.environ.setdefault("MALLOC_ARENA_MAX", "1")
if "--default-xla" in sys.argv:
    os.environ["AGEDI_JAX_TUNE_XLA"] = "0"

import agedi_jax.runtime  # noqa: E402,F401  (applies tune_xla unless opted out above)

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent

from experiments.benchmarks import run_all as R  # noqa: E402  (helpers only; importing it changes no setting)

EVALS = {"em": lambda s: s + 1, "ode": lambda s: 2 * s + 1, "pc": lambda s: 2 * s + 1}
PROTOCOLS = {"paper": dict(element_agnostic=False), "agnostic": dict(element_agnostic=True)}


OPTIONS = {"grid": str, "snr": float, "corrector_steps": int, "denoise": lambda v: v.lower() in ("1", "true", "yes")}


def parse_setting(text: str) -> tuple[str, int, dict]:
    """``"em:100"`` -> ``("em", 100, {})``; ``"pc:200:corrector_steps=3,snr=0.05"`` or
    ``"em:500:grid=quadratic"`` also set sampler options (:data:`OPTIONS`, fields of
    ``SampleConfig``); a clear error otherwise."""
    parts = text.split(":")
    try:
        kind, steps = parts[0], int(parts[1])
        if len(parts) > 3:
            raise ValueError
        options = {}
        for item in (parts[2].split(",") if len(parts) == 3 and parts[2] else []):
            key, value = item.split("=")
            options[key] = OPTIONS[key](value)
    except (ValueError, IndexError, KeyError):
        raise SystemExit(f"setting {text!r}: expected KIND:STEPS[:OPTION=VALUE,...], e.g. em:100 or "
                         f"pc:200:corrector_steps=3,snr=0.05 (options: {sorted(OPTIONS)})") from None
    if kind not in EVALS or steps < 1:
        raise SystemExit(f"setting {text!r}: KIND is one of {sorted(EVALS)}, STEPS >= 1")
    return kind, steps, options


def network_evaluations(kind: str, steps: int, options: dict) -> int:
    """Network evaluations per structure (the final step included)."""
    if kind == "pc":
        return steps * (1 + int(options.get("corrector_steps", 1))) + 1
    return EVALS[kind](steps)


def sample_setting(model, params, sizes, kind: str, steps: int, seed: int, batch: int,
                   options: dict | None = None) -> tuple[list, dict]:
    """Sample one cluster per entry of ``sizes`` (shuffled into batches of ``batch``) with
    the sampler ``kind``, ``steps`` steps and further sampler ``options``; returns
    (structures, timing dict)."""
    import jax
    import jax.numpy as jnp

    from agedi_jax.batch import Bucket, collate
    from agedi_jax.config import replace
    from agedi_jax.convert import atoms_from_batch, encode_structures
    from agedi_jax.generate import make_sampler, make_templates

    options = dict(options or {})
    cfg = replace(model.config, sample=dict(sampler=kind, steps=steps, **options))
    order = np.random.default_rng(seed).permutation(len(sizes))
    structures, _ = make_templates(model, n_atoms=[int(sizes[i]) for i in order], num_samples=1)
    enc = encode_structures(structures, model.vocab, cfg.model.cutoff, max_atoms=cfg.data.max_atoms)
    chunks = [enc[i:i + batch] for i in range(0, len(enc), batch)]
    bucket = Bucket(max(sum(s.num_atoms for s in c) for c in chunks) + 1,
                    max(sum(s.num_edges for s in c) for c in chunks) + 1, batch + 1)
    run = make_sampler(model, config=cfg)
    root = jax.random.PRNGKey(seed)
    gen = jnp.asarray(np.arange(bucket.n_graph) < batch)
    w = jnp.float32(1.0)
    programs: dict = {}

    def program(key, b, g):
        # one program per network layout (make_sampler picks it per batch: dense for uniform clusters)
        r = run.for_batch(b) if hasattr(run, "for_batch") else run
        if id(r) not in programs:
            programs[id(r)] = r.lower(params, key, b, g, w).compile()
        return programs[id(r)]

    def compiled(params, key, b, g, w):
        return program(key, b, g)(params, key, b, g, w)

    first = jax.tree.map(jnp.asarray, collate(chunks[0], bucket))
    t0 = time.perf_counter()
    program(root, first, gen)
    compile_s = time.perf_counter() - t0
    out: list = [None] * len(sizes)
    t0, c0 = time.perf_counter(), time.process_time()
    for k, chunk in enumerate(chunks):
        b = collate(chunk, bucket)
        g = jnp.asarray(np.arange(bucket.n_graph) < len(chunk))
        res = jax.device_get(compiled(params, jax.random.fold_in(root, k), b, g, w))
        for j, atoms in enumerate(atoms_from_batch(res, model.vocab, label_key=None)):
            atoms.pbc = False
            out[order[k * batch + j]] = atoms
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    n_evals = network_evaluations(kind, steps, options)
    extra = {"options": options} if options else {}
    return out, dict(kind=kind, steps=steps, **extra, evals=n_evals, seed=seed, n=len(sizes), batches=len(chunks),
                     bucket=[bucket.n_node, bucket.n_edge, bucket.n_graph], compile_s=round(compile_s, 1),
                     sample_s=round(wall, 1), sample_cpu_s=round(cpu, 1),
                     structures_per_s=round(len(sizes) / wall, 3), load_average=round(os.getloadavg()[0], 2))


class Scorer:
    """PR-AUC of sample sets against one reference set (features of the reference cached)."""

    def __init__(self, reference: list, runs: int = 10, clusters: int = 20):
        from agedi_jax.evaluation import species_of

        self.reference, self.runs, self.clusters = reference, runs, clusters
        self.species = species_of(reference)
        self._ref = {name: self._features(reference, name) for name in PROTOCOLS}

    def _features(self, structures, protocol: str):
        from agedi_jax.evaluation import soap_features

        return soap_features(structures, species=self.species, sparse=True, **PROTOCOLS[protocol])

    def __call__(self, samples: list) -> dict:
        from agedi_jax.evaluation import compute_prd_from_embedding, prd_auc
        from agedi_jax.evaluation.validity import validity

        extra = sorted(set(species for a in samples for species in a.get_chemical_symbols()) - set(self.species))
        out: dict = {}
        for name in PROTOCOLS:
            if extra and name == "paper":  # samples with elements absent from the reference
                from agedi_jax.evaluation import species_of

                sp = species_of(self.reference, samples)
                from agedi_jax.evaluation import soap_features

                f_ref = soap_features(self.reference, species=sp, sparse=True, **PROTOCOLS[name])
                f_s = soap_features(samples, species=sp, sparse=True, **PROTOCOLS[name])
            else:
                f_ref, f_s = self._ref[name], self._features(samples, name)
            p, r = compute_prd_from_embedding(f_s, f_ref, num_clusters=self.clusters, num_runs=self.runs,
                                              enforce_balance=False)
            out[f"auc_{name}"] = round(prd_auc(p, r), 4)
        v = validity(samples)
        out["frac_valid"] = round(float(v["frac_valid"]), 4)
        out["median_min_distance"] = round(float(np.median(v["min_distance"])), 3)
        return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=HERE.parents[1] / "experiments/clusters/runs/cpu_gm",
                    help="run directory or checkpoint of the cluster model")
    ap.add_argument("--settings", nargs="+", default=["em:100", "ode:50", "pc:50", "em:200", "ode:25",
                                                      "em:50", "ode:100", "pc:100", "em:500"])
    ap.add_argument("--extra", nargs="*", default=[], help="NAME=PATH.extxyz sample files to score too")
    ap.add_argument("--seed", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--max-reference", type=int, default=0, help="0: the whole training split")
    ap.add_argument("--runs", type=int, default=10, help="k-means runs per PRD curve")
    ap.add_argument("--json", type=Path, default=HERE / "results" / "quality_gm.json")
    ap.add_argument("--default-xla", action="store_true", help="keep XLA's default YNNPACK fusions")
    args = ap.parse_args(argv)
    R._process_settings()  # glibc heap settings of run_all.py

    from agedi_jax.checkpoint import load_model
    from experiments.clusters import settings as cluster_settings

    model, params, config = load_model(args.run)
    reference = cluster_settings.reference_set(config, args.max_reference or None)
    sizes = [len(a) for a in reference]
    print(f"{args.run}: {len(reference)} reference clusters of {min(sizes)}-{max(sizes)} atoms; "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    t0 = time.perf_counter()
    scorer = Scorer(reference, runs=args.runs)
    print(f"reference features in {time.perf_counter() - t0:.0f} s", flush=True)
    try:  # repository-relative in the results file (no machine path)
        run_name = str(Path(args.run).resolve().relative_to(HERE.parents[1]))
    except ValueError:
        run_name = str(args.run)
    result: dict = dict(run=run_name, n_reference=len(reference), runs=args.runs, protocols=list(PROTOCOLS),
                        xla_flags=os.environ.get("XLA_FLAGS", ""), rows=[])
    if args.json.exists():  # resume: keep rows already computed with the same reference
        old = json.loads(args.json.read_text())
        if old.get("run") == result["run"] and old.get("n_reference") == len(reference):
            result["rows"] = old.get("rows", [])
    def key(kind, steps, seed, options=None):
        return kind, steps, seed, json.dumps(options or {}, sort_keys=True)

    done = {key(r["kind"], r["steps"], r.get("seed"), r.get("options")) for r in result["rows"]}

    def save():
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))

    from ase.io import read

    for item in args.extra:
        name, path = item.split("=", 1)
        if key(name, 0, None) in done:
            continue
        samples = read(path, ":")
        for a in samples:
            a.pbc = False
        row = dict(kind=name, steps=0, seed=None, source=path, n=len(samples), **scorer(samples))
        result["rows"].append(row)
        save()
        print(json.dumps(row), flush=True)
    for text in args.settings:
        kind, steps, options = parse_setting(text)
        if key(kind, steps, args.seed, options) in done:
            continue
        samples, row = sample_setting(model, params, sizes, kind, steps, args.seed, args.batch, options)
        t0 = time.perf_counter()
        row.update(scorer(samples))
        row["score_s"] = round(time.perf_counter() - t0, 1)
        result["rows"].append(row)
        save()
        print(json.dumps(row), flush=True)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
