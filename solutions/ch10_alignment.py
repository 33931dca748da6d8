"""Chapter 10 - Alignment: supervised fine-tuning, reward models, DPO and policy
gradients.

Reference solutions. The docstrings of the exercise functions are the specification the
learner reads; their bodies are the reference solution. Provided helpers (the character
tokenizer with its chat template, the preference data built from Shakespeare, the DPO
loop, the conversion to a Hugging Face GPT-2 for trl) are given in full.
"""
from __future__ import annotations

import copy
import random
import re
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from solutions.ch01_next_token import shakespeare_works
from solutions.ch07_pretraining import load_pretrained_shakespeare
from solutions.ch08_objectives import torch_threads


# --------------------------------------------------------------------------------------
# Provided: a character tokenizer with a chat template
# --------------------------------------------------------------------------------------
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]

# Every turn is "<|role|>\n" + content + "<|end|>" + "\n". The {% generation %} block
# marks what the assistant says (its content and the <|end|> that stops it): the tokens
# to learn.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + '<|end|>' }}{% endgeneration %}"
    "{% else %}{{ message['content'] + '<|end|>' }}{% endif %}"
    "{{ '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def char_tokenizer(vocab: list[str], chat: bool = True):
    """A Hugging Face fast tokenizer over single characters (the chapter-7 vocabulary).

    A BPE model with no merges splits text into characters; ``chat=True`` adds the role
    tokens as special tokens (ids after the characters) and the chat template. The
    end-of-sequence and padding token is the newline, which the Shakespeare model knows.
    """
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(vocab)}, merges=[]))
    tok.decoder = decoders.Fuse()
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="\n", pad_token="\n")
    if chat:
        hf.add_special_tokens({"additional_special_tokens": ROLE_TOKENS})
        hf.chat_template = CHAT_TEMPLATE
    return hf


# --------------------------------------------------------------------------------------
# Exercise: supervised fine-tuning with the loss on the assistant's tokens only
# --------------------------------------------------------------------------------------
def sft_tokenize(messages: list[dict], tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and training labels of one conversation, in the format of
    ``CHAT_TEMPLATE``.

    ``messages`` is a list of ``{"role": "system" | "user" | "assistant", "content":
    str}``.
    Each turn is the text ``"<|role|>\\n" + content + "<|end|>" + "\\n"``, tokenized
    with ``tokenizer.encode(text, add_special_tokens=False)``. Returns
    ``(input_ids, labels)``, both int64 of shape (T,): ``labels[t] = input_ids[t]``
    where token t is part of an assistant's content or the ``<|end|>`` closing it, and
    -100 everywhere else (role headers, system and user turns, the newline after each
    turn). Labels are NOT shifted: the model shifts them.
    """
    ids, labels = [], []
    for m in messages:
        head = tokenizer.encode(f"<|{m['role']}|>\n", add_special_tokens=False)
        body = tokenizer.encode(m["content"] + "<|end|>", add_special_tokens=False)
        tail = tokenizer.encode("\n", add_special_tokens=False)
        ids += head + body + tail
        trained = body if m["role"] == "assistant" else [-100] * len(body)
        labels += [-100] * len(head) + trained + [-100] * len(tail)
    return torch.tensor(ids, dtype=torch.long), torch.tensor(labels, dtype=torch.long)


# --------------------------------------------------------------------------------------
# Exercises: a reward model
# --------------------------------------------------------------------------------------
def last_token_reward(
    hidden: torch.Tensor,
    input_ids: torch.Tensor,
    score_weight: torch.Tensor,
    pad_token_id: int,
) -> torch.Tensor:
    """The scalar reward of each sequence, read at its last token that is not padding.

    hidden: (B, T, d) final hidden states of a causal model; input_ids: (B, T) int64;
    score_weight: (1, d), the reward head (a linear layer without bias). Position t of a
    causal model has seen tokens 0..t, so only the LAST real token's state has read the
    whole sequence.
    That is the rightmost position whose id is not ``pad_token_id`` (padding may be on
    either side). Returns float (B,): ``hidden[b, last_b] @ score_weight[0]``.
    """
    T = input_ids.shape[1]
    positions = torch.arange(T).expand_as(input_ids)
    # (B,)
    last = (
        torch.where(input_ids != pad_token_id, positions, -1)
        .max(dim=1)
        .values.clamp(min=0)
    )
    # (B, d)
    h_last = hidden[torch.arange(hidden.shape[0]), last]
    return h_last @ score_weight[0]


def bradley_terry_loss(
    chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor
) -> torch.Tensor:
    """The reward model's loss on preference pairs: -log sigmoid(r_chosen - r_rejected),
    averaged.

    chosen_rewards, rejected_rewards: float (N,), pair i preferred chosen over rejected.
    Under the Bradley-Terry model P(chosen > rejected) = sigmoid(r_c - r_r); the loss is
    the mean negative log-likelihood, a scalar. Must stay finite for differences of
    +-1000.
    """
    return -F.logsigmoid(chosen_rewards - rejected_rewards).mean()


# --------------------------------------------------------------------------------------
# Exercises: sequence log-probabilities and DPO (Rafailov et al., 2023)
# --------------------------------------------------------------------------------------
def sequence_logprobs(
    logits: torch.Tensor, input_ids: torch.Tensor, completion_mask: torch.Tensor
) -> torch.Tensor:
    """log pi(completion | prompt) for each sequence: summed over the completion's
    tokens only.

    logits: (B, T, V) from a causal model fed ``input_ids`` (B, T); completion_mask: (B,
    T),
    1 where token t belongs to the completion, 0 for the prompt and the padding. Token t
    is
    predicted by the logits at position t - 1. Returns float (B,):
    ``sum over t >= 1 with completion_mask[b, t] == 1 of log softmax(logits[b,
    t-1])[input_ids[b, t]]``.
    """
    # (B, T-1, V)
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    # (B, T-1)
    token_logp = logp.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    return (token_logp * completion_mask[:, 1:]).sum(dim=1)


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float = 0.1,
) -> torch.Tensor:
    """The DPO loss (sigmoid form), averaged over pairs. All inputs: float (N,) sequence
    log-probs.

    The implicit reward of a completion is ``beta * (log pi(y|x) - log pi_ref(y|x))``;
    the loss is ``-log sigmoid(reward_chosen - reward_rejected)``, mean over the N pairs
    (a scalar).
    """
    chosen_rewards = beta * (policy_chosen - ref_chosen)
    rejected_rewards = beta * (policy_rejected - ref_rejected)
    return -F.logsigmoid(chosen_rewards - rejected_rewards).mean()


def dpo_batch_loss(
    policy: nn.Module,
    reference: nn.Module,
    input_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    beta: float = 0.1,
) -> torch.Tensor:
    """The DPO loss of one batch, from the two models: what a training step
    differentiates.

    input_ids, completion_mask: (2N, T); rows 0..N-1 are the chosen sequences, rows
    N..2N-1 the rejected ones (row i + N has the same prompt as row i).
    ``model(input_ids)`` returns logits (2N, T, V). Only the policy learns: the
    reference model must receive no gradient.
    Returns the scalar loss (``sequence_logprobs`` then ``dpo_loss``).
    """
    n = input_ids.shape[0] // 2
    policy_logps = sequence_logprobs(policy(input_ids), input_ids, completion_mask)
    with torch.no_grad():
        ref_logps = sequence_logprobs(reference(input_ids), input_ids, completion_mask)
    return dpo_loss(
        policy_logps[:n], policy_logps[n:], ref_logps[:n], ref_logps[n:], beta
    )


# --------------------------------------------------------------------------------------
# Exercises: the policy-gradient family
# --------------------------------------------------------------------------------------
def reinforce_loss(seq_logprobs: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
    """REINFORCE with the batch-mean baseline, as a loss to minimise.

    seq_logprobs: float (B,) log pi(y_b | x_b) of B sampled completions
    (differentiable); rewards: float (B,). Advantage ``A_b = r_b - mean(r)`` (a
    constant: no gradient flows through it). Returns the scalar
    ``-mean_b(A_b * seq_logprobs_b)``, whose gradient is the policy-gradient estimate
    with the sign flipped.
    """
    advantages = (rewards - rewards.mean()).detach()
    return -(advantages * seq_logprobs).mean()


def ppo_clip_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    epsilon: float = 0.2,
) -> torch.Tensor:
    """PPO's clipped surrogate objective, per token, as a loss to minimise.

    logprobs, old_logprobs: (B, T) log-probs of the sampled tokens under the current
    policy and under the policy that sampled them; advantages: (B,), one per sequence,
    shared by its tokens; mask: (B, T), 1 on completion tokens. With
    ``ratio = exp(logprobs - old_logprobs)``, per token
    ``-min(ratio * A, clamp(ratio, 1 - epsilon, 1 + epsilon) * A)``; returns the mean
    over the masked tokens of the whole batch (sum / number of completion tokens), a
    scalar.
    """
    ratio = torch.exp(logprobs - old_logprobs)
    A = advantages.unsqueeze(1)                                             # (B, 1)
    per_token = -torch.min(ratio * A, ratio.clamp(1 - epsilon, 1 + epsilon) * A)
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


def group_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """GRPO's advantages: each reward normalised within its group of completions of one
    prompt.

    rewards: float (B,), B = n_prompts * group_size, the completions of a prompt
    consecutive. ``A = (r - mean_group) / (std_group + 1e-4)``, the std with Bessel's
    correction (divide by G - 1), as trl computes it. Returns float (B,). A group whose
    rewards are all equal gets 0.
    """
    g = rewards.view(-1, group_size)
    mean = g.mean(dim=1, keepdim=True)
    std = g.std(dim=1, keepdim=True)          # unbiased (G - 1)
    return ((g - mean) / (std + 1e-4)).view(-1)


def grpo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    rewards: torch.Tensor,
    mask: torch.Tensor,
    group_size: int,
    beta: float = 0.04,
    epsilon: float = 0.2,
    loss_type: str = "grpo",
    kl_ratio: bool = True,
) -> torch.Tensor:
    """The GRPO loss (Shao et al., 2024) as trl computes it.

    logprobs, old_logprobs, ref_logprobs: (B, T) per-token log-probs of the sampled
    completions under the current, the sampling and the reference policy; rewards: (B,);
    mask: (B, T), completions right-padded to T tokens. Per token:
    ``ratio = exp(logprobs - old_logprobs)``,
    ``A = group_advantages(rewards, group_size)``,
    ``pg = -min(ratio * A, clamp(ratio, 1 - epsilon, 1 + epsilon) * A)``,
    ``kl = exp(ref - logprobs) - (ref - logprobs) - 1`` (the k3 estimator), multiplied
    by ratio when ``kl_ratio``; ``loss_t = pg + beta * kl``. Then, with masked tokens
    only: ``"grpo"``: mean over sequences of each sequence's token mean; ``"bnpo"``: sum
    over the batch / number of completion tokens; ``"dr_grpo"``: sum over the batch / (B
    * T).
    """
    A = group_advantages(rewards, group_size).unsqueeze(1)                  # (B, 1)
    ratio = torch.exp(logprobs - old_logprobs)
    per_token = -torch.min(ratio * A, ratio.clamp(1 - epsilon, 1 + epsilon) * A)
    if beta != 0.0:
        d = ref_logprobs - logprobs
        kl = torch.exp(d) - d - 1
        if kl_ratio:
            kl = kl * ratio
        per_token = per_token + beta * kl
    per_token = per_token * mask
    if loss_type == "grpo":
        return (per_token.sum(-1) / mask.sum(-1).clamp(min=1)).mean()
    if loss_type == "bnpo":
        return per_token.sum() / mask.sum().clamp(min=1)
    if loss_type == "dr_grpo":
        return per_token.sum() / (mask.shape[0] * mask.shape[1])
    raise ValueError(f"unknown loss_type {loss_type!r}")


# --------------------------------------------------------------------------------------
# Provided: programmatic preferences from Shakespeare ("say thou, not you")
# --------------------------------------------------------------------------------------
THOU = {"you": "thou", "your": "thy", "yours": "thine", "yourself": "thyself",
        "You": "Thou", "Your": "Thy", "Yours": "Thine", "Yourself": "Thyself"}
YOU_RE = re.compile(r"\b(" + "|".join(sorted(THOU, key=len, reverse=True)) + r")\b")
TEST_PLAYS = ["hamlet", "macbeth", "othello", "twelfth_night"]


def to_thou(text: str) -> str:
    """Every second-person 'you' word replaced by its archaic form (a crude rule: 'you'
    -> 'thou'
    even where Shakespeare would say 'thee')."""
    return YOU_RE.sub(lambda m: THOU[m.group(1)], text)


def count_pronouns(texts: list[str]) -> tuple[int, int]:
    """(number of you-words, number of thou-words) in ``texts``."""
    thou_re = re.compile(
        r"\b(thou|thy|thine|thyself|thee|Thou|Thy|Thine|Thyself|Thee)\b"
    )
    return sum(len(YOU_RE.findall(t)) for t in texts), sum(
        len(thou_re.findall(t)) for t in texts
    )


def preference_pairs(
    n_train: int, n_test: int, prompt_chars: int = 48, max_line: int = 60, seed: int = 0
) -> dict:
    """Preference pairs from the complete works: the prompt is the ``prompt_chars``
    characters before
    a line that says 'you' (or your, yours, yourself); the REJECTED completion is that
    line as
    Shakespeare wrote it, the CHOSEN one is the same line with 'thou' (thy, thine,
    thyself).
    Lines longer than ``max_line`` are skipped. Test pairs come from the held-out
    ``TEST_PLAYS``.
    Returns ``{"train": [{"prompt", "chosen", "rejected"}, ...], "test": [...]}``.
    """
    rng = random.Random(seed)
    pools = {"train": [], "test": []}
    for name, text in shakespeare_works().items():
        split = "test" if name in TEST_PLAYS else "train"
        pos = 0
        for line in text.split("\n"):
            start, pos = pos, pos + len(line) + 1
            if (
                10 <= len(line) <= max_line
                and start >= prompt_chars
                and YOU_RE.search(line)
            ):
                prompt = text[start - prompt_chars:start]
                if "[" not in prompt + line:      # no stage directions
                    pools[split].append(
                        {"prompt": prompt, "chosen": to_thou(line), "rejected": line}
                    )
    return {
        "train": rng.sample(pools["train"], n_train),
        "test": rng.sample(pools["test"], n_test),
    }


def encode_pairs(
    pairs: list[dict], encode, eos_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (2N, T) and completion mask (2N, T): rows 0..N-1 chosen, N..2N-1
    rejected.

    Each row is prompt + completion + end token (a newline, as trl adds the tokenizer's
    EOS), right-padded with the end token; the mask is 1 on the completion and its end
    token.
    """
    rows = []
    for key in ("chosen", "rejected"):
        for p in pairs:
            prompt, completion = encode(p["prompt"]), encode(p[key]) + [eos_id]
            rows.append(
                (prompt + completion, [0] * len(prompt) + [1] * len(completion))
            )
    T = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), T), eos_id, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for i, (ids, m) in enumerate(rows):
        input_ids[i, :len(ids)] = torch.tensor(ids)
        mask[i, :len(m)] = torch.tensor(m)
    return input_ids, mask


# --------------------------------------------------------------------------------------
# Provided: the DPO training loop and its measurements
# --------------------------------------------------------------------------------------
@torch.no_grad()
def batched_logprobs(
    model: nn.Module,
    input_ids: torch.Tensor,
    mask: torch.Tensor,
    logprobs_fn,
    batch_size: int = 64,
) -> torch.Tensor:
    """``logprobs_fn(model(ids), ids, mask)`` over a large set of rows, in batches."""
    return torch.cat([
        logprobs_fn(
            model(input_ids[i : i + batch_size]),
            input_ids[i : i + batch_size],
            mask[i : i + batch_size],
        )
        for i in range(0, len(input_ids), batch_size)
    ])


@torch.no_grad()
def token_kl(
    policy: nn.Module,
    reference: nn.Module,
    input_ids: torch.Tensor,
    mask: torch.Tensor,
    batch_size: int = 64,
) -> float:
    """KL(policy || reference) of the next-token distributions, summed over the
    vocabulary (exact,
    no sampling) and averaged over the completion positions of ``input_ids`` (nats per
    token)."""
    total, count = 0.0, 0.0
    for i in range(0, len(input_ids), batch_size):
        ids, m = input_ids[i:i + batch_size], mask[i:i + batch_size, 1:].float()
        logp = torch.log_softmax(policy(ids)[:, :-1], -1)
        logq = torch.log_softmax(reference(ids)[:, :-1], -1)
        kl = (logp.exp() * (logp - logq)).sum(-1)                 # (B, T-1)
        total, count = total + float((kl * m).sum()), count + float(m.sum())
    return total / count


def dpo_train(
    policy: nn.Module,
    reference: nn.Module,
    train: tuple,
    test: tuple,
    steps: int,
    logprobs_fn,
    loss_fn,
    beta: float = 0.1,
    batch_pairs: int = 16,
    lr: float = 3e-4,
    eval_every: int = 10,
    seed: int = 0,
) -> dict:
    """DPO with AdamW on ``policy``; ``reference`` stays frozen (its log-probs computed
    once).

    ``train``/``test`` are ``(input_ids, completion_mask)`` from ``encode_pairs``;
    ``logprobs_fn``/``loss_fn`` are ``sequence_logprobs``/``dpo_loss``. Logs, on the
    held-out pairs: the mean reward margin beta*((pi_c - ref_c) - (pi_r - ref_r)), the
    preference accuracy (margin > 0), how often the policy itself gives the chosen
    completion the higher probability, and the per-token KL to the reference.
    """
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    reference.eval().requires_grad_(False)
    train_ids, train_mask = train
    test_ids, test_mask = test
    n_train, n_test = len(train_ids) // 2, len(test_ids) // 2
    ref_train = batched_logprobs(reference, train_ids, train_mask, logprobs_fn)
    ref_test = batched_logprobs(reference, test_ids, test_mask, logprobs_fn)
    opt = torch.optim.AdamW(
        [p for p in policy.parameters() if p.requires_grad], lr=lr, weight_decay=0.0
    )
    log = {
        "step": [],
        "loss": [],
        "eval_step": [],
        "margin": [],
        "accuracy": [],
        "policy_prefers": [],
        "kl": [],
    }

    def evaluate(step):
        policy.eval()
        pi = batched_logprobs(policy, test_ids, test_mask, logprobs_fn)
        margin = beta * (
            (pi[:n_test] - ref_test[:n_test]) - (pi[n_test:] - ref_test[n_test:])
        )
        log["eval_step"].append(step)
        log["margin"].append(float(margin.mean()))
        log["accuracy"].append(
            float((margin > 0).float().mean() + 0.5 * (margin == 0).float().mean())
        )
        log["policy_prefers"].append(float((pi[:n_test] > pi[n_test:]).float().mean()))
        log["kl"].append(
            token_kl(policy, reference, test_ids[n_test:], test_mask[n_test:])
        )
        policy.train()

    t0 = time.perf_counter()
    with torch_threads(1):      # a model this small runs faster on one thread
        evaluate(0)
        for step in tqdm(range(1, steps + 1), desc="DPO", leave=False):
            idx = torch.randint(n_train, (batch_pairs,), generator=g)
            rows = torch.cat([idx, idx + n_train])
            ids, m = train_ids[rows], train_mask[rows]
            # drop columns that are padding everywhere
            T = int(m.nonzero()[:, 1].max()) + 1
            logps = logprobs_fn(policy(ids[:, :T]), ids[:, :T], m[:, :T])
            loss = loss_fn(
                logps[:batch_pairs],
                logps[batch_pairs:],
                ref_train[idx],
                ref_train[idx + n_train],
                beta,
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
            log["step"].append(step)
            log["loss"].append(loss.item())
            if step % eval_every == 0 or step == steps:
                evaluate(step)
    policy.eval()
    log["seconds"] = time.perf_counter() - t0
    return log


def sample_completions(
    model: nn.Module,
    prompts: list[str],
    encode,
    decode,
    n_chars: int = 60,
    temperature: float = 0.8,
    seed: int = 0,
) -> list[str]:
    """One sampled continuation per prompt (seeded), cut at its first newline."""
    g = torch.Generator().manual_seed(seed)
    lengths = {len(p) for p in prompts}
    assert len(lengths) == 1, "prompts of one length, so they batch without padding"
    idx = torch.tensor([encode(p) for p in prompts])
    with torch_threads(1):
        out = model.generate(idx, n_chars, temperature=temperature, generator=g)
    return [decode(row[idx.shape[1]:].tolist()).split("\n")[0] for row in out]


# --------------------------------------------------------------------------------------
# Provided: the chapter-7 GPT as a Hugging Face GPT2LMHeadModel (for trl)
# --------------------------------------------------------------------------------------
def to_hf_gpt2(model: nn.Module):
    """A ``GPT2LMHeadModel`` computing the same logits as the chapter-7 GPT.

    GPT-2 stores its linear layers as ``Conv1D`` with weights (in, out): transpose. The
    chapter-7 model has no biases; GPT-2 has them everywhere: set them to zero.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    c = model.config
    cfg = GPT2Config(
        vocab_size=c.vocab_size,
        n_positions=c.block_size,
        n_embd=c.n_embd,
        n_layer=c.n_layer,
        n_head=c.n_head,
        activation_function="gelu_new",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        layer_norm_epsilon=1e-5,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=None,
        tie_word_embeddings=True,
    )
    hf = GPT2LMHeadModel(cfg)
    sd = model.state_dict()
    new = {
        "transformer.wte.weight": sd["wte.weight"],
        "transformer.wpe.weight": sd["wpe.weight"],
        "transformer.ln_f.weight": sd["ln_f.weight"],
        "transformer.ln_f.bias": torch.zeros(c.n_embd),
    }
    for i in range(c.n_layer):
        p, q = f"blocks.{i}.", f"transformer.h.{i}."
        for ln in ("ln_1", "ln_2"):
            new[q + ln + ".weight"], new[q + ln + ".bias"] = sd[
                p + ln + ".weight"
            ], torch.zeros(c.n_embd)
        for src, dst in (
            ("attn.qkv", "attn.c_attn"),
            ("attn.proj", "attn.c_proj"),
            ("mlp.fc", "mlp.c_fc"),
            ("mlp.proj", "mlp.c_proj"),
        ):
            w = sd[p + src + ".weight"]
            new[q + dst + ".weight"], new[q + dst + ".bias"] = (
                w.T.contiguous(),
                torch.zeros(w.shape[0]),
            )
    hf.load_state_dict(new, strict=False)   # lm_head.weight is tied to wte
    hf.tie_weights()
    return hf.eval()
