"""Effect handlers that turn a user's Pyro model into one EM can work with.

:class:`LatentPolicy` decides, site by site, what each unobserved ``pyro.sample``
statement means for EM: a finite discrete latent is enumerated in parallel, a
continuous global latent becomes a MAP point estimate kept in the param store,
anything else is refused with an error that names the site.
:class:`ReplaySubsample` keeps a subsampled plate on the same indices between
the traces of one EM step.
"""
from __future__ import annotations

from typing import Dict, NamedTuple, Optional, Tuple

import torch
from pyro.distributions import Categorical, constraints
from torch.distributions.utils import probs_to_logits
from pyro.distributions.torch_distribution import MaskedDistribution, TorchDistributionMixin
from pyro.infer.autoguide.initialization import init_to_feasible, init_to_mean
from pyro.params.param_store import ParamStoreDict
import pyro
from pyro.poutine.messenger import Messenger

MAP_FLAG = "_pyroem_map"


class MarkovChain(NamedTuple):
    """A vectorized chain: variable ``v`` at ``suffixes`` is the site ``f"{v}{suffix}"``, e.g.
    ``x_0``, ``x_slice(0, T-1, None)`` (the previous state, not scored) and
    ``x_slice(1, T, None)`` for ``history=1``."""

    name: str
    variables: Tuple[str, ...]
    suffixes: tuple

    @property
    def history(self) -> int:
        return sum(1 for s in self.suffixes if isinstance(s, int))

    def sites(self, variable: str) -> Tuple[str, ...]:
        return tuple(f"{variable}{s}" for s in self.suffixes)


def is_subsample_site(site: dict) -> bool:
    """True for the bookkeeping sample site a subsampled ``pyro.plate`` records."""
    return type(site["fn"]).__name__ == "_Subsample"


def is_unscored(site: dict) -> bool:
    """A site that is no factor of the joint: a subsampled plate's record, or a vectorized Markov
    chain's shifted copy of a variable (``infer["_do_not_score"]``, see :mod:`pyroem.markov`)."""
    return is_subsample_site(site) or bool(site["infer"].get("_do_not_score"))


def is_map_site(site: dict) -> bool:
    return bool(site["infer"].get(MAP_FLAG, False))


def is_data_site(site: dict) -> bool:
    """An observation: observed, and neither a MAP estimate, a ``pyro.deterministic`` record nor
    a reparameterizer's Delta (a masked-out factor)."""
    if not site["is_observed"] or is_map_site(site) or is_unscored(site):
        return False
    if site["infer"].get("_deterministic"):
        return False
    fn = site["fn"]
    return not (isinstance(fn, MaskedDistribution) and fn._mask is False)


def is_enumerated_site(site: dict) -> bool:
    return site["infer"].get("_enumerate_dim") is not None


def _initial_value(site: dict) -> torch.Tensor:
    """The prior's median, else its mean, else a feasible point: whichever first lies in the support."""
    fn, support = site["fn"], site["fn"].support
    candidates = []
    try:
        samples = fn.sample((31,))
        candidates.append(samples.median(dim=0).values)
    except (NotImplementedError, RuntimeError, ValueError):
        pass
    for init in (init_to_mean, init_to_feasible):
        try:
            candidates.append(init(site))
        except (NotImplementedError, RuntimeError, ValueError):
            pass
    for value in candidates:
        value = value.detach()
        if torch.isfinite(value).all() and bool(support.check(value).all()):
            return value
    raise ValueError(
        f"cannot initialize the MAP estimate of site '{site['name']}': its prior has no "
        f"median, mean or feasible point in its support; create pyro.param('{site['name']}', "
        "init_value, constraint=...) before fitting"
    )


def _share_broadcast_logits(fn) -> None:
    """A ``Categorical(probs)`` broadcast over a plate holds an (N, K) view of K probabilities;
    its lazily computed logits would take N·K logs. Compute them once on the K and broadcast."""
    if not isinstance(fn, Categorical) or "logits" in fn.__dict__:
        return
    probs = fn.probs
    shared = [i for i in range(probs.dim() - 1) if probs.stride(i) == 0 and probs.size(i) > 1]
    if shared:
        compact = probs[tuple(slice(0, 1) if i in shared else slice(None) for i in range(probs.dim()))]
        fn.__dict__["logits"] = probs_to_logits(compact).expand(probs.shape)


def _base(fn):
    while hasattr(fn, "base_dist"):
        fn = fn.base_dist
    return fn


def _float_observation(msg: dict) -> None:
    """Integer or boolean observations (0/1 answers, counts read as int64) of a distribution that
    scores them as real numbers — a continuous one, or Bernoulli, Binomial, Poisson, Geometric,
    NegativeBinomial, Multinomial; not the categorical ones, which index by them — are read as
    floats of the distribution's own float type."""
    value = msg["value"]
    if not isinstance(value, torch.Tensor) or value.is_floating_point() or value.is_complex():
        return
    base = _base(msg["fn"])
    counts = (torch.distributions.Bernoulli, torch.distributions.Binomial, torch.distributions.Poisson,
              torch.distributions.Geometric, torch.distributions.NegativeBinomial, torch.distributions.Multinomial)
    try:
        continuous = not base.support.is_discrete
    except NotImplementedError:
        return
    if not (continuous or isinstance(base, counts)):
        return
    dtype = next((t.dtype for t in base.__dict__.values() if isinstance(t, torch.Tensor) and t.is_floating_point()),
                 torch.get_default_dtype())
    msg["value"] = value.to(dtype)


def _refuse_nan(msg: dict) -> None:
    """A clear error for NaN data (not Pyro's support error, which prints the tensor)."""
    value = msg["value"]
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        nan = torch.isnan(value)
        if bool(nan.any()):
            raise ValueError(
                f"site '{msg['name']}' observes NaN values ({int(nan.sum())} of {value.numel()} entries). To "
                "integrate them out of the likelihood, build EM(model, missing='marginalize') (or wrap the "
                "model in pyroem.marginalize_missing)")


class LatentPolicy(Messenger):
    """Enumerate finite discrete latents, point-estimate continuous global latents.

    :param enumerate: mark discrete latents for parallel enumeration (off for the
        probe run that only learns the model's plate structure).

    :param values: constrained values that stand in for the param store's MAP estimates
        (the M-step's trial points); see :class:`SubstituteParams`.

    :param check_data: refuse NaN observations, naming the site and how to integrate them out
        (on the runs that validate the data, the first of each data set).
    """

    def __init__(self, enumerate: bool = True, values: Optional[Dict[str, torch.Tensor]] = None,
                 check_data: bool = True) -> None:
        super().__init__()
        self.enumerate = enumerate
        self.values = values or {}
        self.check_data = check_data
        self.chains: Dict[str, MarkovChain] = {}

    def _pyro_sample(self, msg: dict) -> None:
        if msg["is_observed"] and not msg["done"]:
            _float_observation(msg)
            if self.check_data:
                _refuse_nan(msg)
        if msg["is_observed"] or msg["done"] or is_subsample_site(msg):
            return
        fn = msg["fn"]
        name = msg["name"]
        if not isinstance(fn, TorchDistributionMixin):
            raise ValueError(
                f"site '{name}' is an unobserved sample site whose distribution "
                f"{type(fn).__name__} is not a Pyro distribution; EM cannot handle it"
            )
        if getattr(fn, "has_enumerate_support", False):
            mode = msg["infer"].get("enumerate")
            if mode == "sequential":
                raise ValueError(
                    f"site '{name}' asks for sequential enumeration; EM enumerates discrete "
                    "latents in parallel: drop infer={'enumerate': 'sequential'}"
                )
            if msg["infer"].get("num_samples") is not None:
                raise ValueError(
                    f"site '{name}' asks for Monte Carlo enumeration (num_samples); EM's "
                    "E-step is exact: drop num_samples from its infer dict"
                )
            if self.enumerate:
                msg["infer"]["enumerate"] = "parallel"
                _share_broadcast_logits(fn)
            elif msg["value"] is None:
                # the probe run only learns plates and params: the first value of the support
                # serves as well as a random draw, without a multinomial over every data point
                first = fn.enumerate_support(expand=False)[0]
                msg["value"] = first.expand(fn.batch_shape + fn.event_shape)
            return
        if fn.support.is_discrete:
            raise ValueError(
                f"site '{name}' is a discrete latent with infinite support "
                f"({type(fn).__name__}); the exact E-step can only enumerate finite supports "
                "(Categorical, Bernoulli, Binomial, ...): observe it or bound its support"
            )
        # A continuous latent: a MAP point estimate held in the param store.
        store = pyro.get_param_store()
        support = fn.support
        if name not in store:
            value = _initial_value(msg)
            store.setdefault(name, value, constraint=support)
        value = self.values[name] if name in self.values else store.get_param(name)
        if value.shape != fn.shape():
            raise ValueError(
                f"the param '{name}' that holds the MAP estimate of site '{name}' has shape "
                f"{tuple(value.shape)}, but the site's distribution has shape {tuple(fn.shape())}"
            )
        msg["value"] = value
        msg["is_observed"] = True
        msg["infer"][MAP_FLAG] = True

    def _pyro_markov_chain(self, msg: dict) -> None:
        """A vectorized Markov chain ended (:func:`pyroem.vectorized_markov` or
        pyro.contrib.funsor's): record which sites are one variable at shifted times."""
        kwargs = msg["kwargs"]
        self.chains[msg["name"]] = MarkovChain(
            msg["name"], tuple(sorted(kwargs.get("markov_vars", ()))), tuple(kwargs.get("suffixes", ())))


class ReplaySubsample(Messenger):
    """Replay the indices of subsampled plates recorded in an earlier trace."""

    def __init__(self, indices: Dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.indices = indices

    def _pyro_sample(self, msg: dict) -> None:
        if is_subsample_site(msg) and msg["name"] in self.indices:
            msg["value"] = self.indices[msg["name"]]
            msg["done"] = True


class SubstituteParams(Messenger):
    """Every ``pyro.param(name)`` returns ``values[name]`` (a constrained value) where given: the
    M-step evaluates Q at trial parameters without touching the param store."""

    def __init__(self, values: Dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.values = values

    def _pyro_param(self, msg: dict) -> None:
        value = self.values.get(msg["name"])
        if value is not None:
            msg["value"] = value
            msg["done"] = True


def unconstrained(name: str) -> torch.Tensor:
    """The param store's unconstrained tensor for ``name`` (the one optimizers update), read
    without computing the constrained value."""
    store = pyro.get_param_store()
    raw = getattr(store, "_params", None)
    if isinstance(raw, dict) and name in raw:
        return raw[name]
    return store.get_param(name).unconstrained()


def param_constraint(name: str, store: Optional[ParamStoreDict] = None) -> constraints.Constraint:
    """The constraint a param was declared with."""
    store = pyro.get_param_store() if store is None else store
    return store.get_state()["constraints"].get(name, constraints.real)
