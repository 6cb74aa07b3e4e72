"""The sizes at which the engine switches from one implementation to another, in one place.

Each switch trades Python work per call (a fixed cost of a few microseconds per tensor
operation) against arithmetic or memory; none changes a result beyond rounding. The modules read
them at call time (``thresholds.SCAN_FROM``), so a test or a benchmark can set them.
``benchmarks/bench_hmm.py`` and ``benchmarks/bench_engine_gmm.py`` show their effect.
"""
from __future__ import annotations

import torch

# -- tracing the model (model_trace.py) -------------------------------------------------------
#: batch elements from which a log-density whose parameters are only broadcast along some dims is
#: computed once per distinct parameter row and broadcast as a view: below, one ordinary
#: ``log_prob`` call costs less than building the second, compact distribution
COMPACT_FROM = 1 << 12

#: plates the probe run leaves room for before the dims it enumerates in; a model nesting more
#: is probed by a plain run instead (one more run of the model, once per fit)
PROBE_NESTING = 8

# -- contracting the trace (estep.py, logsumexp.py) --------------------------------------------
#: elements per piece of the E-step's logsumexp over a single table: every pass over a piece
#: stays in cache; smaller pieces cost more calls
LSE_PIECE = 1 << 18

#: latents from which a ``pyro.markov`` path is stacked along time for the chain kernels: two
#: latents are eliminated one at a time for less
PATH_FROM = 3

# -- chains (chain_kernels.py) ------------------------------------------------------------------
#: steps from which a chain is eliminated by the chunked scan (O(T K³) work in about 2√T
#: sequential steps) instead of the forward recursion (O(T K²) work in T sequential steps)
SCAN_FROM = 1024

#: steps between two renormalizations of the forward recursion and of the scan's chunk products:
#: each step shrinks a row by at most one observation's probability relative to the best state's;
#: float64 absorbs eight factors of 1e-30 before underflow, float32 one (an underflow falls back
#: to log space)
RESCALE_EVERY = {torch.float64: 8, torch.float32: 1}

# -- Viterbi (viterbi.py) -----------------------------------------------------------------------
#: scores per step (sequences × K²) from which the recursion runs in torch, whose reduction over
#: contiguous memory then outweighs its larger cost per call; below, in numpy
VITERBI_TORCH_FROM = 1 << 12

#: up to this many states one float64 sequence runs its recursion over Python floats: a few
#: scalar operations per step cost less than numpy's per-call overhead
VITERBI_SCALAR_MAX_STATES = 10

#: the blocked decoder forms K × K × K max-plus products; past this many states the sequential
#: one (K × K per step) is cheaper whatever the length
BLOCKED_MAX_STATES = 16

#: rounds of corrections after which the speculative decoder gives way to the blocked one (a
#: chain whose best paths do not coalesce within a block, such as near-identity transitions)
SPECULATIVE_MAX_PASSES = 4

# -- the autograd M-step (newton.py) -------------------------------------------------------------
#: unknowns (scalar coordinates of a block) up to which the inner solver forms the Hessian
#: (Newton); larger blocks use L-BFGS
NEWTON_MAX_SIZE = 256

#: coordinates up to which the Hessian is formed row by row (a backward pass each); above, in
#: one batched backward pass, whose first use in a process costs about half a second of set-up
ROWWISE_HESSIAN_SIZE = 32

# -- threads (threads.py) -----------------------------------------------------------------------
#: elements of a fit's largest table below which it runs on one thread: on small tables the
#: threads' hand-offs cost more than the work they share, and on a busy machine their spinning
#: makes a fit many times slower
SINGLE_THREAD_WORK = 1 << 16
