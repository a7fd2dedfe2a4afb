"""The plug-in registries: a new SDE is its class plus one registry line, and then the
config, the model, the losses and the samplers all take it by name."""

from __future__ import annotations

from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agedi_jax import config as C
from agedi_jax import samplers
from agedi_jax import sde as S
from agedi_jax.batch import EncodedStructure, collate
from agedi_jax.scores import Scores
from agedi_jax.vocab import TypeVocab


class ToySchedule(NamedTuple):
    """σ(t)² = rate · t (Å²): a constant diffusion rate."""

    rate: float = 4.0

    def validate(self) -> None:
        if self.rate <= 0:
            raise ValueError(f"ToySchedule: rate must be > 0, got {self.rate}")


class ToySDE(NamedTuple):
    """Brownian motion ``dR = sqrt(rate) dW``: no drift, kernel ``N(R0, rate·t I)``."""

    schedule: ToySchedule = ToySchedule()
    periodic: ClassVar[bool] = True

    def validate(self) -> None:
        self.schedule.validate()

    def drift(self, x, t):
        return jnp.zeros_like(jnp.asarray(x))

    def g2(self, t):
        return self.schedule.rate * jnp.ones_like(jnp.asarray(t, jnp.result_type(float)))

    def diffusion(self, t):
        return jnp.sqrt(self.g2(t))

    def mean_coeff(self, t):
        return jnp.ones_like(jnp.asarray(t, jnp.result_type(float)))

    def mean_coeff_minus_one(self, t):
        return jnp.zeros_like(jnp.asarray(t, jnp.result_type(float)))

    def std(self, t):
        return jnp.sqrt(self.schedule.rate * jnp.asarray(t, jnp.result_type(float)))

    def marginal(self, x0, t):
        return jnp.asarray(x0), self.std(t)

    @property
    def prior_std(self) -> float:
        return float(np.sqrt(self.schedule.rate))


@pytest.fixture(scope="module")
def toy():
    S.register_sde("toy", ToySDE, {"const": ToySchedule})  # the one registry line
    yield
    S.SDES.pop("toy")


def test_toy_sde_is_built_from_the_config(toy):
    from agedi_jax.model import build_model

    cfg = C.override(C.preset("quickstart"), ["process.sde=toy", "process.schedule=const",
                                              "process.schedule_params.rate=9.0"])
    assert dict(cfg.process.schedule_params) == {"rate": 9.0}
    assert C.Config.from_json(cfg.to_json()) == cfg
    model = build_model(cfg, TypeVocab(("Cu", "Pt")), avg_num_neighbors=3.0)
    assert model.sde == ToySDE(ToySchedule(9.0))
    assert model.loss_config.sde == model.sde
    with pytest.raises(ValueError, match="no parameter"):
        C.override(cfg, ["process.schedule_params.sigma=1"])
    with pytest.raises(ValueError, match="rate must be > 0"):
        C.override(cfg, ["process.schedule_params.rate=-1"])
    with pytest.raises(ValueError, match="choose one of"):
        C.override(cfg, ["process.sde=nope"])


def test_toy_sde_samples_gaussian_data_with_the_exact_score(toy):
    """Euler–Maruyama with the toy SDE and the exact score of 1-D-per-axis Gaussian data
    N(0, s0²) (score −x / (s0² + rate·t)) returns that law: a sampler needs nothing but the
    SDE's interface."""
    sde = S.make_sde("toy", "const", rate=4.0)
    s0 = 0.7
    n = 4000
    periodic = EncodedStructure(np.zeros((n, 3)), np.ones(n, np.int32), 50.0 * np.eye(3), np.ones(3, bool),
                                np.zeros(n, bool), 0, np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros((0, 3)))
    template = jax.tree.map(jnp.asarray, collate([periodic]))  # periodic: no centre-of-mass projection

    def score_fn(state, t, key):
        var = s0**2 + sde.std(t)[state.graph_index] ** 2
        return Scores(positions=-(state.positions - 25.0) / var[:, None])

    step = samplers.make_step(sde, None, C.SampleConfig(sampler="em"))
    grid = samplers.time_grid(200, 1e-3)
    start = template._replace(positions=25.0 + sde.prior_std * jax.random.normal(jax.random.key(0), (template.num_nodes, 3)))
    out = jax.jit(lambda k, s: samplers.sample(k, s, score_fn, step, grid, None))(jax.random.key(1), start)
    x = np.asarray(out.positions)[:n] - 25.0
    assert abs(x.mean()) < 0.05
    assert x.std() == pytest.approx(np.sqrt(s0**2 + 4.0e-3), rel=0.05)
