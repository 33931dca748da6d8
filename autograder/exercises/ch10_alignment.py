"""Chapter 10 - Alignment.

References, all independent of the course's solutions:
- SFT labels: ``tokenizer.apply_chat_template(..., return_dict=True,
  return_assistant_tokens_mask=True)`` (transformers) on a character tokenizer whose chat
  template marks the assistant's text with ``{% generation %}``;
- the reward at the last non-pad token: ``GPT2ForSequenceClassification`` (a tiny one, its
  backbone's hidden states and its ``score`` weight handed to the learner);
- the Bradley-Terry loss, sequence log-probs, DPO, PPO and GRPO: formulas re-derived here in
  another form (binary cross-entropy with logits, ``F.cross_entropy`` with ``ignore_index``,
  per-sign clipping, Python statistics) and proved equal to trl 1.16 itself
  (``RewardTrainer.compute_loss``, ``DPOTrainer._compute_loss``, ``GRPOTrainer._compute_loss``
  and its advantages, ``bf16=False``) in ``tests/test_ch10_trl.py``: importing trl inside a
  check would cost seconds.
"""
from __future__ import annotations

import functools
import statistics

import torch
import torch.nn.functional as F

from ..core import Case, Exercise, Mistake, close_tensors, hidden_seed, inherit, register
from ..drivers.ch10_alignment import (OneThread, TinyLM, compare_dpo_batch, compare_loss_grad, compare_sft,
                                      dpo_batch_run, pg_run, sft_run)
from ..drivers.ch10_alignment import gen as _gen
from ..drivers.ch10_alignment import silence as _silence
from ..drivers.ch10_alignment import tokenizer as _tokenizer

CH = "ch10"
SOL = "solutions.ch10_alignment"


def _hgen(exercise: str, k: int) -> torch.Generator:
    return _gen(hidden_seed(f"ch10.{exercise}", k))


# ========================================================================================
# SFT: labels on the assistant's tokens only
# ========================================================================================


def _sft_expected(messages):
    out = _tokenizer().apply_chat_template(messages, tokenize=True, return_dict=True,
                                           return_assistant_tokens_mask=True)
    ids = torch.tensor(out["input_ids"], dtype=torch.long)
    mask = torch.tensor(out["assistant_masks"], dtype=torch.long)
    return ids, torch.where(mask == 1, ids, torch.full_like(ids, -100))


_LINES = ["Who goes there?", "Nay, answer me.", "Long live the king!", "Peace, break thee off.",
          "What, has this thing appear'd again tonight?", "I have seen nothing.", "Speak to it, Horatio.",
          "Tush, tush, 'twill not appear.", "Sit down awhile.", "Well, sit we down.", "Good now, sit down.",
          "Be thou a spirit of health or goblin damn'd?", "Give me your hands.", "Speak as a king."]


def _random_conversation(g):
    n = int(torch.randint(2, 7, (1,), generator=g))
    roles = ["system"] if bool(torch.randint(2, (1,), generator=g)) else []
    first = "user" if bool(torch.randint(3, (1,), generator=g)) else "assistant"
    other = {"user": "assistant", "assistant": "user"}
    while len(roles) < n:
        roles.append(first if len(roles) == 0 or roles[-1] == "system" else other[roles[-1]])
    return [{"role": r, "content": _LINES[int(torch.randint(len(_LINES), (1,), generator=g))]} for r in roles]


def _sft_cases(hidden: bool):
    specs = [
        ("system, user, assistant", [{"role": "system", "content": "Speak as a king."},
                                     {"role": "user", "content": "Who goes there?"},
                                     {"role": "assistant", "content": "Nay, answer me."}]),
        ("two exchanges (two assistant turns)", [{"role": "user", "content": "Who's there?"},
                                                 {"role": "assistant", "content": "Nay, answer me."},
                                                 {"role": "user", "content": "Long live the king!"},
                                                 {"role": "assistant", "content": "Bernardo?"}]),
        ("the assistant speaks first", [{"role": "assistant", "content": "Well, good night."},
                                        {"role": "user", "content": "Farewell."}]),
        ("a user turn only (nothing to learn)", [{"role": "user", "content": "Stand, ho!"}]),
        ("an empty assistant turn (only <|end|> is learned)", [{"role": "user", "content": "Say nothing."},
                                                               {"role": "assistant", "content": ""}]),
    ]
    if hidden:
        specs += [(f"hidden case {k + 1}: a random conversation", _random_conversation(_hgen("sft_tokenize", k)))
                  for k in range(3)]
    for name, messages in specs:
        yield Case(name, (messages,), run=sft_run, expected=lambda m=messages: _sft_expected(m), compare=compare_sft)


def _sft_mistake(kind):
    def fn(messages, tokenizer):
        ids, labels = [], []
        for m in messages:
            head = tokenizer.encode(f"<|{m['role']}|>\n", add_special_tokens=False)
            content = tokenizer.encode(m["content"], add_special_tokens=False)
            end = tokenizer.encode("<|end|>", add_special_tokens=False)
            tail = tokenizer.encode("\n", add_special_tokens=False)
            ids += head + content + end + tail
            a = m["role"] == "assistant"
            lab = {"all": head + content + end + tail,
                   "no-end": [-100] * len(head) + (content if a else [-100] * len(content)) + [-100] * (len(end) + len(tail)),
                   "with-header": (head + content + end if a else [-100] * len(head + content + end)) + [-100] * len(tail),
                   "shifted": [-100] * len(head) + (content + end if a else [-100] * len(content + end)) + [-100] * len(tail),
                   }[kind]
            labels += lab
        ids_t, lab_t = torch.tensor(ids), torch.tensor(labels)
        if kind == "shifted":  # the learner shifts the labels by one themselves
            lab_t = torch.cat([lab_t[1:], torch.tensor([-100])])
        return ids_t, lab_t
    return fn


register(Exercise(
    id="ch10.sft_tokenize", chapter=CH, title="SFT: labels on the assistant's tokens only", points=2,
    name="sft_tokenize",
    signature="sft_tokenize(messages: list[dict], tokenizer) -> (input_ids: Tensor[T], labels: Tensor[T])",
    reference="tokenizer.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True) with a "
              "template whose assistant turns are {% generation %} blocks; labels = input_ids where the mask is 1",
    solution=f"{SOL}:sft_tokenize", cases=_sft_cases, difficulty="**",
    forbidden=["transformers.tokenization_utils_base:PreTrainedTokenizerBase.apply_chat_template"],
    mistakes=[
        Mistake("prompt-in-loss", "every token is a label: the system and user turns and the role headers are in the "
                "loss too. Set the labels to -100 outside the assistant's content and its <|end|>",
                _sft_mistake("all")),
        Mistake("no-end", "the assistant's <|end|> token is masked: the model must learn to STOP, so the end token "
                "that closes its turn is a label too", _sft_mistake("no-end")),
        Mistake("header-in-loss", "the '<|assistant|>\\n' header is labelled: it is part of the prompt (the template "
                "writes it), only the content and <|end|> are generated", _sft_mistake("with-header")),
        Mistake("shifted-labels", "your labels are shifted by one token: Hugging Face models shift the labels "
                "themselves, so labels[t] must be input_ids[t] (or -100)", _sft_mistake("shifted")),
    ]))


# ========================================================================================
# The reward at the last non-pad token
# ========================================================================================
@functools.lru_cache(maxsize=None)
def _reward_model(seed, d):
    from transformers import GPT2Config, GPT2ForSequenceClassification

    _silence()
    cfg = GPT2Config(vocab_size=40, n_positions=32, n_embd=d, n_layer=2, n_head=2, num_labels=1, pad_token_id=0,
                     bos_token_id=1, eos_token_id=1, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     attn_implementation="eager")
    torch.manual_seed(seed)
    return GPT2ForSequenceClassification(cfg).eval()


def _reward_inputs(seed, B, T, d, padding, g=None):
    g = g or _gen(seed)
    ids = torch.randint(2, 40, (B, T), generator=g)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0] = T
    for b in range(B):
        n_pad = T - int(lengths[b])
        if padding == "right" and n_pad:
            ids[b, -n_pad:] = 0
        elif padding == "left" and n_pad:
            ids[b, :n_pad] = 0
    model = _reward_model(seed % 2, d)
    with torch.no_grad():
        hidden = model.transformer(ids, attention_mask=(ids != 0).long()).last_hidden_state
    return model, ids, hidden, model.score.weight.detach().clone()


@functools.lru_cache(maxsize=None)
def _reward_case(seed, B, T, d, padding, hidden_seed_value=None):
    # Keyed by the seed drawn from the secret, not by the case number: a cache must never hand
    # the inputs of one secret to a grading run under another.
    g = _gen(hidden_seed_value) if hidden_seed_value is not None else None
    model, ids, hidden, w = _reward_inputs(seed, B, T, d, padding, g)
    with torch.no_grad():
        expected = model(ids, attention_mask=(ids != 0).long()).logits[:, 0]
    return ids, hidden, w, expected


def _reward_cases(hidden: bool):
    specs = [("right padding, B=4, T=10, d=16", 0, 4, 10, 16, "right", None),
             ("left padding, B=4, T=10, d=16", 1, 4, 10, 16, "left", None),
             ("no padding at all, B=2, T=6, d=8", 2, 2, 6, 8, "none", None),
             ("a batch of one, right padding", 3, 1, 12, 16, "right", None)]
    if hidden:
        for k in range(2):
            g = _hgen("last_token_reward.shape", k)
            B, T = int(torch.randint(2, 9, (1,), generator=g)), int(torch.randint(4, 30, (1,), generator=g))
            side = ["right", "left"][k % 2]
            specs.append((f"hidden case {k + 1}: {side} padding", 10 + k, B, T, 16, side,
                          hidden_seed("ch10.last_token_reward", k)))
    for name, seed, B, T, d, padding, hk in specs:
        ids, h, w, _ = _reward_case(seed, B, T, d, padding, hk)
        yield Case(name, (h, ids, w, 0), expected=lambda s=seed, B=B, T=T, d=d, p=padding, hk=hk: _reward_case(
            s, B, T, d, p, hk)[3], compare=close_tensors(atol=1e-5, rtol=1e-4))


def _reward_mistake(kind):
    def fn(hidden, input_ids, score_weight, pad_token_id):
        mask = (input_ids != pad_token_id).long()
        if kind == "last-position":
            h = hidden[:, -1]
        elif kind == "length-minus-one":
            h = hidden[torch.arange(len(hidden)), mask.sum(1) - 1]
        elif kind == "first-token":
            h = hidden[:, 0]
        else:  # mean over the real tokens
            m = mask.unsqueeze(-1).to(hidden.dtype)
            h = (hidden * m).sum(1) / m.sum(1)
        return h @ score_weight[0]
    return fn


register(Exercise(
    id="ch10.last_token_reward", chapter=CH, title="The reward at the last real token", points=1,
    name="last_token_reward",
    signature="last_token_reward(hidden: Tensor[B, T, d], input_ids: Tensor[B, T], score_weight: Tensor[1, d], "
              "pad_token_id: int) -> Tensor[B]",
    reference="GPT2ForSequenceClassification(num_labels=1): its logits, given its own backbone's hidden states and "
              "score weight",
    solution=f"{SOL}:last_token_reward", cases=_reward_cases,
    mistakes=[
        Mistake("last-position", "you read the reward at position T - 1 for every row: with right padding that is a "
                "pad token. Use the rightmost position whose id is not the pad id", _reward_mistake("last-position")),
        Mistake("length-minus-one", "you took position (number of real tokens - 1): right for right padding only. "
                "With left padding the last real token is at T - 1: find the rightmost non-pad position",
                _reward_mistake("length-minus-one")),
        Mistake("first-token", "you read position 0: in a causal model it has seen only the first token. The last "
                "real token has read the whole sequence", _reward_mistake("first-token")),
        Mistake("mean-pooled", "you averaged the hidden states (an encoder's recipe); a causal reward model reads "
                "the last real token", _reward_mistake("mean")),
    ]))


# ========================================================================================
# Bradley-Terry loss
# ========================================================================================
def _bt_expected(rc, rr):
    # -log sigmoid(x) is the binary cross-entropy with logit x and label 1.
    x = (rc - rr).double()
    return F.binary_cross_entropy_with_logits(x, torch.ones_like(x))


def _bt_cases(hidden: bool):
    specs = [("N=8, rewards ~ N(0, 1)", 0, 8, 1.0), ("N=1", 1, 1, 1.0), ("N=16, rewards ~ N(0, 3)", 2, 16, 3.0),
             ("differences of several hundred (stability)", 3, 6, 300.0)]
    rows = []
    for name, seed, n, scale in specs:
        g = _gen(seed)
        rows.append((name, torch.randn(n, generator=g) * scale, torch.randn(n, generator=g) * scale))
    if hidden:
        for k in range(2):
            g = _hgen("bradley_terry_loss", k)
            n = int(torch.randint(2, 64, (1,), generator=g))
            rows.append((f"hidden case {k + 1}", torch.randn(n, generator=g) * 2, torch.randn(n, generator=g) * 2))
    for name, rc, rr in rows:
        yield Case(name, (rc, rr), expected=lambda a=rc, b=rr: _bt_expected(a, b),
                   compare=close_tensors(atol=1e-5, rtol=1e-5))


register(Exercise(
    id="ch10.bradley_terry_loss", chapter=CH, title="The Bradley-Terry loss of a reward model", points=1,
    name="bradley_terry_loss",
    signature="bradley_terry_loss(chosen_rewards: Tensor[N], rejected_rewards: Tensor[N]) -> Tensor[]",
    reference="binary_cross_entropy_with_logits(r_c - r_r, 1) (= trl RewardTrainer's -logsigmoid(r_c - r_r).mean(), "
              "proved equal in tests/test_ch10_trl.py)",
    solution=f"{SOL}:bradley_terry_loss", cases=_bt_cases,
    mistakes=[
        Mistake("swapped", "chosen and rejected are swapped: the loss must fall as r_chosen - r_rejected grows",
                lambda rc, rr: -F.logsigmoid(rr - rc).mean()),
        Mistake("log-of-sigmoid", "torch.log(torch.sigmoid(x)) underflows to log(0) = -inf for large negative x: use "
                "F.logsigmoid", lambda rc, rr: -torch.log(torch.sigmoid(rc - rr)).mean()),
        Mistake("sum", "you summed over the pairs: take the mean", lambda rc, rr: -F.logsigmoid(rc - rr).sum()),
        Mistake("no-log", "you minimised -sigmoid(r_c - r_r): the loss is the negative LOG-likelihood",
                lambda rc, rr: -torch.sigmoid(rc - rr).mean()),
    ]))


# ========================================================================================
# Sequence log-probabilities
# ========================================================================================
def _slp_expected(logits, ids, mask):
    labels = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)                      # token t scored by logits t - 1
    nll = F.cross_entropy(logits[:, :-1].double().transpose(1, 2), labels, ignore_index=-100, reduction="none")
    return -nll.sum(dim=1)


def _slp_inputs(g, B, T, V, scale=1.0):
    logits = torch.randn(B, T, V, generator=g) * scale
    ids = torch.randint(V, (B, T), generator=g)
    mask = torch.zeros(B, T, dtype=torch.long)
    for b in range(B):
        p = int(torch.randint(1, T - 1, (1,), generator=g))            # prompt length
        end = int(torch.randint(p + 1, T + 1, (1,), generator=g))     # completion ends, padding after
        mask[b, p:end] = 1
    return logits, ids, mask


def _slp_cases(hidden: bool):
    specs = [("B=3, T=8, V=11", 0, 3, 8, 11, 1.0), ("a batch of one, T=4", 1, 1, 4, 7, 1.0),
             ("B=4, T=20, V=30, large logits (x 50)", 2, 4, 20, 30, 50.0)]
    rows = [(n, *_slp_inputs(_gen(s), B, T, V, sc)) for n, s, B, T, V, sc in specs]
    if hidden:
        for k in range(2):
            g = _hgen("sequence_logprobs", k)
            B, T = int(torch.randint(2, 8, (1,), generator=g)), int(torch.randint(5, 40, (1,), generator=g))
            rows.append((f"hidden case {k + 1}: random shapes and prompt lengths", *_slp_inputs(g, B, T, 23)))
    for name, logits, ids, mask in rows:
        yield Case(name, (logits, ids, mask), expected=lambda l=logits, i=ids, m=mask: _slp_expected(l, i, m),
                   compare=close_tensors(atol=1e-4, rtol=1e-5))


def _slp_mistake(kind):
    def fn(logits, ids, mask):
        logp = torch.log_softmax(logits.double(), -1)
        if kind == "no-shift":
            tok = logp.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
            return (tok * mask).sum(1)
        tok = logp[:, :-1].gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)   # (B, T-1)
        if kind == "prompt-included":
            return tok.sum(1)
        if kind == "mean":
            m = mask[:, 1:].double()
            return (tok * m).sum(1) / m.sum(1)
        return (tok * mask[:, :-1]).sum(1)         # mask off by one
    return fn


register(Exercise(
    id="ch10.sequence_logprobs", chapter=CH, title="Sequence log-probabilities of a completion", points=2,
    name="sequence_logprobs",
    signature="sequence_logprobs(logits: Tensor[B, T, V], input_ids: Tensor[B, T], completion_mask: Tensor[B, T]) "
              "-> Tensor[B]",
    reference="-F.cross_entropy(logits[:, :-1], labels = input_ids[:, 1:] with -100 outside the completion, "
              "reduction='none').sum(1) (= trl DPOTrainer's per-sequence log-probs, tests/test_ch10_trl.py)",
    solution=f"{SOL}:sequence_logprobs", cases=_slp_cases, difficulty="**",
    mistakes=[
        Mistake("no-shift", "log-probs not shifted: token t is predicted by the logits at position t - 1, you scored "
                "it with the logits at t (which already saw it)", _slp_mistake("no-shift")),
        Mistake("prompt-included", "prompt (and padding) tokens are in the sum: multiply by the completion mask so "
                "that only the completion's tokens count", _slp_mistake("prompt-included")),
        Mistake("mean", "you averaged over the completion's tokens: DPO uses the SUM, log pi(y|x) of the whole "
                "completion", _slp_mistake("mean")),
        Mistake("mask-off-by-one", "the mask is off by one: the score of token t (from logits t - 1) must be kept "
                "when completion_mask[t] is 1, i.e. use completion_mask[:, 1:]", _slp_mistake("mask")),
    ]))


# ========================================================================================
# DPO loss
# ========================================================================================
def _dpo_expected(pc, pr, rc, rr, beta):
    x = beta * ((pc.double() - rc.double()) - (pr.double() - rr.double()))
    return F.binary_cross_entropy_with_logits(x, torch.ones_like(x))


def _dpo_inputs(g, n, drift=3.0):
    base = -40 + 10 * torch.randn(n, generator=g)
    pc, pr = base + 5 * torch.randn(n, generator=g), base + 5 * torch.randn(n, generator=g)
    rc, rr = pc + drift * torch.randn(n, generator=g), pr + drift * torch.randn(n, generator=g)
    return pc, pr, rc, rr


def _dpo_cases(hidden: bool):
    rows = [("N=8, beta 0.1", *_dpo_inputs(_gen(0), 8), 0.1), ("N=1, beta 0.1", *_dpo_inputs(_gen(1), 1), 0.1),
            ("N=16, beta 0.5", *_dpo_inputs(_gen(2), 16), 0.5),
            ("policy far from the reference (margins of thousands)", *_dpo_inputs(_gen(3), 6, drift=3000.0), 0.1)]
    if hidden:
        for k in range(2):
            g = _hgen("dpo_loss", k)
            n = int(torch.randint(2, 40, (1,), generator=g))
            rows.append((f"hidden case {k + 1}", *_dpo_inputs(g, n), 0.1))
    for name, pc, pr, rc, rr, beta in rows:
        yield Case(name, (pc, pr, rc, rr), {"beta": beta},
                   expected=lambda a=pc, b=pr, c=rc, d=rr, beta=beta: _dpo_expected(a, b, c, d, beta),
                   compare=close_tensors(atol=1e-5, rtol=1e-5))


def _dpo_mistake(kind):
    def fn(pc, pr, rc, rr, beta=0.1):
        if kind == "swapped":
            return -F.logsigmoid(beta * ((pr - rr) - (pc - rc))).mean()
        if kind == "no-beta":
            return -F.logsigmoid((pc - rc) - (pr - rr)).mean()
        if kind == "ref-sign":
            return -F.logsigmoid(beta * ((pc + rc) - (pr + rr))).mean()
        if kind == "beta-outside":
            return -beta * F.logsigmoid((pc - rc) - (pr - rr)).mean()
        return -torch.log(torch.sigmoid(beta * ((pc - rc) - (pr - rr)))).mean()
    return fn


register(Exercise(
    id="ch10.dpo_loss", chapter=CH, title="The DPO loss", points=1, name="dpo_loss",
    signature="dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected: Tensor[N], beta=0.1) -> Tensor[]",
    reference="binary_cross_entropy_with_logits(beta * ((pi_c - ref_c) - (pi_r - ref_r)), 1) (= trl DPOTrainer's "
              "sigmoid loss, tests/test_ch10_trl.py)",
    solution=f"{SOL}:dpo_loss", cases=_dpo_cases,
    mistakes=[
        Mistake("swapped", "chosen and rejected are swapped: the loss must reward raising the CHOSEN completion's "
                "log-ratio over the rejected one's", _dpo_mistake("swapped")),
        Mistake("no-beta", "beta is missing: the implicit reward is beta * (log pi - log pi_ref)",
                _dpo_mistake("no-beta")),
        Mistake("ref-sign", "the reference enters with the wrong sign: the log-RATIO is log pi - log pi_ref",
                _dpo_mistake("ref-sign")),
        Mistake("beta-outside", "beta multiplies the loss instead of the margin inside the sigmoid: "
                "-logsigmoid(beta * margin), not -beta * logsigmoid(margin)", _dpo_mistake("beta-outside")),
        Mistake("log-of-sigmoid", "torch.log(torch.sigmoid(x)) underflows for large negative margins: use "
                "F.logsigmoid", _dpo_mistake("log-sigmoid")),
    ]))


# ========================================================================================
# DPO from the two models (composite)
# ========================================================================================


def _dpo_batch_inputs(g, N, T, V):
    ids = torch.randint(V, (2 * N, T), generator=g)
    mask = torch.zeros(2 * N, T, dtype=torch.long)
    for i in range(N):
        p = int(torch.randint(1, T - 2, (1,), generator=g))
        ids[N + i, :p] = ids[i, :p]                               # same prompt for chosen and rejected
        for row in (i, N + i):
            end = int(torch.randint(p + 1, T + 1, (1,), generator=g))
            mask[row, p:end] = 1
    return ids, mask


def _dpo_batch_expected(ids, mask, beta, V, seed):
    with OneThread():
        return _dpo_batch_expected_1(ids, mask, beta, V, seed)


def _dpo_batch_expected_1(ids, mask, beta, V, seed):
    policy, reference = TinyLM(V, 16, seed), TinyLM(V, 16, seed + 1)
    n = ids.shape[0] // 2

    def logps(model):
        return _slp_expected(model(ids), ids, mask)

    pi = logps(policy)
    with torch.no_grad():
        ref = logps(reference)
    loss = _dpo_expected(pi[:n], pi[n:], ref[:n], ref[n:], beta)
    loss.backward()
    return {"loss": loss.detach().float(), "ref_grad": False, "grad": policy.out.weight.grad.clone()}


def _dpo_batch_cases(hidden: bool):
    specs = [("N=3 pairs, T=10, V=13", 0, 3, 10, 13, 0.1), ("N=1 pair, T=6", 1, 1, 6, 9, 0.1),
             ("N=4 pairs, T=16, beta 0.5", 2, 4, 16, 17, 0.5)]
    rows = [(n, *_dpo_batch_inputs(_gen(s), N, T, V), b, V, s) for n, s, N, T, V, b in specs]
    if hidden:
        g = _hgen("dpo_batch_loss", 0)
        N, T = int(torch.randint(2, 6, (1,), generator=g)), int(torch.randint(6, 20, (1,), generator=g))
        rows.append(("hidden case 1", *_dpo_batch_inputs(g, N, T, 15), 0.1, 15, 7))
    for name, ids, mask, beta, V, seed in rows:
        yield Case(name, (ids, mask, beta, V, seed), run=dpo_batch_run,
                   expected=lambda i=ids, m=mask, b=beta, V=V, s=seed: _dpo_batch_expected(i, m, b, V, s),
                   compare=compare_dpo_batch)


def _dpo_batch_with(logps_fn=None, loss_fn=None, ref_grad=False, swap=False):
    logps_fn = logps_fn or (lambda l, i, m: _slp_expected(l, i, m).float())
    loss_fn = loss_fn or (lambda a, b, c, d, beta: _dpo_expected(a, b, c, d, beta).float())

    def fn(policy, reference, ids, mask, beta=0.1):
        n = ids.shape[0] // 2
        pi = logps_fn(policy(ids), ids, mask)
        if ref_grad:
            ref = logps_fn(reference(ids), ids, mask)
        else:
            with torch.no_grad():
                ref = logps_fn(reference(ids), ids, mask)
        if swap:
            return loss_fn(pi[n:], pi[:n], ref[n:], ref[:n], beta)
        return loss_fn(pi[:n], pi[n:], ref[:n], ref[n:], beta)
    return fn


register(Exercise(
    id="ch10.dpo_batch_loss", chapter=CH, title="DPO from the policy and the frozen reference", points=2,
    name="dpo_batch_loss",
    signature="dpo_batch_loss(policy, reference, input_ids: Tensor[2N, T], completion_mask: Tensor[2N, T], beta=0.1) "
              "-> Tensor[]",
    reference="the re-derived sequence log-probs and DPO loss (equal to trl DPOTrainer._compute_loss on a batch "
              "[chosen; rejected], tests/test_ch10_trl.py); the policy's gradient by autograd; no reference gradient",
    solution=f"{SOL}:dpo_batch_loss", cases=_dpo_batch_cases, difficulty="**",
    mistakes=[
        Mistake("reference-gradients", "the reference model received gradients: compute its log-probs under "
                "torch.no_grad() (it is frozen)", _dpo_batch_with(ref_grad=True)),
        Mistake("halves-swapped", "you read the first half of the batch as the rejected sequences: rows 0..N-1 are "
                "the chosen ones", _dpo_batch_with(swap=True)),
        *inherit("ch10.sequence_logprobs", lambda part: _dpo_batch_with(logps_fn=part)),
        *inherit("ch10.dpo_loss", lambda part: _dpo_batch_with(loss_fn=part)),
    ]))


# ========================================================================================
# REINFORCE with a baseline
# ========================================================================================


def _reinforce_expected(logps, rewards):
    r = [float(x) for x in rewards]
    base = statistics.fmean(r)
    B = len(r)
    loss = -sum((ri - base) * float(lp) for ri, lp in zip(r, logps)) / B
    return {"loss": torch.tensor(loss, dtype=torch.float64),
            "grad": torch.tensor([-(ri - base) / B for ri in r], dtype=torch.float64)}


def _reinforce_cases(hidden: bool):
    rows = []
    for name, seed, B in [("B=8", 0, 8), ("B=2", 1, 2), ("B=32, rewards in {0, 1}", 2, 32)]:
        g = _gen(seed)
        r = torch.randint(2, (B,), generator=g).float() if seed == 2 else torch.randn(B, generator=g) * 2 + 1
        rows.append((name, -30 + 5 * torch.randn(B, generator=g), r))
    if hidden:
        g = _hgen("reinforce_loss", 0)
        B = int(torch.randint(3, 40, (1,), generator=g))
        rows.append(("hidden case 1", -20 + 5 * torch.randn(B, generator=g), torch.randn(B, generator=g)))
    for name, lp, r in rows:
        yield Case(name, (lp, r), run=pg_run, expected=lambda lp=lp, r=r: _reinforce_expected(lp, r),
                   compare=compare_loss_grad)


register(Exercise(
    id="ch10.reinforce_loss", chapter=CH, title="REINFORCE with a baseline", points=1, name="reinforce_loss",
    signature="reinforce_loss(seq_logprobs: Tensor[B], rewards: Tensor[B]) -> Tensor[]",
    reference="the policy-gradient estimator written out in Python floats: loss -mean((r - mean r) * log pi) and its "
              "gradient -(r - mean r) / B",
    solution=f"{SOL}:reinforce_loss", cases=_reinforce_cases,
    mistakes=[
        Mistake("no-baseline", "there is no baseline: subtract the mean reward, A = r - mean(r), which keeps the "
                "gradient unbiased and lowers its variance", lambda lp, r: -(r * lp).mean()),
        Mistake("wrong-sign", "the sign is wrong: minimising your loss makes low-reward completions MORE likely. "
                "The loss is -mean(A * log pi)", lambda lp, r: ((r - r.mean()) * lp).mean()),
        Mistake("sum", "you summed over the batch: take the mean", lambda lp, r: -((r - r.mean()) * lp).sum()),
    ]))


# ========================================================================================
# PPO clipped objective
# ========================================================================================
def _ppo_reference_tokens(logps, old, adv, eps):
    """Per-token clipped surrogate written by the sign of A: for A >= 0 the ratio is capped at 1 + eps,
    for A < 0 it is floored at 1 - eps (the pessimistic bound of each case)."""
    ratio = torch.exp(logps.double() - old.double())
    A = adv.double().unsqueeze(1).expand_as(ratio)
    capped = torch.where(A >= 0, torch.minimum(ratio, torch.tensor(1 + eps, dtype=torch.float64)),
                         torch.maximum(ratio, torch.tensor(1 - eps, dtype=torch.float64)))
    return -capped * A


def _ppo_expected(logps, old, adv, mask, eps):
    per = _ppo_reference_tokens(logps, old, adv, eps)
    m = mask.double()
    return (per * m).sum() / m.sum()


def _pg_tokens(g, B, T, spread=0.5):
    old = -2 + torch.randn(B, T, generator=g)
    logps = old + spread * torch.randn(B, T, generator=g)            # ratios well outside [0.8, 1.2] too
    mask = torch.zeros(B, T, dtype=torch.long)
    for b in range(B):
        mask[b, :int(torch.randint(1, T + 1, (1,), generator=g))] = 1
    mask[0] = 1
    return logps, old, mask


def _ppo_cases(hidden: bool):
    rows = []
    for name, seed, B, T, eps in [("B=4, T=6, epsilon 0.2, advantages of both signs", 0, 4, 6, 0.2),
                                  ("B=1, T=3, epsilon 0.2, a negative advantage", 1, 1, 3, 0.2),
                                  ("B=6, T=10, epsilon 0.1", 2, 6, 10, 0.1)]:
        g = _gen(seed)
        logps, old, mask = _pg_tokens(g, B, T)
        adv = torch.randn(B, generator=g)
        if seed == 1:
            adv = -adv.abs()
        rows.append((name, logps, old, adv, mask, eps))
    if hidden:
        g = _hgen("ppo_clip_loss", 0)
        B, T = int(torch.randint(2, 9, (1,), generator=g)), int(torch.randint(2, 20, (1,), generator=g))
        logps, old, mask = _pg_tokens(g, B, T)
        rows.append(("hidden case 1", logps, old, torch.randn(B, generator=g), mask, 0.2))
    for name, logps, old, adv, mask, eps in rows:
        yield Case(name, (logps, old, adv, mask), {"epsilon": eps},
                   expected=lambda a=logps, b=old, c=adv, d=mask, e=eps: _ppo_expected(a, b, c, d, e),
                   compare=close_tensors(atol=1e-5, rtol=1e-4))


def _ppo_mistake(kind):
    def fn(logps, old, adv, mask, epsilon=0.2):
        ratio = torch.exp(old - logps) if kind == "inverted-ratio" else torch.exp(logps - old)
        A = adv.unsqueeze(1)
        clipped = ratio.clamp(1 - epsilon, 1 + epsilon)
        if kind == "min-of-ratios":
            per = -torch.min(ratio, clipped) * A
        elif kind == "no-clip":
            per = -ratio * A
        else:
            per = -torch.min(ratio * A, clipped * A)
        m = mask.float()
        if kind == "unmasked":
            return per.mean()
        return (per * m).sum() / m.sum()
    return fn


register(Exercise(
    id="ch10.ppo_clip_loss", chapter=CH, title="PPO's clipped objective", points=2, name="ppo_clip_loss",
    signature="ppo_clip_loss(logprobs, old_logprobs: Tensor[B, T], advantages: Tensor[B], mask: Tensor[B, T], "
              "epsilon=0.2) -> Tensor[]",
    reference="the clipped surrogate written per sign of the advantage (cap the ratio at 1 + eps when A >= 0, floor "
              "it at 1 - eps when A < 0), masked token mean (= trl's GRPO loss with loss_type='bnpo', beta=0)",
    solution=f"{SOL}:ppo_clip_loss", cases=_ppo_cases, difficulty="**",
    mistakes=[
        Mistake("min-of-ratios", "you took min(ratio, clip(ratio)) and then multiplied by A: for a negative "
                "advantage that picks the wrong bound. Take the min of the two PRODUCTS ratio*A and clip(ratio)*A",
                _ppo_mistake("min-of-ratios")),
        Mistake("no-clip", "the ratio is not clipped: the objective must stop rewarding moves beyond 1 +- epsilon",
                _ppo_mistake("no-clip")),
        Mistake("inverted-ratio", "the ratio is inverted: it is pi_new / pi_old = exp(logprobs - old_logprobs)",
                _ppo_mistake("inverted-ratio")),
        Mistake("unmasked", "padding tokens are averaged in: sum over the masked tokens, divide by their number",
                _ppo_mistake("unmasked")),
    ]))


# ========================================================================================
# GRPO: group-normalised advantages
# ========================================================================================
def _adv_expected(rewards, group_size):
    r = [float(x) for x in rewards]
    out = []
    for i in range(0, len(r), group_size):
        grp = r[i:i + group_size]
        mean, std = statistics.fmean(grp), statistics.stdev(grp)    # stdev: Bessel's correction (n - 1)
        out += [(x - mean) / (std + 1e-4) for x in grp]
    return torch.tensor(out, dtype=torch.float64)


def _adv_cases(hidden: bool):
    rows = [("2 prompts x 4 completions", torch.tensor([1.0, 0.0, 0.0, 1.0, 0.2, 0.5, 0.9, 0.1]), 4),
            ("3 prompts x 2 completions", torch.tensor([1.0, 3.0, -1.0, 2.0, 0.5, 0.0]), 2),
            ("a group whose rewards are all equal (advantage 0)", torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.5]), 3),
            ("rewards that differ by 1e-3 (the epsilon matters)",
             torch.tensor([0.001, 0.002, 0.0, 0.0015, 5.0, 5.002, 5.001, 5.0]), 4)]
    if hidden:
        g = _hgen("group_advantages", 0)
        G, n = int(torch.randint(2, 9, (1,), generator=g)), int(torch.randint(2, 6, (1,), generator=g))
        rows.append(("hidden case 1: random group size", torch.randn(n * G, generator=g) * 3, G))
    for name, r, G in rows:
        yield Case(name, (r, G), expected=lambda r=r, G=G: _adv_expected(r, G),
                   compare=close_tensors(atol=1e-4, rtol=1e-4))


def _adv_mistake(kind):
    def fn(rewards, group_size):
        g = rewards.view(-1, group_size)
        if kind == "batch":
            return (rewards - rewards.mean()) / (rewards.std() + 1e-4)
        mean = g.mean(1, keepdim=True)
        if kind == "biased-std":
            std = g.std(1, keepdim=True, unbiased=False)
            return ((g - mean) / (std + 1e-4)).view(-1)
        if kind == "no-eps":
            return ((g - mean) / g.std(1, keepdim=True)).view(-1)
        return (g - mean).view(-1)                       # centred only
    return fn


register(Exercise(
    id="ch10.group_advantages", chapter=CH, title="GRPO's group-normalised advantages", points=1,
    name="group_advantages",
    signature="group_advantages(rewards: Tensor[B], group_size: int) -> Tensor[B]",
    reference="Python statistics per group: (r - fmean) / (stdev + 1e-4), stdev with Bessel's correction, as trl's "
              "GRPOTrainer (proved equal in tests/test_ch10_trl.py)",
    solution=f"{SOL}:group_advantages", cases=_adv_cases,
    mistakes=[
        Mistake("batch-normalised", "you normalised over the whole batch: GRPO compares each completion with the "
                "OTHER completions of the same prompt, so mean and std are per group", _adv_mistake("batch")),
        Mistake("no-epsilon", "no epsilon in the denominator: divide by std + 1e-4, or a group of equal rewards "
                "gives 0/0 and tiny differences blow up", _adv_mistake("no-eps")),
        Mistake("biased-std", "your std divides by G; trl's (torch.std's default) divides by G - 1 (Bessel's "
                "correction)", _adv_mistake("biased-std")),
        Mistake("not-scaled", "you only subtracted the group mean: GRPO also divides by the group's std (+ 1e-4)",
                _adv_mistake("centred")),
    ]))


# ========================================================================================
# GRPO loss (composite: built on group_advantages)
# ========================================================================================
def _grpo_expected(logps, old, ref, rewards, mask, G, beta, eps, loss_type, kl_ratio):
    A = _adv_expected(rewards, G)
    pg = _ppo_reference_tokens(logps, old, A, eps)                        # (B, T) float64
    lp, rf = logps.double(), ref.double()
    kl = torch.exp(rf - lp) - (rf - lp) - 1
    if kl_ratio:
        kl = kl * torch.exp(lp - old.double())
    per = (pg + beta * kl) * mask.double()
    B, T = mask.shape
    if loss_type == "grpo":
        return torch.stack([per[b].sum() / mask[b].sum() for b in range(B)]).mean()
    if loss_type == "bnpo":
        return per.sum() / mask.sum()
    return per.sum() / (B * T)


def _grpo_inputs(g, n_prompts, G, T):
    B = n_prompts * G
    logps, old, mask = _pg_tokens(g, B, T, spread=0.4)
    ref = logps + 0.5 * torch.randn(B, T, generator=g)
    rewards = torch.randint(0, 3, (B,), generator=g).float()
    return logps, old, ref, rewards, mask


def _grpo_cases(hidden: bool):
    specs = [("loss_type grpo, beta 0.04, KL x ratio", 0, 2, 4, 6, 0.04, 0.2, "grpo", True),
             ("loss_type bnpo, beta 0.1", 1, 2, 3, 5, 0.1, 0.2, "bnpo", True),
             ("loss_type dr_grpo, beta 0.1", 2, 3, 2, 7, 0.1, 0.2, "dr_grpo", True),
             ("loss_type grpo, KL without the ratio correction", 3, 2, 4, 6, 0.5, 0.2, "grpo", False),
             ("beta 0 (no KL term), epsilon 0.1", 4, 2, 4, 5, 0.0, 0.1, "grpo", True)]
    rows = [(name, *_grpo_inputs(_gen(s), n, G, T), G, beta, eps, lt, kr)
            for name, s, n, G, T, beta, eps, lt, kr in specs]
    if hidden:
        for k, lt in enumerate(("grpo", "bnpo", "dr_grpo")):
            g = _hgen("grpo_loss", k)
            n, G, T = (int(torch.randint(lo, hi, (1,), generator=g)) for lo, hi in ((1, 4), (2, 6), (3, 12)))
            rows.append((f"hidden case {k + 1}: {lt}", *_grpo_inputs(g, n, G, T), G, 0.04,
                         0.2, lt, bool(k % 2 == 0)))
    for name, logps, old, ref, r, mask, G, beta, eps, lt, kr in rows:
        yield Case(name, (logps, old, ref, r, mask, G),
                   {"beta": beta, "epsilon": eps, "loss_type": lt, "kl_ratio": kr},
                   expected=lambda a=(logps, old, ref, r, mask, G, beta, eps, lt, kr): _grpo_expected(*a),
                   compare=close_tensors(atol=1e-5, rtol=1e-4))


def _grpo_with(adv_fn=None, kl="k3", ratio_kl=None, min_of_ratios=False, norm=None):
    def fn(logps, old, ref, rewards, mask, group_size, beta=0.04, epsilon=0.2, loss_type="grpo", kl_ratio=True):
        A = (adv_fn(rewards, group_size) if adv_fn else _adv_expected(rewards, group_size)).float().unsqueeze(1)
        ratio = torch.exp(logps - old)
        clipped = ratio.clamp(1 - epsilon, 1 + epsilon)
        pg = -torch.min(ratio, clipped) * A if min_of_ratios else -torch.min(ratio * A, clipped * A)
        d = ref - logps
        k = {"k3": torch.exp(d) - d - 1, "reversed": torch.exp(-d) + d - 1, "k1": -d}[kl]
        use_ratio = kl_ratio if ratio_kl is None else ratio_kl
        if use_ratio:
            k = k * ratio
        per = (pg + beta * k) * mask
        lt = norm or loss_type
        if lt == "grpo":
            return (per.sum(-1) / mask.sum(-1)).mean()
        if lt == "bnpo":
            return per.sum() / mask.sum()
        if lt == "dr_grpo-tokens":
            return per.sum() / mask.sum() if loss_type == "dr_grpo" else _grpo_with()(
                logps, old, ref, rewards, mask, group_size, beta, epsilon, loss_type, kl_ratio)
        return per.sum() / (mask.shape[0] * mask.shape[1])
    return fn


register(Exercise(
    id="ch10.grpo_loss", chapter=CH, title="The GRPO loss, as trl computes it", points=3, name="grpo_loss",
    signature="grpo_loss(logprobs, old_logprobs, ref_logprobs: Tensor[B, T], rewards: Tensor[B], mask: Tensor[B, T], "
              "group_size, beta=0.04, epsilon=0.2, loss_type='grpo', kl_ratio=True) -> Tensor[]",
    reference="the formula re-derived per sign of the advantage and per sequence (Python loops), equal to trl "
              "GRPOTrainer._compute_loss for loss_type grpo, bnpo and dr_grpo and use_bias_correction_kl on/off "
              "(tests/test_ch10_trl.py)",
    solution=f"{SOL}:grpo_loss", cases=_grpo_cases, difficulty="***",
    mistakes=[
        Mistake("kl-reversed", "the KL estimator has its log-ratio the wrong way round: k3 for KL(pi || pi_ref) is "
                "exp(ref - logp) - (ref - logp) - 1", _grpo_with(kl="reversed")),
        Mistake("kl-k1", "you used the plain log-ratio logp - ref as the KL term (the k1 estimator, which can be "
                "negative); GRPO uses k3 = exp(ref - logp) - (ref - logp) - 1", _grpo_with(kl="k1")),
        Mistake("kl-ratio-ignored", "the KL term is not multiplied by the ratio when kl_ratio=True (trl's "
                "use_bias_correction_kl, on by default)", _grpo_with(ratio_kl=False)),
        Mistake("kl-ratio-always", "the KL term is multiplied by the ratio even when kl_ratio=False",
                _grpo_with(ratio_kl=True)),
        Mistake("min-of-ratios", "min(ratio, clip(ratio)) * A picks the wrong bound for negative advantages: take "
                "the min of ratio*A and clip(ratio)*A", _grpo_with(min_of_ratios=True)),
        Mistake("always-bnpo", "every loss_type is normalised the same way (sum / number of tokens): 'grpo' averages "
                "each sequence's tokens first, then the sequences; 'dr_grpo' divides by B * T", _grpo_with(norm="bnpo")),
        Mistake("always-grpo", "every loss_type is normalised as 'grpo' (per-sequence means): 'bnpo' divides the "
                "batch's sum by its number of tokens, 'dr_grpo' by B * T", _grpo_with(norm="grpo")),
        Mistake("dr-grpo-by-tokens", "'dr_grpo' divides by B * T (a constant: no length bias), not by the number of "
                "completion tokens", _grpo_with(norm="dr_grpo-tokens")),
        *inherit("ch10.group_advantages", lambda part: _grpo_with(adv_fn=part)),
    ]))
