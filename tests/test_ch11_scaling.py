"""Chapter 11: the counting formulas against Hugging Face's GPT-2 and PyTorch's FLOP counter,
and the chapter's copy of the ladder results against the committed benchmark output."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from solutions.ch06_gpt import GPTConfig
from solutions.ch11_scaling import (ISOFLOP_FIELDS, LADDER_FIELDS, LADDER_RESULTS, flops_per_token, ladder_runs,
                                    ladder_sizes, param_count)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "scaling_ladder.json"
CONFIGS = [(65, 64, 2, 4, 32), (84, 32, 3, 2, 24), (50, 16, 1, 1, 8)]


def _hf_gpt2(V, T, L, H, d):
    import transformers
    from transformers import AutoModelForCausalLM, GPT2Config

    transformers.logging.set_verbosity_error()
    cfg = GPT2Config(vocab_size=V, n_positions=T, n_embd=d, n_layer=L, n_head=H)
    return AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")


@pytest.mark.parametrize("spec", CONFIGS)
def test_parameter_count_equals_hugging_face_gpt2(spec):
    hf = _hf_gpt2(*spec)
    cfg = GPTConfig(*spec)
    assert param_count(cfg) == hf.num_parameters()
    assert param_count(cfg, non_embedding=True) == hf.num_parameters(exclude_embeddings=True)


@pytest.mark.parametrize("spec", CONFIGS)
def test_flops_per_token_equals_the_counter_on_hugging_face_gpt2(spec):
    V, T, L, H, d = spec
    hf = _hf_gpt2(*spec)
    ids = torch.randint(V, (2, T))
    with FlopCounterMode(display=False) as counter:
        hf(ids).logits.sum().backward()
    assert counter.get_total_flops() == 2 * T * flops_per_token(GPTConfig(V, T, L, H, d), T)


def test_the_counter_misses_the_fused_cpu_attention_of_the_ladder_model():
    """The ladder's model (chapter 7) uses F.scaled_dot_product_attention(is_causal=True);
    this torch's FlopCounterMode counts its weights but not that kernel. The ladder therefore
    adds attention's 12 L T d itself. If torch learns to count the kernel, this test says so."""
    from solutions.ch07_pretraining import GPT, GPTConfig as TinyConfig

    V, T, L, H, d = 84, 64, 2, 4, 32
    model = GPT(TinyConfig(vocab_size=V, block_size=T, n_layer=L, n_head=H, n_embd=d, bias=False))
    with FlopCounterMode(display=False) as counter:
        model(torch.randint(V, (1, T))).sum().backward()
    per_token = counter.get_total_flops() / T
    assert per_token + 12 * L * T * d == ladder_sizes(L, d, V)["flops_per_token"]


def test_chapter_copy_of_the_ladder_equals_the_committed_results():
    committed = json.loads(RESULTS.read_text())
    assert len(LADDER_RESULTS["ladder"]) == len(committed["ladder"]) >= 6
    for row, run in zip(LADDER_RESULTS["ladder"], committed["ladder"]):
        assert row == tuple(run[k] for k in LADDER_FIELDS)
    budgets = {run["budget"] for run in committed["isoflop"]}
    assert len(budgets) >= 3
    assert len(LADDER_RESULTS["isoflop"]) == len(committed["isoflop"])
    for row, run in zip(LADDER_RESULTS["isoflop"], committed["isoflop"]):
        assert row == tuple(run[k] for k in ISOFLOP_FIELDS)


def test_committed_runs_are_consistent():
    committed = json.loads(RESULTS.read_text())
    vocab = committed["data"]["vocab_size"]
    for run in committed["ladder"] + committed["isoflop"]:
        sizes = ladder_sizes(run["n_layer"], run["n_embd"], vocab)
        assert run["N"] == sizes["N"] and run["flops_per_token"] == sizes["flops_per_token"]
        assert run["tokens"] == run["steps"] * run["batch"] * run["block"]
        assert run["C"] == run["flops_per_token"] * run["tokens"]
    for run in ladder_runs("isoflop"):
        assert abs(run["C"] / run["budget"] - 1) < 0.05 or run["steps"] == 20  # whole batches, 20 steps at least
