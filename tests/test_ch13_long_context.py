"""Chapter 13: the references the checks rest on, and the solution at benchmark sizes."""
from __future__ import annotations

import torch

from autograder.exercises import ch13_long_context as ex


def test_matrix_exp_reference_is_the_zero_order_hold_formula():
    # The check's reference (the exponential of [[dt a, dt], [0, 0]]) equals the closed form.
    g = torch.Generator().manual_seed(0)
    delta = torch.rand(2, 5, 3, generator=g) * 3
    A = -torch.rand(3, 4, generator=g) * 5 - 0.01
    B = torch.randn(2, 5, 4, generator=g)
    dA, dB = ex._zoh_expected(delta, A, B)
    x = delta.double()[..., None] * A.double()
    assert torch.allclose(dA, x.exp(), atol=1e-12)
    assert torch.allclose(dB, x.expm1() / A.double() * B.double()[:, :, None, :], atol=1e-12)


def test_chunked_block_equals_mamba_mixer_at_a_benchmark_length():
    # What benchmarks/bench_mamba.py measures: the same outputs as MambaMixer's torch path.
    import functools

    from transformers import MambaConfig
    from transformers.models.mamba.modeling_mamba import MambaMixer
    from transformers.utils import logging

    from solutions.ch13_long_context import MambaWeights, chunked_scan, mamba_mixer

    logging.set_verbosity_error()
    cfg = MambaConfig(hidden_size=128, state_size=16, num_hidden_layers=1, vocab_size=64, use_associative_scan=False)
    torch.manual_seed(0)
    hf = MambaMixer(cfg, layer_idx=0).eval()
    ours = MambaWeights(128, state_size=16)
    ours.load_state_dict(hf.state_dict())
    x = torch.randn(1, 2048, 128)
    with torch.no_grad():
        y_hf = hf(x)
        y = mamba_mixer(ours, x, scan=functools.partial(chunked_scan, chunk_size=32))
    assert torch.isfinite(y).all()
    assert torch.allclose(y, y_hf, atol=1e-5, rtol=1e-4), float((y - y_hf).abs().max())


def test_hf_references_write_nothing_to_stderr(capfd):
    ex._hf_scan(*ex._mamba_like_inputs(torch.Generator().manual_seed(0), 1, 4, 4, 2))
    ex._hf_conv(torch.randn(1, 3, 5), torch.randn(3, 4), torch.randn(3))
    ex._mixer_expected((0, 16, 4, 4, 2), torch.randn(1, 6, 16))
    ex._step_case((0, 16, 4, 4, 2), 1, 3, 2)
    assert capfd.readouterr().err == ""
