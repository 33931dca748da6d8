"""Chapter 1 - Next-token prediction."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..core import Case, Exercise, Mistake, close_floats, close_tensors, hidden_seed, register
from ..drivers.ch01_next_token import compare_distributions, sampling_run

CH = "ch01"
SOL = "solutions.ch01_next_token"


def _ids(seed: int, n: int, vocab: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n,), generator=g)


# -- bigram_counts ------------------------------------------------------------------------
def _ref_bigram_counts(ids, vocab_size):
    # Independent route: bincount over the flattened pair index.
    if ids.numel() < 2:
        return torch.zeros(vocab_size, vocab_size, dtype=torch.int64)
    flat = ids[:-1] * vocab_size + ids[1:]
    return torch.bincount(flat, minlength=vocab_size * vocab_size).view(vocab_size, vocab_size)


def _bigram_cases(hidden: bool):
    text_ids = torch.tensor([ord(c) - ord("a") for c in "abracadabra"])
    specs = [("'abracadabra' as ids 0..17", text_ids, 18),
             ("random ids, V=7, N=200", _ids(0, 200, 7), 7),
             ("a single token (no pairs)", torch.tensor([3]), 5),
             ("the last id is V-1", torch.tensor([0, 4, 4, 4]), 5)]
    if hidden:
        specs += [("random ids, V=50, N=5000", _ids(hidden_seed("ch01.bigram_counts", 1), 5000, 50), 50),
                  ("empty input", torch.tensor([], dtype=torch.int64), 3)]
    for name, ids, v in specs:
        yield Case(name, (ids, v), expected=lambda ids=ids, v=v: _ref_bigram_counts(ids, v),
                   compare=close_tensors(atol=0, rtol=0))


register(Exercise(
    id="ch01.bigram_counts", chapter=CH, title="Count bigrams", points=1, name="bigram_counts",
    signature="bigram_counts(ids: Tensor[N] int64, vocab_size: int) -> Tensor[V, V] int64",
    reference="torch.bincount over the pair index ids[:-1] * V + ids[1:]",
    solution=f"{SOL}:bigram_counts", cases=_bigram_cases, difficulty="*",
    mistakes=[
        Mistake("transposed", "rows and columns are swapped: C[a, b] must count b FOLLOWING a (row = current token)",
                lambda ids, v: _ref_bigram_counts(ids, v).T.contiguous()),
        Mistake("wrapped-around", "you also counted the pair (last token, first token): there is no token after the last one",
                lambda ids, v: _ref_bigram_counts(torch.cat([ids, ids[:1]]), v)),
        Mistake("self-pairs", "you counted (ids[i], ids[i]) instead of (ids[i], ids[i + 1]): an off-by-one in the pairing",
                lambda ids, v: torch.diag(torch.bincount(ids[:-1], minlength=v)) if ids.numel() > 1 else torch.zeros(v, v, dtype=torch.int64)),
    ]))


# -- bigram_probs -------------------------------------------------------------------------
def _ref_bigram_probs(counts, alpha):
    # torch.distributions.Categorical normalises its ``probs`` argument along the last axis.
    return torch.distributions.Categorical(probs=counts.to(torch.float64) + alpha).probs


def _probs_cases(hidden: bool):
    g = torch.Generator().manual_seed(3)
    specs = [("3x3 counts, alpha=1", torch.tensor([[0, 2, 1], [5, 0, 0], [0, 0, 0]]), 1.0),
             ("random 10x10 counts, alpha=0.5", torch.randint(0, 20, (10, 10), generator=g), 0.5),
             ("a row of zeros, alpha=0.1", torch.tensor([[4, 0], [0, 0]]), 0.1)]
    if hidden:
        gh = torch.Generator().manual_seed(hidden_seed("ch01.bigram_probs", 3))
        specs += [("random 40x40 counts, alpha=2", torch.randint(0, 5, (40, 40), generator=gh), 2.0)]
    for name, counts, alpha in specs:
        yield Case(name, (counts,), {"alpha": alpha}, expected=lambda c=counts, a=alpha: _ref_bigram_probs(c, a),
                   compare=close_tensors(atol=1e-6, rtol=1e-5))


register(Exercise(
    id="ch01.bigram_probs", chapter=CH, title="From counts to probabilities (add-alpha smoothing)", points=1,
    name="bigram_probs", signature="bigram_probs(counts: Tensor[V, V], alpha: float = 1.0) -> Tensor[V, V] float",
    reference="torch.distributions.Categorical(probs=counts + alpha).probs",
    solution=f"{SOL}:bigram_probs", cases=_probs_cases,
    mistakes=[
        Mistake("columns", "you normalised the columns (dim=0); each ROW (the current token) must sum to 1",
                lambda c, alpha=1.0: (c.double() + alpha) / (c.double() + alpha).sum(0, keepdim=True)),
        Mistake("no-smoothing", "alpha was not added: unseen pairs must get (0 + alpha) / (row total + V * alpha)",
                lambda c, alpha=1.0: c.double() / c.double().sum(1, keepdim=True)),
        Mistake("alpha-once", "you added alpha to the denominator only once instead of once per column (V * alpha)",
                lambda c, alpha=1.0: (c.double() + alpha) / (c.double().sum(1, keepdim=True) + alpha)),
    ]))


# -- cross_entropy ------------------------------------------------------------------------
def _ce_inputs(seed, n, v, scale):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, v, generator=g) * scale, torch.randint(0, v, (n,), generator=g)


def _ce_cases(hidden: bool):
    specs = [("N=4, V=5", *_ce_inputs(0, 4, 5, 1.0)),
             ("a batch of one", *_ce_inputs(1, 1, 3, 1.0)),
             ("huge logits (scale 1000): a naive exp overflows", *_ce_inputs(2, 8, 6, 1000.0)),
             ("very negative logits (-5000 shift)", _ce_inputs(3, 5, 4, 1.0)[0] - 5000.0, _ce_inputs(3, 5, 4, 1.0)[1])]
    if hidden:
        specs += [("N=64, V=100", *_ce_inputs(hidden_seed("ch01.cross_entropy", 4), 64, 100, 3.0))]
    for name, logits, targets in specs:
        yield Case(name, (logits, targets), expected=lambda l=logits, t=targets: F.cross_entropy(l.double(), t),
                   compare=close_tensors(atol=1e-4, rtol=1e-4))


def _naive_ce(logits, targets):
    p = torch.exp(logits) / torch.exp(logits).sum(1, keepdim=True)
    return -torch.log(p[torch.arange(len(targets)), targets]).mean()


register(Exercise(
    id="ch01.cross_entropy", chapter=CH, title="Cross-entropy, stable for large logits", points=2,
    name="cross_entropy", signature="cross_entropy(logits: Tensor[N, V], targets: Tensor[N] int64) -> Tensor[]",
    reference="torch.nn.functional.cross_entropy", solution=f"{SOL}:cross_entropy", cases=_ce_cases, difficulty="**",
    forbidden=["torch.nn.functional:cross_entropy", "torch.nn.functional:nll_loss", "torch.nn.functional:log_softmax",
               "torch:log_softmax", "torch:logsumexp", "torch.nn:CrossEntropyLoss"],
    mistakes=[
        Mistake("sum", "you summed over the batch; the loss is the MEAN over the N positions",
                lambda l, t: _naive_ce(l.double(), t) * len(t) if l.abs().max() < 50 else F.cross_entropy(l.double(), t, reduction="sum")),
        Mistake("overflow", "exp(logits) overflowed: subtract the row maximum before exponentiating (log-sum-exp trick)",
                _naive_ce),
        Mistake("log2", "you used log base 2; cross-entropy here is in nats (natural log)",
                lambda l, t: F.cross_entropy(l.double(), t) / math.log(2)),
        Mistake("no-normalisation", "you took -logits[target] without subtracting log(sum(exp(logits)))",
                lambda l, t: -l.double()[torch.arange(len(t)), t].mean()),
    ]))


# -- perplexity ---------------------------------------------------------------------------
def _ppl_cases(hidden: bool):
    specs = [("N=6, V=4", *_ce_inputs(5, 6, 4, 1.0)), ("uniform logits: perplexity = V", torch.zeros(3, 7), torch.tensor([0, 3, 6])),
             ("confident and right: perplexity near 1", torch.eye(4) * 20, torch.arange(4))]
    if hidden:
        specs += [("N=50, V=30", *_ce_inputs(hidden_seed("ch01.perplexity", 6), 50, 30, 2.0))]
    for name, logits, targets in specs:
        yield Case(name, (logits, targets), expected=lambda l=logits, t=targets: math.exp(F.cross_entropy(l.double(), t).item()),
                   compare=close_floats(atol=1e-4, rtol=1e-4))


register(Exercise(
    id="ch01.perplexity", chapter=CH, title="Perplexity", points=1, name="perplexity",
    signature="perplexity(logits: Tensor[N, V], targets: Tensor[N]) -> float",
    reference="exp(torch.nn.functional.cross_entropy)", solution=f"{SOL}:perplexity", cases=_ppl_cases,
    forbidden=["torch.nn.functional:cross_entropy", "torch.nn.functional:nll_loss", "torch.nn:CrossEntropyLoss"],
    mistakes=[
        Mistake("base-2", "you computed 2 ** loss with the loss in nats; use exp(loss) (or 2 ** loss with the loss in bits)",
                lambda l, t: 2 ** F.cross_entropy(l.double(), t).item()),
        Mistake("no-exp", "you returned the cross-entropy itself; perplexity is its exponential",
                lambda l, t: F.cross_entropy(l.double(), t).item()),
        Mistake("exp-of-sum", "you exponentiated the SUM of the losses; perplexity uses the mean",
                lambda l, t: math.exp(F.cross_entropy(l.double(), t, reduction="sum").item())),
    ]))


# -- sample_next --------------------------------------------------------------------------
def _temperature_cases(hidden: bool):
    base = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0])
    specs = [("T=1", base, 1.0), ("T=0.5 (sharper)", base, 0.5), ("T=2 (flatter)", base, 2.0),
             ("T=0 is greedy (argmax)", torch.tensor([0.1, 3.0, 2.9, -1.0]), 0.0)]
    if hidden:
        specs += [("T=0.7, 12 tokens", torch.linspace(-2, 2, 12), 0.7)]
    for name, logits, temperature in specs:
        def expected(l=logits, t=temperature):
            if t == 0:
                return F.one_hot(torch.argmax(l), l.numel()).double()
            return torch.softmax(l.double() / t, dim=-1)
        yield Case(name, (logits, temperature), run=sampling_run, expected=expected, compare=compare_distributions)


def _mistake_sampler(transform):
    def sampler(logits, temperature, generator=None):
        if temperature == 0:
            return int(torch.argmax(logits))
        return int(torch.multinomial(transform(logits, temperature), 1, generator=generator))
    return sampler


register(Exercise(
    id="ch01.sample_next", chapter=CH, title="Sampling with temperature", points=1, name="sample_next",
    signature="sample_next(logits: Tensor[V], temperature: float, generator: torch.Generator | None) -> int",
    reference="the distribution softmax(logits / T) that torch.multinomial samples (statistical test, 2000 draws)",
    solution=f"{SOL}:sample_next", cases=_temperature_cases,
    mistakes=[
        Mistake("multiplied", "you multiplied the logits by the temperature; divide them by it (T < 1 must sharpen)",
                _mistake_sampler(lambda l, t: torch.softmax(l * t, -1))),
        Mistake("after-softmax", "you applied the temperature after the softmax (to probabilities), which renormalisation undoes; "
                "divide the LOGITS by T before the softmax",
                _mistake_sampler(lambda l, t: torch.softmax(l, -1) / t)),
        Mistake("greedy", "you always return the most likely token; sample from the distribution instead",
                lambda logits, temperature, generator=None: int(torch.argmax(logits))),
        Mistake("logits-as-probs", "you passed the logits (or exp without normalising) to multinomial as if they were probabilities",
                _mistake_sampler(lambda l, t: (l / t).clamp(min=0) + 1e-12)),
    ]))


# -- gpt2_param_count ---------------------------------------------------------------------
def _hf_param_count(vocab_size, n_positions, n_embd, n_layer):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=vocab_size, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer,
                        n_head=1, bos_token_id=0, eos_token_id=0)
    with torch.device("meta"):  # no memory is allocated: GPT-2 XL is counted, not built
        return GPT2LMHeadModel(config).num_parameters()


def _count_cases(hidden: bool):
    specs = [("tiny: V=100, P=16, d=8, L=2", (100, 16, 8, 2)), ("GPT-2 small", (50257, 1024, 768, 12)),
             ("no layers", (10, 4, 6, 0)), ("V=1000, P=64, d=96, L=5", (1000, 64, 96, 5))]
    if hidden:
        specs += [("GPT-2 medium", (50257, 1024, 1024, 24)), ("GPT-2 XL", (50257, 1024, 1600, 48))]
    for name, cfg in specs:
        yield Case(name, cfg, expected=lambda cfg=cfg: _hf_param_count(*cfg))


def _formula(V, P, d, L, tied=True, biases=True, norms=True, positions=True, mlp=4):
    per_layer = 3 * d * d + d * d + 2 * mlp * d * d
    if biases:
        per_layer += 3 * d + d + mlp * d + d
    if norms:
        per_layer += 4 * d
    total = V * d + L * per_layer + (2 * d if norms else 0)
    if positions:
        total += P * d
    if not tied:
        total += V * d
    return total


register(Exercise(
    id="ch01.gpt2_param_count", chapter=CH, title="How many parameters does GPT-2 have?", points=1,
    name="gpt2_param_count", signature="gpt2_param_count(vocab_size, n_positions, n_embd, n_layer) -> int",
    reference="transformers GPT2LMHeadModel(config).num_parameters() (built on the meta device)",
    solution=f"{SOL}:gpt2_param_count", cases=_count_cases,
    forbidden=["transformers:GPT2LMHeadModel", "transformers:GPT2Model", "transformers:GPT2Config"],
    mistakes=[
        Mistake("untied", "you counted the output layer as a separate V x d matrix; GPT-2 ties it to the token embedding",
                lambda V, P, d, L: _formula(V, P, d, L, tied=False)),
        Mistake("no-biases", "the biases are missing (every Linear/Conv1D in GPT-2 has one)",
                lambda V, P, d, L: _formula(V, P, d, L, biases=False)),
        Mistake("no-layernorm", "the LayerNorms are missing: two per layer and one final, each with a weight and a bias of size d",
                lambda V, P, d, L: _formula(V, P, d, L, norms=False)),
        Mistake("no-positions", "the learned position embedding (n_positions x d) is missing",
                lambda V, P, d, L: _formula(V, P, d, L, positions=False)),
        Mistake("mlp-width", "the MLP's hidden width is 4 * d, not d or 2 * d",
                lambda V, P, d, L: _formula(V, P, d, L, mlp=1)),
    ]))
