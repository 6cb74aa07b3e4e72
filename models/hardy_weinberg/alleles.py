"""Parsing and checks for ``HardyWeinberg``: the allele system, start values and phenotype counts."""
from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Dict, Hashable, List, Mapping, Sequence, Tuple

import numpy as np


@dataclass(frozen=True)
class AlleleSystem:
    """Alleles, every unordered genotype ``(i, j)`` with ``i <= j`` and the phenotype it shows.

    ``pairs[g]`` holds the allele indices of genotype ``g`` (all ``K(K+1)/2`` of them, in the
    order (0,0), (0,1), ..., (1,1), ...); ``phenotype_of[g]`` the index of its phenotype.
    """

    alleles: Tuple[str, ...]
    phenotypes: Tuple[Hashable, ...]
    pairs: np.ndarray
    phenotype_of: np.ndarray

    def genotype_name(self, g: int) -> str:
        a, b = (self.alleles[k] for k in self.pairs[g])
        return a + b if len(a) == 1 and len(b) == 1 else f"{a}/{b}"

    @property
    def genotype_names(self) -> List[str]:
        return [self.genotype_name(g) for g in range(len(self.pairs))]

    @property
    def allele_copies(self) -> np.ndarray:
        """``(G, K)`` copies of allele ``k`` carried by genotype ``g`` (0, 1 or 2)."""
        k = len(self.alleles)
        return np.eye(k)[self.pairs[:, 0]] + np.eye(k)[self.pairs[:, 1]]


def check_alleles(alleles) -> Tuple[str, ...]:
    if isinstance(alleles, str) or not isinstance(alleles, Sequence):
        raise ValueError(f"alleles must be a sequence of allele names such as ['A', 'B', 'O'], got {alleles!r}")
    names = tuple(alleles)
    bad = [a for a in names if not isinstance(a, str) or not a or "/" in a]
    if bad:
        raise ValueError(f"alleles must be non-empty strings without '/', got {bad!r}")
    if len(names) < 2:
        raise ValueError(f"alleles must name at least 2 alleles, got {list(names)}")
    if len(set(names)) != len(names):
        dup = sorted({a for a in names if names.count(a) > 1})
        raise ValueError(f"alleles must be distinct; repeated: {dup}")
    return names


def parse_genotype(genotype, alleles: Tuple[str, ...], phenotype) -> Tuple[int, int]:
    """``("C", "T")``, ``"CT"`` (single-character alleles) or ``"A1/A2"`` -> sorted allele indices."""
    where = f"genotype {genotype!r} of phenotype {phenotype!r}"
    if isinstance(genotype, str):
        if "/" in genotype:
            parts = tuple(genotype.split("/"))
        elif len(genotype) == 2 and all(len(a) == 1 for a in alleles):
            parts = (genotype[0], genotype[1])
        else:
            raise ValueError(
                f"{where}: a genotype string must be two single-character alleles like 'CT' "
                "or two allele names joined by '/', like 'A1/A2'"
            )
    elif isinstance(genotype, Sequence):
        parts = tuple(genotype)
    else:
        raise ValueError(f"{where}: a genotype must be a pair of alleles, got {type(genotype).__name__}")
    if len(parts) != 2:
        raise ValueError(f"{where}: a genotype is exactly two alleles, got {len(parts)}")
    unknown = [a for a in parts if a not in alleles]
    if unknown:
        raise ValueError(f"{where} has unknown allele(s) {unknown}; known alleles are {list(alleles)}")
    i, j = sorted(alleles.index(a) for a in parts)
    return i, j


def build_system(alleles, phenotypes) -> AlleleSystem:
    """Check that every unordered genotype shows exactly one phenotype and index them."""
    names = check_alleles(alleles)
    if not isinstance(phenotypes, Mapping) or not phenotypes:
        raise ValueError(
            "phenotypes must be a non-empty mapping {phenotype: [genotypes]}, "
            f"got {type(phenotypes).__name__}"
        )
    k = len(names)
    pairs = np.array([(i, j) for i in range(k) for j in range(i, k)], dtype=np.int64)
    index = {(int(i), int(j)): g for g, (i, j) in enumerate(pairs)}
    owner: Dict[int, Hashable] = {}
    for ph, genotypes in phenotypes.items():
        if isinstance(genotypes, str) or not isinstance(genotypes, (Sequence, set, frozenset)) or not genotypes:
            raise ValueError(f"phenotype {ph!r} must map to a non-empty list of genotypes, got {genotypes!r}")
        for genotype in genotypes:
            g = index[parse_genotype(genotype, names, ph)]
            if g in owner and owner[g] != ph:
                raise ValueError(
                    f"genotype {_name(names, pairs[g])} is listed under two phenotypes, "
                    f"{owner[g]!r} and {ph!r}; each genotype must show exactly one phenotype"
                )
            owner[g] = ph
    missing = [_name(names, pairs[g]) for g in range(len(pairs)) if g not in owner]
    if missing:
        raise ValueError(
            f"genotypes {missing} show no phenotype; every unordered genotype of alleles "
            f"{list(names)} must be listed under exactly one phenotype"
        )
    order = tuple(phenotypes)
    phenotype_of = np.array([order.index(owner[g]) for g in range(len(pairs))], dtype=np.int64)
    return AlleleSystem(names, order, pairs, phenotype_of)


def _name(alleles: Tuple[str, ...], pair) -> str:
    a, b = alleles[pair[0]], alleles[pair[1]]
    return a + b if len(a) == 1 and len(b) == 1 else f"{a}/{b}"


def _as_float(value, what: str) -> float:
    if isinstance(value, (bool, str, bytes)):
        raise ValueError(f"{what} must be a number, got {value!r}")
    if not isinstance(value, (numbers.Real, np.number)):
        try:
            value = float(value)  # 0-d arrays and tensors
        except (TypeError, ValueError):
            raise ValueError(f"{what} must be a number, got {value!r}") from None
    return float(value)


def _as_vector(values, names: Sequence, what: str, key: str) -> np.ndarray:
    """A mapping keyed by ``names`` or a sequence in the order of ``names`` -> float array."""
    if isinstance(values, Mapping):
        unknown = [k for k in values if k not in names]
        if unknown:
            raise ValueError(f"{what} has unknown {key}(s) {unknown}; known {key}s are {list(names)}")
        missing = [n for n in names if n not in values]
        if missing:
            raise ValueError(f"{what} is missing {key}(s) {missing}")
        return np.array([_as_float(values[n], f"{what}[{n!r}]") for n in names])
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise ValueError(f"{what} must be a mapping {{{key}: value}} or a sequence of numbers, got {values!r}")
    try:
        flat = np.asarray(values, dtype=object)
    except ValueError:
        flat = None
    if flat is None or flat.ndim != 1:
        raise ValueError(f"{what} must be a flat sequence of numbers, got {values!r}")
    if len(flat) != len(names):
        raise ValueError(
            f"{what} has {len(flat)} values but there are {len(names)} {key}s {list(names)}"
        )
    return np.array([_as_float(v, f"{what}[{i}]") for i, v in enumerate(flat)])


def check_counts(counts, phenotypes: Sequence) -> np.ndarray:
    """Finite, non-negative whole-number phenotype counts, not all zero, in phenotype order."""
    arr = _as_vector(counts, phenotypes, "counts", "phenotype")
    if np.isnan(arr).any():
        raise ValueError(f"counts contain NaN: {arr.tolist()}")
    if np.isinf(arr).any():
        raise ValueError(f"counts contain infinity: {arr.tolist()}")
    if (arr < 0).any():
        bad = [phenotypes[i] for i in np.flatnonzero(arr < 0)]
        raise ValueError(f"counts must be non-negative; negative for phenotype(s) {bad}")
    fractional = np.flatnonzero(arr != np.round(arr))
    if fractional.size:
        bad = [phenotypes[i] for i in fractional]
        raise ValueError(f"counts must be whole numbers; not whole for phenotype(s) {bad}: {arr[fractional].tolist()}")
    if not arr.sum() > 0:
        raise ValueError("counts are all zero: there is nothing to fit")
    return arr


def check_init(init, alleles: Tuple[str, ...]) -> np.ndarray:
    """Start frequencies: uniform if None, else positive values summing to 1 (mapping or sequence)."""
    if init is None:
        return np.full(len(alleles), 1.0 / len(alleles))
    arr = _as_vector(init, alleles, "init", "allele")
    if not np.isfinite(arr).all() or (arr <= 0).any():
        raise ValueError(f"init must hold finite positive allele frequencies, got {arr.tolist()}")
    if abs(arr.sum() - 1.0) > 1e-6:
        raise ValueError(f"init allele frequencies must sum to 1, got sum {arr.sum():.8g}")
    return arr / arr.sum()
