"""Chapter 10: the formulas the autograder re-derives are equal to trl's own code.

The checks of chapter 10 cannot import trl (10-30 s), so they use re-derived formulas
(``autograder/exercises/ch10_alignment.py``). Here trl itself computes each quantity on
hand-made inputs, with ``bf16=False, use_cpu=True`` (trl's default bf16 autocast would
change the numbers): the reward model's Bradley-Terry loss (``RewardTrainer.compute_loss``),
the DPO sigmoid loss with its sequence log-probs (``DPOTrainer._compute_loss``), GRPO's group
advantages (``GRPOTrainer._generate_and_score_completions``) and the GRPO loss for each
``loss_type`` with and without ``use_bias_correction_kl`` (``GRPOTrainer._compute_loss``).
A trl upgrade that changes a formula fails here.
"""
from __future__ import annotations

import copy
import os
import warnings

import pytest
import torch

import autograder.drivers.ch10_alignment as D
import autograder.exercises.ch10_alignment as E

V = len(D.CHARS) + len(D.ROLE_TOKENS)


@pytest.fixture(scope="module")
def trl():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import trl as _trl
    from transformers.utils import logging

    logging.set_verbosity_error()
    return _trl


def _gpt2(seed, cls="GPT2LMHeadModel", **extra):
    import transformers

    cfg = transformers.GPT2Config(vocab_size=V, n_positions=64, n_embd=32, n_layer=2, n_head=2, resid_pdrop=0.0,
                                  embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0, pad_token_id=0,
                                  **extra)
    torch.manual_seed(seed)
    return getattr(transformers, cls)(cfg).eval()


def _common(tmp_path):
    return dict(output_dir=str(tmp_path), bf16=False, use_cpu=True, report_to=[], save_strategy="no",
                logging_strategy="no")


def _dataset(rows):
    from datasets import Dataset

    return Dataset.from_list(rows)


def test_reward_loss_equals_trl(trl, tmp_path):
    model = _gpt2(0, "GPT2ForSequenceClassification", num_labels=1)
    tok = D.tokenizer()
    model.config.pad_token_id = tok.pad_token_id
    trainer = trl.RewardTrainer(model=model, args=trl.RewardConfig(**_common(tmp_path)), processing_class=tok,
                                train_dataset=_dataset([{"chosen": "ab", "rejected": "cd"}] * 2))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(2, V - 5, (6, 9), generator=g)
    ids[1, 6:] = tok.pad_token_id
    ids[4, 3:] = tok.pad_token_id
    mask = (ids != tok.pad_token_id).long()
    trainer.model.eval()
    with torch.no_grad():
        hidden = trainer.model.transformer(ids, attention_mask=mask).last_hidden_state
        from solutions.ch10_alignment import last_token_reward

        r = last_token_reward(hidden, ids, trainer.model.score.weight, tok.pad_token_id)
        theirs = trainer.compute_loss(trainer.model, {"input_ids": ids, "attention_mask": mask})
    ours = E._bt_expected(r[:3], r[3:])
    assert torch.allclose(ours.float(), theirs, atol=1e-6), (ours, theirs)


def test_dpo_loss_equals_trl(trl, tmp_path):
    policy, reference = _gpt2(1), _gpt2(2)
    tok = D.tokenizer()
    args = trl.DPOConfig(**_common(tmp_path), beta=0.1, loss_type=["sigmoid"])
    trainer = trl.DPOTrainer(model=policy, ref_model=reference, args=args, processing_class=tok,
                             train_dataset=_dataset([{"prompt": "ab", "chosen": "c", "rejected": "d"}] * 2))
    g = torch.Generator().manual_seed(1)
    ids, cmask = E._dpo_batch_inputs(g, 3, 12, V - 5)
    attn = torch.ones_like(ids)
    last_pad = cmask[2].nonzero().max() + 1          # row 2 is padded after its completion
    attn[2, last_pad:] = 0
    trainer.model.eval()
    with torch.no_grad():
        theirs = trainer._compute_loss(trainer.model, {"input_ids": ids, "attention_mask": attn,
                                                       "completion_mask": cmask}, return_outputs=False)
        pi = E._slp_expected(policy(ids, attention_mask=attn).logits, ids, cmask)
        ref = E._slp_expected(reference(ids, attention_mask=attn).logits, ids, cmask)
    ours = E._dpo_expected(pi[:3], pi[3:], ref[:3], ref[3:], 0.1)
    assert torch.allclose(ours.float(), theirs.float(), atol=1e-5), (ours, theirs)


def _grpo_trainer(trl, tmp_path, loss_type="grpo", beta=0.04, kl_ratio=True, T=6):
    model = _gpt2(3)
    tok = D.tokenizer()
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)

    def reward(completions, r, **kwargs):
        return list(r)

    args = trl.GRPOConfig(**_common(tmp_path / "out"), beta=beta, loss_type=loss_type, use_bias_correction_kl=kl_ratio,
                          num_generations=4, per_device_train_batch_size=8, max_completion_length=T,
                          generation_batch_size=8, epsilon=0.2)
    return trl.GRPOTrainer(model=str(model_dir), reward_funcs=reward, args=args, processing_class=tok,
                           train_dataset=_dataset([{"prompt": "ab", "r": 0.0}] * 8))


def test_group_advantages_equal_trl(trl, tmp_path):
    trainer = _grpo_trainer(trl, tmp_path, beta=0.0)
    rewards = [1.0, 0.0, 0.25, 3.0, 0.5, 0.5, 0.5, 0.5]    # the second group all equal: advantages 0, not 0/0
    trainer.model.eval()
    out = trainer._generate_and_score_completions([{"prompt": "ab", "r": r} for r in rewards])
    ours = E._adv_expected(torch.tensor(rewards), 4)
    assert torch.allclose(ours.float(), out["advantages"].float(), atol=1e-5), (ours, out["advantages"])


@pytest.mark.parametrize("loss_type,kl_ratio", [("grpo", True), ("bnpo", True), ("dr_grpo", True), ("grpo", False)])
def test_grpo_loss_equals_trl(trl, tmp_path, loss_type, kl_ratio):
    T = 6
    trainer = _grpo_trainer(trl, tmp_path, loss_type=loss_type, beta=0.04, kl_ratio=kl_ratio, T=T)
    model = trainer.model.eval()
    g = torch.Generator().manual_seed(4)
    B, P = 8, 3
    prompt_ids = torch.randint(2, V - 5, (B, P), generator=g)
    completion_ids = torch.randint(2, V - 5, (B, T), generator=g)
    cmask = torch.ones(B, T, dtype=torch.long)
    for b, n in enumerate([6, 3, 5, 1, 6, 2, 4, 6]):
        cmask[b, n:] = 0
    with torch.no_grad():
        logits = model(torch.cat([prompt_ids, completion_ids], 1)).logits[:, P - 1:-1]
        logps = torch.log_softmax(logits.float(), -1).gather(-1, completion_ids[..., None]).squeeze(-1)
    old = logps + 0.4 * torch.randn(B, T, generator=g)            # ratios outside [0.8, 1.2]: clipping acts
    ref = logps + 0.5 * torch.randn(B, T, generator=g)
    rewards = torch.tensor([1.0, 0.0, 2.0, 1.0, 0.0, 0.0, 1.0, 2.0])
    inputs = {"prompt_ids": prompt_ids, "prompt_mask": torch.ones_like(prompt_ids), "completion_ids": completion_ids,
              "completion_mask": cmask, "advantages": E._adv_expected(rewards, 4).float(),
              "old_per_token_logps": old, "ref_per_token_logps": ref}
    with torch.no_grad():
        theirs = trainer._compute_loss(model, inputs)
    ours = E._grpo_expected(logps, old, ref, rewards, cmask, 4, 0.04, 0.2, loss_type, kl_ratio)
    assert torch.allclose(ours.float(), theirs.float(), atol=1e-5), (ours, theirs)
