"""Tracing a user's model under parallel enumeration of its discrete latents."""
from __future__ import annotations

import contextlib
import math
import weakref
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.poutine.trace_struct import Trace
from pyro.distributions.util import scale_and_mask
from torch.distributions.utils import probs_to_logits

from . import thresholds
from .handlers import (
    LatentPolicy,
    ReplaySubsample,
    SubstituteParams,
    is_data_site,
    is_map_site,
    is_subsample_site,
    is_unscored,
)
from .packing import broadcast_shape
from .shape_hints import add_shape_hint


def observation_count(trace: Trace) -> float:
    """The observations a trace scores: the entries of every observed site (MAP sites left out),
    each weighted by its ``poutine.scale`` (counts given as weights count as many observations)
    and its mask."""
    total = 0.0
    for site in trace.nodes.values():
        if site["type"] != "sample" or not site["is_observed"] or is_map_site(site) or is_unscored(site):
            continue
        value = site["value"]
        if not isinstance(value, torch.Tensor):
            continue
        event_dim = len(site["fn"].event_shape)
        weight = torch.ones(value.shape[:value.dim() - event_dim], dtype=torch.float64, device=value.device)
        if isinstance(site["scale"], torch.Tensor):
            weight = weight * site["scale"].double()
        else:
            weight = weight * float(site["scale"])
        if isinstance(site["mask"], torch.Tensor):
            weight = weight * site["mask"].double()
        total += float(weight.sum())
    return total


def compute_log_prob(trace: Trace) -> None:
    """``unscaled_log_prob`` and ``log_prob`` at every sample site but subsample ones, as
    :meth:`Trace.compute_log_prob` computes them, without its ``log_prob_sum``: a reduction
    over every enumerated table that the E-step never reads."""
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or is_unscored(site) or "log_prob" in site:
            continue
        try:
            log_p = _broadcast_log_prob(site["fn"], site["value"])
            if log_p is None:
                log_p = site["fn"].log_prob(site["value"], *site["args"], **site["kwargs"])
        except ValueError as e:
            shapes = trace.format_shapes(last_site=name)
            raise ValueError(f"Error while computing log_prob at site '{name}':\n{e}\n{shapes}") from e
        site["unscaled_log_prob"] = log_p
        site["log_prob"] = scale_and_mask(log_p, site["scale"], site["mask"])


#: distributions whose log-density is computed once per distinct parameter row, with the
#: parameters that define them (the first of a group found on the instance is used)
_COMPACT = {
    dist.Categorical: (("logits", "probs"),),
    dist.Bernoulli: (("logits", "probs"),),
    dist.Normal: (("loc",), ("scale",)),
    dist.Poisson: (("rate",),),
}


def _categorical_log_prob(table: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``Categorical.log_prob``: the entry of ``table`` (log-probabilities, ``batch + (K,)``) at ``value``."""
    value = value.long().unsqueeze(-1)
    value, table = torch.broadcast_tensors(value, table)
    return table.gather(-1, value[..., :1]).squeeze(-1)


def _broadcast_log_prob(fn, value: torch.Tensor) -> Optional[torch.Tensor]:
    """``fn.log_prob(value)`` computed on the distinct rows of ``fn``'s parameters where they are
    only expanded (stride 0) along batch dims, then broadcast as a view: a chain's transition
    ``trans[x_prev]`` or an emission ``Normal(locs[x], scales[x])`` expanded over sequences and
    time steps costs one evaluation per state, not per step (``log σ`` on ``K`` numbers, not
    ``K·N·T``). None where nothing is expanded or the family is not one of ``_COMPACT``."""
    base, event_dims = fn, 0
    while isinstance(base, dist.Independent):
        event_dims += base.reinterpreted_batch_ndims
        base = base.base_dist
    groups = _COMPACT.get(type(base))
    if groups is None:
        return None
    params = {}
    for group in groups:
        name = next((n for n in group if n in base.__dict__), None)
        if name is None:
            return None
        params[name] = base.__dict__[name]
    batch = base.batch_shape
    if math.prod(batch) < thresholds.COMPACT_FROM:
        return None
    nb = len(batch)
    dims = [i for i in range(nb) if batch[i] > 1
            and all(p.dim() >= nb and (p.shape[i] == 1 or p.stride(i) == 0) for p in params.values())]
    if not dims:
        return None
    index = tuple(slice(0, 1) if i in dims else slice(None) for i in range(nb))
    if type(base) is dist.Categorical:
        # its log_prob is a look-up in its (already normalized) table: done on the distinct rows
        if "logits" in params:
            table = params["logits"][index]
        else:
            table = probs_to_logits(params["probs"][index])
        out = _categorical_log_prob(table, value)
        return out.expand(broadcast_shape(value.shape, fn.batch_shape))
    compact = type(base)(**{n: p[index] for n, p in params.items()}, validate_args=False)
    if event_dims:
        compact = dist.Independent(compact, event_dims)
    out = compact.log_prob(value)
    return out.expand(broadcast_shape(value.shape[:value.dim() - len(fn.event_shape)], fn.batch_shape))


class _SeenArguments:
    """The arguments of the last trace run with distribution validation on, by identity (weak
    references to tensors and arrays, so that the data is never kept alive by the record)."""

    def __init__(self) -> None:
        self._names: Optional[tuple] = None  # the keyword arguments' names
        self._refs: tuple = ()

    @staticmethod
    def _ref(value):
        try:
            return weakref.ref(value)
        except TypeError:  # ints, strings, tuples: held as they are
            return lambda: value

    def remember(self, args: tuple, kwargs: dict) -> None:
        self._names = tuple(sorted(kwargs))
        self._refs = tuple(self._ref(v) for v in args + tuple(kwargs[k] for k in self._names))

    def matches(self, args: tuple, kwargs: dict) -> bool:
        if self._names != tuple(sorted(kwargs)) or len(self._refs) != len(args) + len(kwargs):
            return False
        values = args + tuple(kwargs[k] for k in self._names)
        return all(r() is v for r, v in zip(self._refs, values))


@contextlib.contextmanager
def _distribution_validation(enabled: bool) -> Iterator[None]:
    """Pyro's distribution validation set to ``enabled`` inside, restored afterwards."""
    before = dist.is_validation_enabled()
    dist.enable_validation(enabled and before)
    try:
        yield
    finally:
        dist.enable_validation(before)


def _plate_dims(site: dict) -> List[int]:
    return [f.dim for f in site["cond_indep_stack"] if f.vectorized]


class ModelTracer:
    """Runs ``model`` under :class:`LatentPolicy` and ``poutine.enum``.

    The first call probes the model once without enumeration to learn
    ``max_plate_nesting`` (unless given), which latents are MAP globals and which
    params it declares; later traces reuse that, so enumeration dims and symbols
    stay the same from trace to trace.
    """

    def __init__(self, model: Callable, max_plate_nesting: Optional[int] = None) -> None:
        if not callable(model):
            raise TypeError(f"model must be a callable Pyro model, got {type(model).__name__}")
        if max_plate_nesting is not None:
            if isinstance(max_plate_nesting, bool) or not isinstance(max_plate_nesting, int) or max_plate_nesting < 0:
                raise ValueError(
                    f"max_plate_nesting must be a non-negative int or None, got {max_plate_nesting!r}"
                )
        self.model = model
        self.max_plate_nesting = max_plate_nesting
        self.param_names: Tuple[str, ...] = ()
        self.map_sites: Tuple[str, ...] = ()
        self.vectorized_chain = False
        #: elements of the largest table of the probe run (the size of the fit's work)
        self.work = 0
        #: in a data-parallel fit, 1/ranks: each rank's trace weighs the MAP sites' priors by it
        self.shared_scale: Optional[float] = None
        self._probed = False
        self._validated = _SeenArguments()

    # -- structure -------------------------------------------------------------------
    def probe(self, args: tuple, kwargs: dict) -> None:
        """Learn the model's plate nesting, params and MAP sites from one run."""
        trace = self._probe_trace(args, kwargs)
        nesting = 0
        for site in trace.nodes.values():
            if site["type"] == "sample":
                # the largest table a step computes: what sets the fit's thread count (threads.py)
                self.work = max(self.work, site["fn"].shape().numel() if hasattr(site["fn"], "shape") else 0)
                dims = _plate_dims(site)
                if dims:
                    nesting = max(nesting, -min(dims))
        if self.max_plate_nesting is None:
            self.max_plate_nesting = nesting
        elif self.max_plate_nesting < nesting:
            raise ValueError(
                f"max_plate_nesting={self.max_plate_nesting} but the model nests plates "
                f"{nesting} deep; pass max_plate_nesting={nesting} or leave it None"
            )
        self._check_map_sites(trace)
        self.param_names = tuple(
            name for name, site in trace.nodes.items() if site["type"] == "param"
        )
        self.map_sites = tuple(
            name for name, site in trace.nodes.items() if site["type"] == "sample" and is_map_site(site)
        )
        # a latent's shifted copy (pyroem.vectorized_markov or pyro.contrib.funsor's)
        self.vectorized_chain = any(
            site["type"] == "sample" and site["infer"].get("_do_not_score") and not site["is_observed"]
            for site in trace.nodes.values()
        )
        self._probed = True

    def _probe_trace(self, args: tuple, kwargs: dict) -> Trace:
        """The model run once: under enumeration at dims left of any plate it may nest (each
        latent a column of its values, so a chain over ``T`` steps costs what the E-step's trace
        costs), or, where it cannot run so, with every latent at the first value of its support
        (an error of the model itself is then raised from that run)."""
        depth = thresholds.PROBE_NESTING if self.max_plate_nesting is None else self.max_plate_nesting
        try:
            # the data are checked by the first E-step's trace (in a data-parallel fit, where every
            # rank learns of a failure), not here
            model = poutine.enum(LatentPolicy(enumerate=True, check_data=False)(self.model),
                                 first_available_dim=-1 - depth)
            return poutine.trace(model).get_trace(*args, **kwargs)
        except Exception:
            try:
                return poutine.trace(LatentPolicy(enumerate=False, check_data=False)(self.model)).get_trace(
                    *args, **kwargs)
            except (ValueError, RuntimeError) as err:
                add_shape_hint(err)
                raise

    def ensure_probed(self, args: tuple, kwargs: dict) -> None:
        """Probe the model on these arguments unless it has been probed already (and again where
        the param store lost its params, e.g. after ``pyro.clear_param_store()``)."""
        if not self._probed or any(n not in pyro.get_param_store() for n in self.param_names):
            self.probe(args, kwargs)

    def require_fittable(self) -> None:
        if not self.param_names and not self.map_sites:
            raise ValueError(
                "the model declares no pyro.param and no continuous global latent: "
                "EM has nothing to fit"
            )

    @staticmethod
    def _check_map_sites(trace: Trace) -> None:
        """Refuse a continuous latent that is local: one that shares a plate with a discrete
        latent (it would have to be integrated out jointly with it), or that is replicated as
        finely as some observation (one value per data point). A continuous latent in a plate of
        its own (components, items) is global and becomes a MAP estimate."""
        discrete, data = [], []
        for site in trace.nodes.values():
            if site["type"] != "sample" or is_unscored(site):
                continue
            plates = frozenset(f.name for f in site["cond_indep_stack"] if f.vectorized)
            if is_data_site(site):
                data.append(plates)
            elif not site["is_observed"] and not is_map_site(site):
                discrete.append((site["name"], plates))
        for name, site in trace.nodes.items():
            if site["type"] != "sample" or not is_map_site(site):
                continue
            plates = frozenset(f.name for f in site["cond_indep_stack"] if f.vectorized)
            if not plates:
                continue
            why = None
            for other, p in discrete:
                if p & plates:
                    plate = sorted(p & plates)[0]
                    why = (f"inside plate '{plate}', which also holds the discrete latent '{other}': "
                           "the exact E-step cannot integrate a continuous latent jointly with it")
                    break
            if why is None:
                for p in data:
                    if p and p <= plates:
                        plate = sorted(p)[0]
                        why = (f"inside plate '{plate}', which holds observed data: one value per "
                               "observation is a local latent the exact E-step cannot integrate out")
                        break
            if why is not None:
                raise ValueError(
                    f"site '{name}' is a continuous latent {why}. Observe it, move it out of the "
                    "plate (it is then a MAP estimate), or fit the model with SVI or MCMC"
                )

    # -- tracing ---------------------------------------------------------------------
    def enumerated_model(self, subsample: Optional[Dict[str, torch.Tensor]] = None,
                         values: Optional[Dict[str, torch.Tensor]] = None, check_data: bool = True) -> Callable:
        self._policy = LatentPolicy(enumerate=True, values=values, check_data=check_data)
        model = self._policy(self.model)
        if values:
            model = SubstituteParams(values)(model)
        if subsample:
            model = ReplaySubsample(subsample)(model)
        return poutine.enum(model, first_available_dim=-1 - self.max_plate_nesting)

    def trace(
        self, args: tuple, kwargs: dict, subsample: Optional[Dict[str, torch.Tensor]] = None,
        values: Optional[Dict[str, torch.Tensor]] = None, validate: bool = False,
    ) -> Trace:
        """An enumerated trace with ``log_prob`` computed at every sample site; ``values``
        (constrained, by name) replace the param store's params and MAP estimates. ``validate``:
        distributions validate their arguments even where these arguments were traced before."""
        self.ensure_probed(args, kwargs)
        # distributions validate their parameters and the data on the first trace of these
        # arguments; the steps of a fit that follow trace the same data with params that stay
        # inside their constraints, and skip it (a value gone wrong still shows as a non-finite
        # log-likelihood, explained by a validated trace)
        again = not validate and self._validated.matches(args, kwargs)
        with _distribution_validation(not again):
            try:
                trace = poutine.trace(self.enumerated_model(subsample, values, check_data=not again)).get_trace(
                    *args, **kwargs)
                # vectorized Markov chains, by name: the E-step contracts them along time
                trace.markov_chains = dict(self._policy.chains)
                if self.shared_scale is not None:
                    for site in trace.nodes.values():
                        if site["type"] == "sample" and is_map_site(site):
                            site["scale"] = site["scale"] * self.shared_scale
                compute_log_prob(trace)
            except (ValueError, RuntimeError) as err:
                add_shape_hint(err)
                raise
        if not again and dist.is_validation_enabled():
            self._validated.remember(args, kwargs)
        return trace

    @staticmethod
    def subsample_indices(trace: Trace) -> Dict[str, torch.Tensor]:
        return {
            name: site["value"]
            for name, site in trace.nodes.items()
            if site["type"] == "sample" and is_subsample_site(site)
        }

    def names(self) -> Tuple[str, ...]:
        """Every fitted parameter's name (params, then MAP sites)."""
        return self.param_names + tuple(n for n in self.map_sites if n not in self.param_names)

    def params(self) -> Dict[str, torch.Tensor]:
        """Current constrained values of every fitted parameter (params and MAP sites)."""
        store = pyro.get_param_store()
        return {name: store.get_param(name) for name in self.names()}
