"""Chapter 18: the re-derived references equal the libraries; the chapter's claims hold."""
from __future__ import annotations

import contextlib
import io
import warnings

import pytest
import torch

import autograder.exercises.ch18_inference as X
from autograder.drivers.ch18_inference import build_gpt
from solutions.ch18_inference import (NF4_CODE, CachedGPT, NgramDraft, absmax_quantize, expected_speedup,
                                      generate_batch, nf4_dequantize, nf4_quantize, speculative_generate, to_hf_gpt2,
                                      zeropoint_quantize)


@pytest.fixture(scope="module")
def bnbf():
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        import bitsandbytes.functional as F
    return F


def _weights(seed, shape, scale=0.02):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g) * scale
    x.view(-1)[torch.randint(x.numel(), (max(1, x.numel() // 40),), generator=g)] *= 6
    return x


# -- NF4: the grader's re-derivation (and the solution) are bitsandbytes, bit for bit -------
def test_nf4_table_is_bitsandbytes(bnbf):
    code = bnbf.get_4bit_type("nf4", device="cpu")
    assert code.tolist() == NF4_CODE == X.BNB_NF4


@pytest.mark.parametrize("shape,blocksize", [((4, 64), 64), ((3, 50), 64), ((75,), 64), ((2, 3, 37), 32),
                                             ((128, 512), 64), ((7, 129), 128), ((1,), 64), ((2, 96), 32)])
def test_nf4_rederivation_equals_bitsandbytes(bnbf, shape, blocksize):
    for seed in range(3):
        x = _weights(seed, shape)
        if seed == 2 and x.numel() > blocksize:
            x.view(-1)[:blocksize] = 0  # a block of zeros
        packed_b, state = bnbf.quantize_4bit(x, blocksize=blocksize, quant_type="nf4")
        packed, absmax = X.bnb_quantize_nf4(x, blocksize)
        assert torch.equal(packed_b.reshape(-1), packed)
        assert torch.equal(state.absmax, absmax)
        ours_p, ours_a = nf4_quantize(x, blocksize)
        assert torch.equal(ours_p, packed) and torch.equal(ours_a, absmax)
        back = bnbf.dequantize_4bit(packed_b, state)
        assert torch.equal(back, X.bnb_dequantize_nf4(packed, absmax, shape, blocksize))
        assert torch.equal(back, nf4_dequantize(packed, absmax, shape, blocksize))


def test_nf4_exact_midpoints_go_to_the_lower_code(bnbf):
    code = torch.tensor(NF4_CODE)
    mids = (code[1:] + code[:-1]) / 2
    x = torch.cat([torch.tensor([1.0]), mids, torch.zeros(64 - 16)])
    packed_b, _ = bnbf.quantize_4bit(x, blocksize=64, quant_type="nf4")
    assert torch.equal(packed_b.reshape(-1), nf4_quantize(x)[0])
    assert torch.equal(packed_b.reshape(-1), X.bnb_quantize_nf4(x)[0])


# -- torch's quantized tensors and the plain formula agree -----------------------------------
def test_plain_formula_equals_quantize_per_tensor():
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(5000, generator=g) * (seed + 1) / 5
        scale = float(x.abs().max() / 127)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = torch.quantize_per_tensor(x, scale, 0, torch.qint8).int_repr()
            zp_scale, zp = X._minmax_qparams(x)
            ref_u = torch.quantize_per_tensor(x, float(zp_scale), zp, torch.quint8).int_repr()
        assert torch.equal(ref, torch.round(x / scale).clamp(-128, 127).to(torch.int8))
        assert torch.equal(ref, absmax_quantize(x)[0])
        q, s, z = zeropoint_quantize(x)
        assert torch.equal(ref_u, q) and int(z) == zp and float(s) == float(zp_scale)
        assert torch.equal(ref_u, (torch.round(x / zp_scale) + zp).clamp(0, 255).to(torch.uint8))


def test_minmax_observer_recipe_equals_the_formula():
    for x in (torch.rand(100) + 0.5, -torch.rand(100), torch.randn(100)):
        scale, zp = X._minmax_qparams(x)
        lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
        assert abs(float(scale) - (hi - lo) / 255) < 1e-7
        assert zp == int(torch.round(torch.tensor(-lo) / scale).clamp(0, 255))


def test_fallbacks_equal_torch(monkeypatch):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, generator=g)
    w = torch.randn(6, 32, generator=g)
    s = w.abs().amax(1) / 7
    with_torch = (X.torch_quantize(x, 0.03, 5, torch.quint8), X.torch_quantize_rows(w, s), X._minmax_qparams(x))
    monkeypatch.delattr(torch, "quantize_per_tensor")
    monkeypatch.delattr(torch, "quantize_per_channel")
    import torch.ao.quantization as tq
    monkeypatch.delattr(tq, "MinMaxObserver")
    assert torch.equal(with_torch[0], X.torch_quantize(x, 0.03, 5, torch.quint8))
    assert torch.equal(with_torch[1], X.torch_quantize_rows(w, s))
    scale, zp = X._minmax_qparams(x)
    assert zp == with_torch[2][1] and abs(float(scale) - float(with_torch[2][0])) < 1e-7


# -- distillation: batchmean vs mean ----------------------------------------------------------
def test_kl_div_mean_is_smaller_by_the_vocabulary():
    import torch.nn.functional as F

    s, t = torch.randn(6, 30), torch.randn(6, 30)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mean = F.kl_div(F.log_softmax(s, -1), F.softmax(t, -1), reduction="mean")
    batchmean = F.kl_div(F.log_softmax(s, -1), F.softmax(t, -1), reduction="batchmean")
    assert torch.allclose(mean * 30, batchmean)


# -- the models: CachedGPT, the grader's GPT and Hugging Face's GPT-2 agree -------------------
def test_cached_gpt_grader_gpt_and_hf_agree():
    spec = X._random_spec(5)
    grader = build_gpt(spec)
    from solutions.ch07_pretraining import GPTConfig

    c = spec["config"]
    ours = CachedGPT(GPTConfig(**c)).eval()
    ours.load_state_dict({**spec["state"], "lm_head.weight": spec["state"]["wte.weight"]})
    hf = X.hf_from_spec(spec)
    idx = torch.randint(0, c["vocab_size"], (3, 20))
    with torch.no_grad():
        ref = hf(idx).logits
        assert torch.allclose(ours(idx), ref, atol=1e-4)
        assert torch.allclose(grader(idx), ref, atol=1e-4)
        assert torch.allclose(super(CachedGPT, ours).forward(idx), ref, atol=1e-4)  # chapter 7's forward
        # with a cache, a mask and left padding: the padded row's logits equal the row alone
        mask = torch.ones(3, 20, dtype=torch.bool)
        mask[0, :5] = False
        pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
        for model in (ours, grader):
            cache = model.new_cache()
            first = model(idx[:, :12], pos[:, :12], mask[:, :12], cache)
            rest = model(idx[:, 12:], pos[:, 12:], mask, cache)
            alone = model(idx[:1, 5:])
            assert torch.allclose(torch.cat([first, rest], 1)[0, 5:], alone[0], atol=1e-4)


def test_pretrained_batched_generation_equals_hf_and_alone():
    from solutions.ch18_inference import pretrained_cached

    model, encode, _ = pretrained_cached()
    hf = to_hf_gpt2(model)
    prompts = [encode("ROMEO:\n"), encode("To be, or not"), encode("KING")]
    ours = generate_batch(model, prompts, 30, pad_id=0)
    L = max(map(len, prompts))
    ids = torch.tensor([[0] * (L - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
        out = hf.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=30)
    assert torch.equal(out[:, L:], ours)
    for b, p in enumerate(prompts):
        assert torch.equal(generate_batch(model, [p], 30, 0)[0], ours[b])


def test_speculative_with_table_draft_equals_greedy_and_hf_assisted():
    from solutions.ch18_inference import pretrained_cached

    model, encode, _ = pretrained_cached()
    import json

    from solutions.ch07_pretraining import _models_dir
    from solutions.ch18_inference import shakespeare_split

    vocab = json.loads((_models_dir() / "shakespeare_char.json").read_text())["vocab"]
    ids = shakespeare_split(vocab)[0][:300_000]
    draft = NgramDraft(ids, len(vocab), n=5)
    p = encode("HAMLET:\nTo be")
    greedy = generate_batch(model, [p], 50, 0)[0].tolist()
    for k in (1, 3, 6):
        out, accepted = speculative_generate(model, draft, p, 50, k)
        assert out == greedy
        assert sum(a + 1 for a in accepted) == 50
    small = CachedGPT(model.config._replace(n_layer=1)).eval()
    out, _ = speculative_generate(model, small, p, 30, 4)
    hf_t, hf_d = to_hf_gpt2(model), to_hf_gpt2(small)
    with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
        assisted = hf_t.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                                 do_sample=False, max_new_tokens=30, assistant_model=hf_d)
    assert assisted[0, len(p):].tolist() == out == greedy[:30]


def test_expected_speedup_limits():
    assert float(expected_speedup(0.0, 4, 0.1)) == pytest.approx(1 / 1.4)
    assert float(expected_speedup(0.999999, 4, 0.0)) == pytest.approx(5.0, rel=1e-4)
    assert float(expected_speedup(0.8, 3, 0.05)) == pytest.approx((1 - 0.8 ** 4) / (0.2 * 1.15))


def test_hidden_cases_keep_clear_margins_under_other_secrets():
    from autograder.core import using_secret

    for secret in ("s1", "s2"):
        with using_secret(secret):
            for ex_id in ("ch18.generate_batch", "ch18.speculative_generate", "ch18.nf4_quantize"):
                from autograder.core import get

                cases = list(get(ex_id).cases(True))
                assert len(cases) == len(list(get(ex_id).cases(False))) + (2 if ex_id != "ch18.nf4_quantize" else 3)
