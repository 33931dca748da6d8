"""Chapter 1 - what the checks need to run and judge a learner's code (public)."""
from __future__ import annotations

import torch

N_DRAWS = 2000


def sampling_run(fn, logits, temperature):
    """Draw N_DRAWS tokens with the learner's sampler; return the empirical frequencies."""
    torch.manual_seed(1234)
    generator = torch.Generator().manual_seed(1234)
    counts = torch.zeros(logits.numel(), dtype=torch.float64)
    for _ in range(N_DRAWS if temperature != 0 else 20):
        token = fn(logits.clone(), temperature, generator)
        if isinstance(token, torch.Tensor):
            if token.numel() != 1:
                raise TypeError(f"return one token id (an int), not a tensor of shape {tuple(token.shape)}")
            token = token.item()
        if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token < logits.numel():
            raise TypeError(f"return a token id: an int in [0, {logits.numel()}), not {token!r}")
        counts[token] += 1
    return counts / counts.sum()


def compare_distributions(expected, got):
    if not isinstance(got, torch.Tensor):
        return f"could not collect your samples: {got!r}"
    tv = 0.5 * float((expected - got).abs().sum())
    # With 2000 draws the sampling noise in total variation is about 0.02; 0.06 leaves room.
    if tv > 0.06:
        worst = int((expected - got).abs().argmax())
        return (f"your samples do not follow softmax(logits / T): total variation distance {tv:.3f} > 0.06; "
                f"token {worst} should come up {float(expected[worst]):.1%} of the time, yours {float(got[worst]):.1%}")
    return None
