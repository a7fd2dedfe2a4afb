"""Shared pieces of the 2D study: sampling positions for template cells with
classifier-free guidance (Eq. 19), layer groups and validity of the samples, and the time
at which an SDE's kernel has a given std (to compare schedules at equal noise).

:func:`sample_templates` runs the package's compiled sampler
(:func:`agedi_jax.generate.make_sampler`) on templates packed into ONE exact bucket (atoms,
template edges, graphs of the largest chunk, no ladder rounding), so every guidance weight
and every chunk reuses one compilation; chunk ``k`` uses the key ``fold_in(seed, k)`` for
every w (common random numbers across weights).
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from agedi_jax.batch import Bucket, collate
from agedi_jax.config import replace
from agedi_jax.convert import atoms_from_batch, encode_structures
from agedi_jax.generate import make_sampler
from agedi_jax.symmetry import layer_group


def exact_bucket(chunks: Sequence[Sequence[Any]]) -> Bucket:
    """The smallest bucket holding every chunk of encoded structures (+1 padding each)."""
    return Bucket(
        max(sum(s.num_atoms for s in c) for c in chunks) + 1,
        max(sum(s.num_edges for s in c) for c in chunks) + 1,
        max(len(c) for c in chunks) + 1,
    )


def sample_templates(
    model,
    params,
    templates: Sequence[Any],
    labels: Sequence[int],
    weights: Sequence[float],
    *,
    steps: int,
    seed: int = 0,
    batch_size: int = 128,
    sampler: str = "em",
    grid: str = "uniform",
    progress: bool = True,
    options: dict | None = None,
) -> dict[float, list]:
    """Generate positions for every template (cell, pbc, composition) at every guidance
    weight ``w`` (Eq. 19: 1 = conditional, 0 = unconditional). Returns ``{w: [Atoms]}`` in
    template order; ``info`` holds label, guidance, steps, seed and index. ``options``: more
    fields of the ``sample`` config (e.g. ``snr``, ``corrector_steps`` of the "pc" sampler)."""
    cfg = replace(model.config, sample={"steps": int(steps), "seed": int(seed), "sampler": sampler, "grid": grid,
                                        **(options or {})})
    labels = [int(x) for x in labels]
    encoded = encode_structures(list(templates), model.vocab, cfg.model.cutoff, labels=labels,
                                max_atoms=cfg.data.max_atoms)
    chunks = [list(range(i, min(i + batch_size, len(encoded)))) for i in range(0, len(encoded), batch_size)]
    bucket = exact_bucket([[encoded[i] for i in c] for c in chunks])
    batches = [collate([encoded[i] for i in c], bucket) for c in chunks]
    run = make_sampler(model, guided=True, config=cfg)
    gen = jnp.zeros(bucket.n_graph, bool)
    root = jax.random.PRNGKey(int(seed))
    out: dict[float, list] = {}
    for w in weights:
        t0 = time.perf_counter()
        res: list = []
        for k, (chunk, batch) in enumerate(zip(chunks, batches)):
            r = jax.device_get(run(params, jax.random.fold_in(root, k), batch, gen, jnp.float32(w)))
            info = [dict(label=labels[i], guidance=float(w), steps=int(steps), seed=int(seed), index=i) for i in chunk]
            res += atoms_from_batch(r, model.vocab, info=info, label_key=None)
        out[float(w)] = res
        if progress:
            print(f"  sampled {len(res)} structures at w={w:g} in {time.perf_counter() - t0:.1f} s "
                  f"(bucket {bucket.n_node} atoms / {bucket.n_edge} edges / {bucket.n_graph} graphs)", flush=True)
    return out


def schedule_inverse(sde, t_eps: float, num: int = 200_001):
    """``(t_of, std_of)``: the kernel std (Å) of ``sde`` on a fine grid of ``[t_eps, 1]`` and
    its inverse (log-linear interpolation; the std increases with t for every schedule)."""
    ts = np.linspace(t_eps, 1.0, num)
    stds = np.asarray(sde.std(jnp.asarray(ts, jnp.float32)), np.float64)

    def t_of(std):
        return np.interp(np.log(std), np.log(stds), ts)

    def std_of(t):
        return np.interp(t, ts, stds)

    return t_of, std_of


def labelled_val(num: int | None = None) -> tuple[list, np.ndarray]:
    """The C2DB validation structures that have a layer group (``val.csv`` of the shared
    data, the first ``num`` rows only if given) and their groups ``[n]`` int."""
    from agedi_jax.data import load_c2db_csv
    from experiments.common import data_path

    ds = load_c2db_csv(data_path("c2db/val.csv"))
    structures, labels = list(ds.structures)[:num], np.asarray(ds.labels, int)[:num]
    keep = labels > 0
    return [s for s, k in zip(structures, keep) if k], labels[keep]


def layer_groups(structures: Sequence[Any], symprec: float = 0.1) -> np.ndarray:
    """Layer groups (spglib, ``symprec`` Å; 0 where spglib fails)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return np.array([layer_group(a, symprec=symprec) for a in structures], int)


def validity_summary(structures: Sequence[Any]) -> dict:
    """Fractions passing the package's validity checks (min distance / covalent overlap,
    own periodic image, inside the cell, one connected layer) and min-distance quantiles."""
    from agedi_jax.evaluation import validity

    v = validity(structures)
    d = np.asarray(v["min_distance"], float)
    d = d[np.isfinite(d)]
    return dict(
        n=int(v["n_structures"]),
        frac_distance_ok=round(v["frac_distance_ok"], 4),
        frac_image_ok=round(v["frac_image_ok"], 4),
        frac_inside_cell=round(v["frac_inside_cell"], 4),
        frac_connected=round(v["frac_connected"], 4),
        frac_valid=round(v["frac_valid"], 4),
        min_distance_p1=round(float(np.percentile(d, 1)), 3) if len(d) else None,
        min_distance_p50=round(float(np.median(d)), 3) if len(d) else None,
        min_distance_min=round(float(d.min()), 3) if len(d) else None,
    )
