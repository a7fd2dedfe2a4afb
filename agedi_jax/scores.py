"""The output of a score network / score function, shared by networks, losses and samplers."""

from __future__ import annotations

from typing import Any, NamedTuple


class Scores(NamedTuple):
    """Per-atom scores.

    Attributes:
      positions: [n, 3] position output. From a *network* this is the raw equivariant
        vector (interpreted by the model as ε̂ or as a score, see ``agedi_jax.losses``);
        from a *score function* handed to a sampler it is the score ∇_R log p_t in Å⁻¹.
        ``None`` when positions are not modelled.
      types: [n, K] log concrete scores log ŝ_y for the K physical types (column k is type
        index k + 1; MASK has no column). ``None`` when types are not modelled.
    """

    positions: Any = None
    types: Any = None
