"""The type vocabulary: chemical symbols ↔ integer type indices, with the MASK state.

Type ``0`` is ``MASK``, the absorbing state of the discrete type process (paper Sec. II B);
physical types are ``1..K`` in the order of :attr:`TypeVocab.symbols`, which is also the
order of the columns of the type scores (column ``k`` is type ``k + 1``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Sequence

import numpy as np

__all__ = ["MASK", "TypeVocab"]

MASK = 0
"""Index of the absorbing MASK state of the type process."""


@dataclasses.dataclass(frozen=True)
class TypeVocab:
    """Maps chemical symbols to type indices ``1..K`` (``0`` is MASK) and back.

    The vocabulary is saved with every model: the order of ``symbols`` is the order of the
    type-score columns (column ``k`` is type ``k + 1``).
    """

    symbols: tuple[str, ...]

    def __post_init__(self) -> None:
        from ase.data import atomic_numbers

        symbols = tuple(self.symbols)
        object.__setattr__(self, "symbols", symbols)
        if not symbols:
            raise ValueError("TypeVocab needs at least one element")
        bad = [s for s in symbols if s not in atomic_numbers or s == "X"]
        if bad:
            raise ValueError(f"TypeVocab: not chemical symbols: {bad}")
        if len(set(symbols)) != len(symbols):
            raise ValueError(f"TypeVocab: repeated symbols in {symbols}")

    @classmethod
    def from_atoms(cls, atoms_list: Iterable[Any]) -> "TypeVocab":
        """Vocabulary of every element in ``atoms_list``, ordered by atomic number."""
        from ase.data import atomic_numbers

        found = set()
        for atoms in atoms_list:
            found.update(atoms.get_chemical_symbols())
        return cls(tuple(sorted(found, key=lambda s: atomic_numbers[s])))

    @property
    def num_types(self) -> int:
        """K, the number of physical types (MASK not counted)."""
        return len(self.symbols)

    def index(self, symbol: str) -> int:
        """Type index (1..K) of ``symbol``; raises ``KeyError`` naming unknown elements."""
        try:
            return self.symbols.index(symbol) + 1
        except ValueError:
            raise KeyError(
                f"element {symbol!r} is not in the type vocabulary {list(self.symbols)}"
            ) from None

    def encode(self, symbols: Sequence[str]) -> np.ndarray:
        """Symbols -> int32 indices ``[len(symbols)]``."""
        lookup = {s: i + 1 for i, s in enumerate(self.symbols)}
        out = np.empty(len(symbols), np.int32)
        for k, s in enumerate(symbols):
            if s not in lookup:
                raise KeyError(
                    f"element {s!r} is not in the type vocabulary {list(self.symbols)}"
                )
            out[k] = lookup[s]
        return out

    def decode(self, indices: Sequence[int]) -> list[str]:
        """Indices -> symbols; MASK (0) decodes to ``'X'``."""
        table = ("X",) + self.symbols
        out = []
        for i in np.asarray(indices).tolist():
            if not 0 <= i <= self.num_types:
                raise ValueError(f"type index {i} outside 0..{self.num_types}")
            out.append(table[i])
        return out

    def to_dict(self) -> dict:
        return {"symbols": list(self.symbols)}

    @classmethod
    def from_dict(cls, d: dict) -> "TypeVocab":
        return cls(tuple(d["symbols"]))
