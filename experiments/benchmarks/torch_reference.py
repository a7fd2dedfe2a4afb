"""PyTorch reference workload for the performance comparison: the original AGeDi's PaiNN score model.

A self-contained, eager-mode PyTorch re-creation of the model and of the per-step work the
original torch package does, written from the PaiNN paper (Schütt, Unke & Gastegger, ICML 2021)
and the layout of schnetpack 2.x as AGeDi configures it:

* representation: schnetpack-style PaiNN, 64 features, 3 interaction + mixing blocks, an atomic
  number embedding (101 rows, row 0 fixed at zero), ``n_rbf`` Gaussian radial basis functions
  on [0, cutoff] times a cosine cutoff at 6 Å, filters not shared between blocks (schnetpack's
  default ``shared_filters=False``: one Dense rbf -> 3 blocks x 3F);
* time conditioning as the original does it: ``[sin(π t), cos(π t)]`` concatenated to the
  scalar features after the representation (64 + 2 = 66 scalars into the heads);
* position head: three gated equivariant blocks (66/64 -> 33/32 -> 16/16 -> 1 vector);
* type head: one Linear(66, K), K = 6.

Per-step work as in the original: the neighbour list is rebuilt from the positions at every
step (here: batched ``torch.cdist`` per cluster, all pairs within the cutoff), the network
predicts ε on the VE-linear process σ(t) = σ_min + t (σ_max − σ_min) (paper Eq. 8), training
minimises ‖ε̂ − ε‖² (Eq. 7 with λ = σ²) and sampling takes Euler–Maruyama steps of the reverse
SDE (Eqs. 3, 9) in the zero-centre-of-mass subspace.

Workloads (each the median of ``repeats`` timed calls after warm-up; ``torch.set_num_threads``):

1. training step: noise, neighbour list, forward, loss, backward, Adam step;
2. one reverse EM step under ``torch.inference_mode`` (neighbour list + forward + update);
3. the same step with autograd on, as the original package runs it, plus the resident memory
   (VmRSS) over 35 chained steps where each step's output positions are the next input without
   ``detach()`` (the original's pattern), against a control chain that detaches.

    python -m experiments.benchmarks.torch_reference [--repeats 20] [--batch 64] [--json PATH]

``run_reference(repeats, batch)`` returns the same figures as a dict for the side-by-side
driver (load this file with importlib; it imports without torch and then returns
``{"available": False, "reason": ...}``). Timings on a shared CPU are indicative only.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

# On a machine shared with other jobs, OpenMP's default active spin-wait at the end of every
# parallel region made 2-thread calls 5-15x slower (a thread spins while its partner waits for
# a core); passive waiting costs little on a quiet machine. Must be set before torch loads.
_TORCH_PRELOADED = "torch" in sys.modules
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

try:
    import torch
    import torch.nn.functional as F

    _Module: Any = torch.nn.Module
    _TORCH_ERROR = ""
except ImportError as _err:  # torch is not a dependency of agedi_jax
    torch = None
    F = None
    _Module = object
    _TORCH_ERROR = f"PyTorch is not installed ({_err}); install it with `pip install torch==2.13.0`."

CUTOFF = 6.0  # Å
SIGMA_MIN, SIGMA_MAX = 0.01, 8.0  # Å, the VE-linear schedule of agedi_jax's defaults
T_EPS = 1e-3
PT_Z = 78
# Figures quoted by the performance issue for the original package (ms per call).
ISSUE_REFERENCE = {
    "train_step_ms": [140.0, 205.0],
    "train_structures_per_s": [310.0, 450.0],
    "sample_step_nograd_ms": [69.0, 143.0],
    "sample_step_autograd_ms": [390.0, 540.0],
    "leak": "about 4 GB over 35 sampling steps",
}


# --------------------------------------------------------------------------- model


def _dense(n_in: int, n_out: int, bias: bool = True) -> "torch.nn.Linear":
    """Linear layer with schnetpack's initialisation (Xavier-uniform weights, zero bias)."""
    layer = torch.nn.Linear(n_in, n_out, bias=bias)
    torch.nn.init.xavier_uniform_(layer.weight)
    if bias:
        torch.nn.init.zeros_(layer.bias)
    return layer


def _mlp(n_in: int, n_hidden: int, n_out: int) -> "torch.nn.Sequential":
    """Dense(silu) -> Dense, the two-layer context networks of PaiNN."""
    return torch.nn.Sequential(_dense(n_in, n_hidden), torch.nn.SiLU(), _dense(n_hidden, n_out))


def gaussian_rbf(d: "torch.Tensor", n_rbf: int, cutoff: float) -> "torch.Tensor":
    """Gaussians centred on ``n_rbf`` equidistant points of [0, cutoff], width = spacing.

    Args:
      d: [e, 1] distances, Å.
    Returns:
      [e, n_rbf].
    """
    offsets = torch.linspace(0.0, cutoff, n_rbf, dtype=d.dtype, device=d.device)
    width = offsets[1] - offsets[0]
    return torch.exp(-0.5 * ((d - offsets) / width) ** 2)


def cosine_cutoff(d: "torch.Tensor", cutoff: float) -> "torch.Tensor":
    """``0.5 (cos(π d / r_c) + 1)`` for d < r_c, else 0 (d in Å, any shape)."""
    return 0.5 * (torch.cos(d * math.pi / cutoff) + 1.0) * (d < cutoff).to(d.dtype)


def scatter_add(x: "torch.Tensor", index: "torch.Tensor", size: int) -> "torch.Tensor":
    """Sum rows of ``x`` [e, ...] into ``size`` rows by ``index`` [e]."""
    out = torch.zeros((size,) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device)
    return out.index_add_(0, index, x)


class PaiNNInteraction(_Module):
    """Message block: scalars q [n, 1, F] and vectors mu [n, 3, F] gather from neighbours j
    through the filter W_ij [e, 1, 3F] and the direction r̂_ij [e, 3] (PaiNN Eqs. 7-8)."""

    def __init__(self, features: int):
        super().__init__()
        self.features = features
        self.context = _mlp(features, features, 3 * features)

    def forward(self, q, mu, w_ij, dir_ij, idx_i, idx_j, n_atoms: int):
        x = w_ij * self.context(q)[idx_j]
        dq, dmu_r, dmu_mu = torch.split(x, self.features, dim=-1)
        dmu = dmu_r * dir_ij[..., None] + dmu_mu * mu[idx_j]
        return q + scatter_add(dq, idx_i, n_atoms), mu + scatter_add(dmu, idx_i, n_atoms)


class PaiNNMixing(_Module):
    """Update block: per-atom mixing of scalars and vector channels (PaiNN Eqs. 9-11)."""

    def __init__(self, features: int, epsilon: float = 1e-8):
        super().__init__()
        self.features = features
        self.epsilon = epsilon
        self.context = _mlp(2 * features, features, 3 * features)
        self.channel_mix = _dense(features, 2 * features, bias=False)

    def forward(self, q, mu):
        mu_v, mu_w = torch.split(self.channel_mix(mu), self.features, dim=-1)
        norm_v = torch.sqrt(torch.sum(mu_v**2, dim=-2, keepdim=True) + self.epsilon)
        a = self.context(torch.cat([q, norm_v], dim=-1))
        a_ss, a_vv, a_sv = torch.split(a, self.features, dim=-1)
        q = q + a_ss + a_sv * torch.sum(mu_v * mu_w, dim=-2, keepdim=True)
        return q, mu + a_vv * mu_w


class PaiNN(_Module):
    """schnetpack-style PaiNN representation: returns scalars [n, F] and vectors [n, 3, F]."""

    def __init__(self, features: int = 64, num_layers: int = 3, n_rbf: int = 20,
                 cutoff: float = CUTOFF, max_z: int = 101, shared_filters: bool = False):
        super().__init__()
        self.features, self.num_layers, self.n_rbf, self.cutoff = features, num_layers, n_rbf, cutoff
        self.shared_filters = shared_filters
        self.embedding = torch.nn.Embedding(max_z, features, padding_idx=0)
        n_filters = 3 * features if shared_filters else num_layers * 3 * features
        self.filter_net = _dense(n_rbf, n_filters)
        self.interactions = torch.nn.ModuleList(PaiNNInteraction(features) for _ in range(num_layers))
        self.mixing = torch.nn.ModuleList(PaiNNMixing(features) for _ in range(num_layers))

    def forward(self, z, r_ij, idx_i, idx_j):
        n = z.shape[0]
        d_ij = torch.norm(r_ij, dim=1, keepdim=True)
        dir_ij = r_ij / d_ij
        filters = self.filter_net(gaussian_rbf(d_ij, self.n_rbf, self.cutoff))
        filters = filters * cosine_cutoff(d_ij, self.cutoff)
        filters = filters[:, None, :]  # [e, 1, L*3F]
        if self.shared_filters:
            filter_list = [filters] * self.num_layers
        else:
            filter_list = torch.split(filters, 3 * self.features, dim=-1)
        q = self.embedding(z)[:, None, :]
        mu = torch.zeros((n, 3, self.features), dtype=q.dtype, device=q.device)
        for w_ij, interaction, mixing in zip(filter_list, self.interactions, self.mixing):
            q, mu = interaction(q, mu, w_ij, dir_ij, idx_i, idx_j, n)
            q, mu = mixing(q, mu)
        return q[:, 0, :], mu


class GatedEquivariantBlock(_Module):
    """Gated equivariant block (PaiNN Fig. 3): scalars [n, s_in], vectors [n, 3, v_in] ->
    scalars [n, s_out], vectors [n, 3, v_out]."""

    def __init__(self, s_in: int, v_in: int, s_out: int, v_out: int, hidden: int, activate: bool):
        super().__init__()
        self.v_out, self.s_out, self.activate = v_out, s_out, activate
        self.mix = _dense(v_in, 2 * v_out, bias=False)
        self.scalar_net = _mlp(s_in + v_out, hidden, s_out + v_out)

    def forward(self, s, v):
        v_a, v_b = torch.split(self.mix(v), self.v_out, dim=-1)
        x = self.scalar_net(torch.cat([s, torch.norm(v_a, dim=-2)], dim=-1))
        s_out, gate = torch.split(x, [self.s_out, self.v_out], dim=-1)
        if self.activate:
            s_out = F.silu(s_out)
        return s_out, gate[:, None, :] * v_b


def _gated_head(s_in: int, v_in: int, n_out: int, n_blocks: int) -> "torch.nn.ModuleList":
    """Gated blocks whose widths halve per block (the original's positions head layout)."""
    s_widths, v_widths = [s_in], [v_in]
    for _ in range(n_blocks - 1):
        s_widths.append(max(n_out, s_widths[-1] // 2))
        v_widths.append(max(n_out, v_widths[-1] // 2))
    s_widths.append(n_out)
    v_widths.append(n_out)
    return torch.nn.ModuleList(
        GatedEquivariantBlock(s_widths[i], v_widths[i], s_widths[i + 1], v_widths[i + 1],
                              hidden=s_widths[i], activate=i < n_blocks - 1)
        for i in range(n_blocks)
    )


class ScoreModel(_Module):
    """PaiNN + time conditioning + position head (ε̂, one vector per atom) + type head (K logits).

    ``forward(pos [n, 3] Å, z [n] atomic numbers, t [n] per-atom time, idx_i, idx_j [e])`` ->
    ``(eps_hat [n, 3], type_logits [n, K])``; edge i <- j has vector ``pos[j] - pos[i]``.
    """

    def __init__(self, features: int = 64, num_layers: int = 3, n_rbf: int = 20,
                 num_types: int = 6, gated_blocks: int = 3, cutoff: float = CUTOFF,
                 shared_filters: bool = False):
        super().__init__()
        self.representation = PaiNN(features, num_layers, n_rbf, cutoff, shared_filters=shared_filters)
        self.position_head = _gated_head(features + 2, features, 1, gated_blocks)
        self.type_head = _dense(features + 2, num_types)

    def forward(self, pos, z, t, idx_i, idx_j):
        r_ij = pos[idx_j] - pos[idx_i]
        s, v = self.representation(z, r_ij, idx_i, idx_j)
        s = torch.cat([s, torch.sin(math.pi * t)[:, None], torch.cos(math.pi * t)[:, None]], dim=-1)
        hs, hv = s, v
        for block in self.position_head:
            hs, hv = block(hs, hv)
        return hv[:, :, 0], self.type_head(s)


def count_parameters(module: "torch.nn.Module") -> int:
    """Number of trainable scalars (the padding row of the embedding included, as torch counts)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


# --------------------------------------------------------------------------- process and steps


def sigma(t: "torch.Tensor") -> "torch.Tensor":
    """VE-linear noise scale σ(t) = σ_min + t (σ_max − σ_min), Å (paper Eq. 8)."""
    return SIGMA_MIN + t * (SIGMA_MAX - SIGMA_MIN)


def g2(t: "torch.Tensor") -> "torch.Tensor":
    """g(t)² = d σ²/dt = 2 σ(t) (σ_max − σ_min), Å² per unit time."""
    return 2.0 * sigma(t) * (SIGMA_MAX - SIGMA_MIN)


def remove_com(x: "torch.Tensor", n_per: int) -> "torch.Tensor":
    """Project [B * n_per, 3] onto the zero-mean subspace of each cluster."""
    xb = x.view(-1, n_per, 3)
    return (xb - xb.mean(dim=1, keepdim=True)).view(-1, 3)


def radius_graph(pos: "torch.Tensor", n_per: int, cutoff: float = CUTOFF):
    """All directed pairs i != j of the same cluster closer than ``cutoff`` (Å).

    Batched ``cdist`` over equal-size clusters (a block-diagonal distance matrix), rebuilt from
    scratch as the original does at every step. Returns ``(idx_i, idx_j)`` [e] int64.
    """
    p = pos.detach().view(-1, n_per, 3)
    d = torch.cdist(p, p)
    eye = torch.eye(n_per, dtype=torch.bool, device=pos.device)
    b, i, j = torch.nonzero((d < cutoff) & ~eye, as_tuple=True)
    return b * n_per + i, b * n_per + j


def pt13_clusters(batch: int, seed: int = 0) -> np.ndarray:
    """``batch`` rattled (σ = 0.1 Å) and centred Pt13 icosahedra, [batch * 13, 3] Å."""
    from ase.cluster import Icosahedron

    rng = np.random.default_rng(seed)
    base = Icosahedron("Pt", 2).positions
    pos = base[None] + rng.normal(scale=0.1, size=(batch,) + base.shape)
    pos -= pos.mean(axis=1, keepdims=True)
    return pos.reshape(-1, 3)


def train_step(model, opt, x0, z, n_per: int, gen) -> tuple["torch.Tensor", int]:
    """One denoising-score-matching step: t ~ U(ε, 1) per cluster, x_t = x0 + σ(t) ε (ε in the
    zero-COM subspace), neighbour list on x_t, loss = mean over atoms of ‖ε̂ − ε‖², Adam step.
    Returns (loss, number of edges)."""
    b = x0.shape[0] // n_per
    t = T_EPS + (1.0 - T_EPS) * torch.rand(b, generator=gen)
    t_atoms = t.repeat_interleave(n_per)
    noise = remove_com(torch.randn(x0.shape, generator=gen), n_per)
    xt = x0 + sigma(t_atoms)[:, None] * noise
    idx_i, idx_j = radius_graph(xt, n_per)
    eps_hat, _ = model(xt, z, t_atoms, idx_i, idx_j)
    loss = ((remove_com(eps_hat, n_per) - noise) ** 2).sum(-1).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach(), int(idx_i.shape[0])


def em_step(model, x, z, t: float, dt: float, n_per: int, gen) -> "torch.Tensor":
    """Reverse Euler–Maruyama step t -> t − dt (paper Eq. 9) for the VE SDE:
    x + g² s dt + g √dt ξ with s = −ε̂ / σ(t), neighbour list rebuilt from x."""
    idx_i, idx_j = radius_graph(x, n_per)
    tt = torch.full((x.shape[0],), t, dtype=x.dtype)
    eps_hat, _ = model(x, z, tt, idx_i, idx_j)
    score = -remove_com(eps_hat, n_per) / sigma(tt[0])
    gg = g2(tt[0])
    xi = remove_com(torch.randn(x.shape, generator=gen), n_per)
    return x + gg * score * dt + torch.sqrt(gg * dt) * xi


# --------------------------------------------------------------------------- measurement


@functools.cache
def _common_timed() -> Callable[..., dict]:
    """:func:`experiments.common.timed`, from the file: this one also runs under the original's
    interpreter as a file path, outside the repository, where ``experiments`` is not importable
    (``common.py`` needs only the standard library and numpy to load)."""
    import runpy

    return runpy.run_path(str(Path(__file__).resolve().parents[1] / "common.py"))["timed"]


def _median_ms(fn: Callable[[], Any], repeats: int, warmup: int = 3) -> dict:
    """Milliseconds of ``repeats`` calls after ``warmup``: median, quartiles, min, and the
    median process CPU time (all threads; far less sensitive than wall time to other jobs)."""
    res = _common_timed()(fn, repeats, warmup)
    return {k: res[k] for k in ("median", "p25", "p75", "min", "cpu_median")}


def rss_mb() -> float:
    """Current resident set size of this process, MB (VmRSS; ru_maxrss as a fallback)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def saved_activation_mb(model, fn: Callable[[], Any]) -> float:
    """MB of distinct non-parameter storages that autograd saves for backward while ``fn`` runs:
    what one step keeps alive when its output is carried on without ``detach()``."""
    param_ptrs = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(x):
        s = x.untyped_storage()
        if s.data_ptr() not in param_ptrs:
            seen[s.data_ptr()] = s.nbytes()
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        fn()
    return sum(seen.values()) / 2**20


def _keep_heap() -> bool:
    """Ask glibc to serve large allocations from its heap and not to trim it (1 GiB
    thresholds), so that timed calls reuse memory instead of re-faulting pages the host
    reclaimed. Returns whether both settings took effect (False off glibc)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 1 << 30)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))
    except (OSError, AttributeError):
        return False


def _release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc ``malloc_trim``), so that
    a later RSS reading is not hidden by memory an earlier measurement freed but malloc kept.
    Used only around the memory chains, which run after the timed workloads."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _chain_rss(model, x0, z, n_per: int, grid: np.ndarray, detach: bool, seed: int) -> dict:
    """Run ``len(grid) - 1`` chained EM steps with autograd on; record VmRSS and step times."""
    gen = torch.Generator().manual_seed(seed)
    _release_memory()
    start = rss_mb()
    x = x0.clone().requires_grad_(True)
    rss, times, edges = [], [], []
    for k in range(len(grid) - 1):
        edges.append(int(radius_graph(x, n_per)[0].shape[0]))
        t0 = time.perf_counter()
        x = em_step(model, x, z, float(grid[k]), float(grid[k] - grid[k + 1]), n_per, gen)
        if detach:
            x = x.detach().requires_grad_(True)
        times.append(1e3 * (time.perf_counter() - t0))
        rss.append(rss_mb() - start)
    holds_graph = x.grad_fn is not None
    del x
    _release_memory()
    return {
        "steps": len(times),
        "rss_growth_mb": [round(r, 1) for r in rss],
        "growth_mb": float(rss[-1]),
        "growth_per_step_mb": float((rss[-1] - rss[0]) / max(1, len(rss) - 1)),
        "step_ms_first5": float(np.median(times[:5])),
        "step_ms_last5": float(np.median(times[-5:])),
        "edges_first_last": [edges[0], edges[-1]],
        "output_carries_graph": bool(holds_graph),
    }


def equivariance_error(model, seed: int = 1) -> dict:
    """Max |ε̂(Rx) − R ε̂(x)| and |types(Rx) − types(x)| in float64 on 2 clusters (a self-check
    that the re-creation is a rotation-equivariant PaiNN)."""
    model64 = ScoreModel(**model.config).double()
    model64.load_state_dict(model.state_dict())
    gen = torch.Generator().manual_seed(seed)
    x = torch.tensor(pt13_clusters(2, seed), dtype=torch.float64)
    x = x + 0.3 * torch.randn(x.shape, generator=gen, dtype=torch.float64)
    z = torch.full((x.shape[0],), PT_Z)
    t = torch.full((x.shape[0],), 0.3, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=torch.float64))
    with torch.no_grad():
        e1, l1 = model64(x, z, t, *radius_graph(x, 13))
        e2, l2 = model64(x @ q.T, z, t, *radius_graph(x @ q.T, 13))
    return {"vector": float((e2 - e1 @ q.T).abs().max()), "scalar": float((l2 - l1).abs().max()),
            "vector_scale": float(e1.abs().max())}


def build_model(n_rbf: int = 20, num_types: int = 6, shared_filters: bool = False) -> "ScoreModel":
    """The reference score model (64 features, 3 blocks, 3 gated blocks in the positions head)."""
    config = dict(features=64, num_layers=3, n_rbf=n_rbf, num_types=num_types, gated_blocks=3,
                  cutoff=CUTOFF, shared_filters=shared_filters)
    model = ScoreModel(**config)
    model.config = config
    return model


def _timed_workloads(model, x0, z, states: dict, repeats: int, seed: int) -> dict:
    """Median times of the training step, the reverse step with autograd off (late state and
    prior) and on, and of the inference step along the time grid."""
    n_per = 13
    batch = x0.shape[0] // n_per
    dt = (1.0 - T_EPS) / 499  # a 500-step grid on [T_EPS, 1]
    gen = torch.Generator().manual_seed(seed)
    res: dict[str, Any] = {}

    # 1. training step (Adam state is kept between calls, as in a training loop)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    train_edges: list[int] = []
    res["train_step_ms"] = _median_ms(
        lambda: train_edges.append(train_step(model, opt, x0, z, n_per, gen)[1]), repeats)
    res["edges_train_mean"] = float(np.mean(train_edges[3:]))
    res["train_structures_per_s"] = 1e3 * batch / res["train_step_ms"]["median"]
    model.eval()

    # 2./3. one reverse step from a late state (all pairs of a cluster are edges) and from the prior
    xt, t_late = states["late"]
    xp = states["prior"][0]

    def nograd():
        with torch.inference_mode():
            em_step(model, xt, z, t_late, dt, n_per, gen)

    def nograd_prior():
        with torch.inference_mode():
            em_step(model, xp, z, 1.0, dt, n_per, gen)

    def autograd_on():
        em_step(model, xt.clone().requires_grad_(True), z, t_late, dt, n_per, gen)

    res["sample_step_nograd_ms"] = _median_ms(nograd, repeats)
    res["sample_step_nograd_prior_ms"] = _median_ms(nograd_prior, repeats)
    res["sample_step_autograd_ms"] = _median_ms(autograd_on, repeats)
    res["sample_500_steps_s"] = 500 * res["sample_step_nograd_ms"]["median"] / 1e3
    res["sample_500_steps_autograd_s"] = 500 * res["sample_step_autograd_ms"]["median"] / 1e3

    # the cost along the way: marginal states x0 + σ(t) ε at a few t of the grid
    along = []
    for t_k, x_k in states["along"]:
        def step_k(x_k=x_k, t_k=t_k):
            with torch.inference_mode():
                em_step(model, x_k, z, t_k, dt, n_per, gen)

        ms = _median_ms(step_k, max(3, repeats // 4), warmup=1)["median"]
        along.append({"t": t_k, "edges": int(radius_graph(x_k, n_per)[0].shape[0]), "ms": ms})
    res["sample_step_nograd_along_t"] = along
    res["sample_500_steps_s_along_t"] = 500 * float(np.mean([a["ms"] for a in along])) / 1e3
    res["sample_structures_per_s_500_steps"] = batch / res["sample_500_steps_s_along_t"]
    return res


def run_reference(repeats: int = 20, batch: int = 64, threads: int = 2, n_rbf: int = 20,
                  leak_steps: int = 35, seed: int = 0, keep_heap: bool = True) -> dict:
    """Time the reference workloads on ``batch`` Pt13 clusters and return the figures.

    Two process-wide settings keep the figures stable on a shared machine (both recorded in
    the result): ``OMP_WAIT_POLICY=PASSIVE`` unless already set (applied when this file is
    loaded before torch), and with ``keep_heap`` (the default) glibc keeps freed memory in its
    heap instead of handing large blocks back to the OS to fault in again at the next call
    (about 15 % of a sampling step here). A driver timing JAX in the same process gets the
    same settings; one in another process can set ``MALLOC_MMAP_THRESHOLD_`` and
    ``MALLOC_TRIM_THRESHOLD_`` to 1073741824 in the environment instead.

    Args:
      repeats: timed calls per workload (median reported; 3 untimed warm-up calls first).
      batch: number of 13-atom clusters.
      threads: ``torch.set_num_threads``.
      n_rbf: Gaussian radial basis functions (the original's scripts use 30; 20 matches the
        agedi_jax PaiNN's default).
      leak_steps: chained autograd-on steps for the memory-growth measurement.
      seed: seeds torch, the clusters and the noise.
      keep_heap: ``mallopt`` M_MMAP_THRESHOLD and M_TRIM_THRESHOLD = 1 GiB (see above).

    Returns:
      A JSON-serialisable dict (times in ms with median / quartiles / process CPU time, memory
      in MB); ``{"available": False, "reason": ...}`` when torch is not installed.
    """
    if torch is None:
        return {"available": False, "reason": _TORCH_ERROR}
    if repeats < 1 or batch < 1 or leak_steps < 2:
        raise ValueError("need repeats >= 1, batch >= 1, leak_steps >= 2; "
                         f"got {repeats}, {batch}, {leak_steps}")
    torch.set_num_threads(threads)
    heap_kept = _keep_heap() if keep_heap else False
    torch.manual_seed(seed)
    n_per = 13
    model = build_model(n_rbf=n_rbf)
    parts = {name: count_parameters(getattr(model, name))
             for name in ("representation", "position_head", "type_head")}

    gen = torch.Generator().manual_seed(seed + 1)
    x0 = torch.tensor(pt13_clusters(batch, seed), dtype=torch.float32)
    z = torch.full((x0.shape[0],), PT_Z, dtype=torch.long)

    def marginal(t: float) -> "torch.Tensor":
        noise = remove_com(torch.randn(x0.shape, generator=gen), n_per)
        return x0 + float(sigma(torch.tensor(t))) * noise

    grid = np.linspace(1.0, T_EPS, 500)
    states = {
        "late": (marginal(0.05), 0.05),
        "prior": (remove_com(SIGMA_MAX * torch.randn(x0.shape, generator=gen), n_per), 1.0),
        "along": [(t, marginal(t)) for t in (1.0, 0.8, 0.6, 0.4, 0.2, 0.05)],
        "chain_late": marginal(float(grid[-(leak_steps + 1)])),
    }
    edges = lambda x: int(radius_graph(x, n_per)[0].shape[0])  # noqa: E731
    out: dict[str, Any] = {
        "available": True, "load_average_start": round(os.getloadavg()[0], 2),
        "framework": f"torch {torch.__version__} (eager, float32)",
        "machine": f"{platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}",
        "batch": batch, "atoms": int(x0.shape[0]), "edges_clean": edges(x0),
        "edges_sample_step": edges(states["late"][0]), "edges_prior": edges(states["prior"][0]),
        "n_rbf": n_rbf, "params": count_parameters(model), "params_by_part": parts,
        "params_n_rbf_30": count_parameters(build_model(n_rbf=30)),
        "equivariance_error_f64": equivariance_error(model),
        "repeats": repeats, "keep_heap": heap_kept,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY") if not _TORCH_PRELOADED else
        "unknown (torch was imported before this file)", "issue_reference": ISSUE_REFERENCE,
    }
    out.update(_timed_workloads(model, x0, z, states, repeats, seed))

    # memory over chained autograd-on steps: detached control first, then the leaking pattern
    def autograd_on():
        em_step(model, states["late"][0].clone().requires_grad_(True), z, 0.05, 0.002, n_per, gen)

    out["saved_activation_mb_per_step"] = saved_activation_mb(model, autograd_on)
    grid_late, grid_early = grid[-(leak_steps + 1):], grid[: leak_steps + 1]
    x_late, x_prior = states["chain_late"], states["prior"][0]
    out["chain_detached_late"] = _chain_rss(model, x_late, z, n_per, grid_late, True, seed)
    out["chain_carried_late"] = _chain_rss(model, x_late, z, n_per, grid_late, False, seed)
    out["chain_carried_prior"] = _chain_rss(model, x_prior, z, n_per, grid_early, False, seed)
    out["peak_rss_mb"] = _peak_rss_mb()
    out["load_average_end"] = round(os.getloadavg()[0], 2)
    return out


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _fmt(r: dict | None) -> str:
    if r is None:
        return "n/a"
    return f"{r['median']:.0f} ({r['p25']:.0f}-{r['p75']:.0f}; cpu {r['cpu_median']:.0f})"


def print_report(res: dict) -> None:
    """Print the figures of :func:`run_reference` as a table."""
    ref = res["issue_reference"]
    parts = res["params_by_part"]
    print(f"{res['framework']} on {res['machine']}; glibc heap kept: {res['keep_heap']}; "
          f"OMP_WAIT_POLICY {res['omp_wait_policy']}; load average {res['load_average_start']} at start, "
          f"{res['load_average_end']} at end")
    print(f"{res['batch']} x Pt13 = {res['atoms']} atoms; edges: clean {res['edges_clean']}, "
          f"timed sampling step {res['edges_sample_step']}, prior (t=1) {res['edges_prior']}, "
          f"training (mean, t ~ U) {res['edges_train_mean']:.0f}; cutoff {CUTOFF} Å, n_rbf {res['n_rbf']}")
    print(f"parameters: {res['params']:,} (representation {parts['representation']:,}, positions head "
          f"{parts['position_head']:,}, type head {parts['type_head']:,}) = "
          f"{100 * res['params'] / 180e3:.1f} % of 180 k; with n_rbf 30: {res['params_n_rbf_30']:,}")
    e = res["equivariance_error_f64"]
    print(f"self-check (float64): rotation error of ε̂ {e['vector']:.1e} (scale {e['vector_scale']:.1e}), "
          f"of type logits {e['scalar']:.1e}")
    print(f"ms per call: median (quartiles; process CPU ms) of {res['repeats']} after 3 warm-up calls")
    rows = [
        ("training step", "train_step_ms", "train_step_ms"),
        ("EM step, inference_mode", "sample_step_nograd_ms", "sample_step_nograd_ms"),
        ("EM step, inference, t=1", "sample_step_nograd_prior_ms", None),
        ("EM step, autograd on", "sample_step_autograd_ms", "sample_step_autograd_ms"),
    ]
    print(f"{'workload':24s} {'this machine':>30s} {'issue quotes':>13s}")
    for name, key, ref_key in rows:
        q = f"{ref[ref_key][0]:.0f}-{ref[ref_key][1]:.0f}" if ref_key else ""
        print(f"{name:24s} {_fmt(res[key]):>30s} {q:>13s}")
    steps = ", ".join(f"{a['t']:g}: {a['ms']:.0f}" for a in res["sample_step_nograd_along_t"])
    print(f"training {res['train_structures_per_s']:.0f} structures/s; inference step (ms) at t = {steps}")
    print(f"500 steps (mean over those t) ≈ {res['sample_500_steps_s_along_t']:.1f} s = "
          f"{res['sample_structures_per_s_500_steps']:.2f} structures/s; late-step cost x 500: "
          f"{res['sample_500_steps_s']:.1f} s, with autograd on {res['sample_500_steps_autograd_s']:.1f} s")
    edges = ", ".join(f"{a['t']:g}: {a['edges']}" for a in res["sample_step_nograd_along_t"])
    print(f"edges at t = {edges}")
    print(f"autograd saves {res['saved_activation_mb_per_step']:.1f} MB of activations per step")
    for key, what in (("chain_detached_late", "detached each step (control), last steps"),
                      ("chain_carried_late", "output carried without detach, last steps"),
                      ("chain_carried_prior", "output carried without detach, first steps")):
        c = res[key]
        print(f"{c['steps']} chained autograd-on steps, {what}: RSS +{c['growth_mb']:.0f} MB "
              f"({c['growth_per_step_mb']:.1f} MB/step), step {c['step_ms_first5']:.0f} -> "
              f"{c['step_ms_last5']:.0f} ms, edges {c['edges_first_last'][0]} -> "
              f"{c['edges_first_last'][1]}, output holds a graph: {c['output_carries_graph']}")
    print(f"peak RSS {res['peak_rss_mb']:.0f} MB (issue: {ref['leak']})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--batch", type=int, default=64, help="number of Pt13 clusters")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-rbf", type=int, default=20)
    ap.add_argument("--leak-steps", type=int, default=35)
    ap.add_argument("--json", type=Path, default=None, help="write the figures to this JSON file")
    args = ap.parse_args(argv)
    if torch is None:
        print(f"torch_reference: skipped. {_TORCH_ERROR} It is not a dependency of agedi_jax.")
        return 0
    res = run_reference(args.repeats, args.batch, threads=args.threads, n_rbf=args.n_rbf,
                        leak_steps=args.leak_steps)
    print_report(res)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
