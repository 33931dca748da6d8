"""Chapter 17 - Test-time compute and self-improvement.

Reference solutions. The docstrings of the exercise functions are the specification the
learner reads; their bodies are the reference solution. The rest is PROVIDED: the
addition task and its character vocabulary, the training loop, the samplers (plain and
with a calculator), and the three loops that improve a model with its own outputs (GRPO
on a verifiable reward, test-time training on majority votes, a SEAL-style loop).
The model is the compact GPT of chapter 7, two layers and 64 wide.
"""
from __future__ import annotations

import copy
import math
import time

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from solutions.ch07_pretraining import GPT, GPTConfig
from solutions.ch08_objectives import torch_threads
from solutions.ch10_alignment import grpo_loss

# ----------------------------------------------------------------------------------------
# Provided: the task, multi-digit arithmetic written character by character
# ----------------------------------------------------------------------------------------
DIGITS = 3                                   # operands 000..999, answers on 4 digits
VOCAB = list("0123456789+-=,;[]\n")          # the end of line "\n" ends every answer
STOI = {c: i for i, c in enumerate(VOCAB)}
EOS_ID = STOI["\n"]
MAX_NEW = 4 * DIGITS + 2                     # a scratchpad completion: 14 characters


def encode(text: str) -> list[int]:
    return [STOI[c] for c in text]


def decode(ids) -> str:
    return "".join(VOCAB[int(i)] for i in ids)


def make_prompt(a: int, b: int, op: str = "+") -> str:
    """``"357+486="``: both operands zero-padded to DIGITS digits (every prompt has the
    same length, 2 * DIGITS + 2 characters)."""
    return f"{a:0{DIGITS}d}{op}{b:0{DIGITS}d}="


def true_result(a: int, b: int, op: str = "+") -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def held_out(a: int, b: int) -> bool:
    """One problem in ten is kept for testing: the training data never contains it. (A
    multiplicative hash, Knuth's, read in its high bits: which problems are held out
    must not depend on their digits in any simple way.)"""
    h = (a * 10 ** DIGITS + b) * 2654435761 % 2 ** 32
    return h * 10 >> 32 == 0


def draw_problems(n: int, generator: torch.Generator, op: str = "+",
                  split: str = "train") -> list[tuple[int, int]]:
    """``n`` random problems (a, b) of the split; for "-" the larger one comes first."""
    out = []
    while len(out) < n:
        a, b = torch.randint(10 ** DIGITS, (2,), generator=generator).tolist()
        if op == "-" and a < b:
            a, b = b, a
        if held_out(a, b) == (split == "test"):
            out.append((a, b))
    return out


# ----------------------------------------------------------------------------------------
# Exercise: the scratchpad (a chain of thought for addition)
# ----------------------------------------------------------------------------------------
def scratchpad(a: int, b: int, digits: int = DIGITS) -> str:
    """The completion that works a + b out column by column before answering.

    a, b: integers in [0, 10**digits). Column i (i = 0 is the units) adds the i-th
    digits and the carry coming in: ``s_i = a_i + b_i + c_i`` with ``c_0 = 0`` and
    ``c_{i+1} = s_i // 10``. Each column is written as two digits, ``f"{s_i:02d}"``
    (its tens digit is the carry out), the columns from the units up, separated by
    ",". Then ";", the sum on ``digits + 1`` digits (zero-padded) and the end of line
    "\\n".
    Example: ``scratchpad(357, 486) == "13,14,08;0843\\n"``.
    """
    columns, carry = [], 0
    for i in range(digits):
        s = (a // 10 ** i) % 10 + (b // 10 ** i) % 10 + carry
        columns.append(f"{s:02d}")
        carry = s // 10
    return ",".join(columns) + f";{a + b:0{digits + 1}d}\n"


# ----------------------------------------------------------------------------------------
# Exercises: reading the answer, and the verifiable reward
# ----------------------------------------------------------------------------------------
def parse_answer(completion: str) -> int | None:
    """The final answer a completion gives, or None when it gives none.

    The completion ends at its first end of line "\\n" (anything after it is ignored;
    a text without "\\n" is read whole). The answer is what follows the LAST ";" of
    that line, or the whole line when it has no ";". It counts only if it is one or
    more of the characters 0-9 and nothing else (no sign, space or underscore): then
    return it as an int (``"0843"`` -> 843); otherwise return None.
    """
    line = completion.split("\n", 1)[0]
    answer = line.rsplit(";", 1)[-1]
    if answer and all(c in "0123456789" for c in answer):
        return int(answer)
    return None


def verifiable_reward(prompt: str, completion: str) -> float:
    """1.0 when the completion's final answer (``parse_answer``) is the right result of
    the prompt, else 0.0.

    prompt: ``"357+486="`` or ``"503-127="`` (two non-negative integers in digits, the
    operator "+" or "-", then "="). An answer that cannot be read earns 0.0: there is no
    partial credit.
    """
    op = "+" if "+" in prompt else "-"
    left, right = prompt.rstrip("=").split(op)
    value = int(left) + int(right) if op == "+" else int(left) - int(right)
    return 1.0 if parse_answer(completion) == value else 0.0


# ----------------------------------------------------------------------------------------
# Exercise: the calculator, the runtime's side of a tool call
# ----------------------------------------------------------------------------------------
def calculator(text: str) -> str | None:
    """Answer the tool call that ``text`` ends with, or return None.

    The model asks for a calculation by writing ``[x op y]``: x and y non-negative
    integers in digits (leading zeros allowed, e.g. ``[007+010]``), op one of + - *.
    When ``text`` ends with such a request (its last "[" opens it and "]" is its last
    character), return the result as a decimal string: ``str(value)``, e.g. "843" or
    "-12". Otherwise return None: the text does not end with "]", or there is no "[", or
    what lies between is not exactly number, operator, number. Never evaluate anything
    else: the text comes from a model.
    """
    if not text.endswith("]") or "[" not in text:
        return None
    body = text[text.rindex("[") + 1:-1]
    for op in "+-*":
        left, sep, right = body.partition(op)
        digits = left + right
        if sep and left and right and digits.isascii() and digits.isdigit():
            x, y = int(left), int(right)
            return str(x + y if op == "+" else x - y if op == "-" else x * y)
    return None


# ----------------------------------------------------------------------------------------
# Exercises: using many samples
# ----------------------------------------------------------------------------------------
def majority_vote(answers: list) -> int | None:
    """Self-consistency: the answer given most often among the samples of one problem.

    answers: a list of ints, with None for samples whose answer could not be read.
    None is not an answer and never wins. Ties go to the answer that appears FIRST in
    the list. Returns None when no sample has an answer (an empty list too).
    """
    counts, first = {}, {}
    for i, x in enumerate(answers):
        if x is not None:
            counts[x] = counts.get(x, 0) + 1
            first.setdefault(x, i)
    if not counts:
        return None
    return max(counts, key=lambda x: (counts[x], -first[x]))


def best_of_n(scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Best-of-N: for each problem, the index of the candidate scored highest.

    scores: float (B, N), one score per candidate (a verifier's, or the model's own
    log-probability); valid: bool (B, N), False for a candidate whose answer cannot be
    read: it is never chosen. Ties go to the lowest index. Returns int64 (B,); a row
    with no valid candidate gets -1.
    """
    masked = scores.masked_fill(~valid, float("-inf"))
    best = masked.argmax(dim=1)                      # the first maximum on ties
    return torch.where(valid.any(dim=1), best, torch.full_like(best, -1))


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased estimate of pass@k from n samples of which c are correct (Chen et
    al., 2021): the probability that k samples drawn WITHOUT replacement from the n
    contain at least one correct one, ``1 - C(n - c, k) / C(n, k)`` (1.0 when
    n - c < k).

    0 <= c <= n, 1 <= k <= n. Returns a float; it must stay finite for n in the
    thousands, where C(n, k) no longer fits in a float: use the product form
    ``C(n - c, k) / C(n, k) = prod_{i = n - c + 1}^{n} (1 - k / i)``.
    """
    if n - c < k:
        return 1.0
    ratio = 1.0
    for i in range(n - c + 1, n + 1):
        ratio *= 1.0 - k / i
    return 1.0 - ratio


# ----------------------------------------------------------------------------------------
# Exercise: which tokens a sampled completion is made of
# ----------------------------------------------------------------------------------------
def completion_mask(ids: torch.Tensor, prompt_len: int, eos_id: int) -> torch.Tensor:
    """1.0 on the tokens the model generated, up to and including its first end token.

    ids: int64 (B, T), each row a prompt of ``prompt_len`` tokens followed by
    T - prompt_len sampled tokens (the sampler runs on after a row has ended). Position
    t gets 1.0 when t >= prompt_len and no ``eos_id`` was sampled at positions
    prompt_len..t-1; else 0.0 (the prompt, and everything after the first end token).
    A row that never ends is 1.0 to the last position. Returns float32 (B, T).
    """
    generated = torch.zeros_like(ids, dtype=torch.bool)
    generated[:, prompt_len:] = True
    is_end = (ids == eos_id) & generated
    ended_before = (is_end.long().cumsum(dim=1) - is_end.long()) > 0
    return (generated & ~ended_before).float()


# ----------------------------------------------------------------------------------------
# Exercise: replay, the remedy for forgetting
# ----------------------------------------------------------------------------------------
def replay_mix(new: torch.Tensor, old: torch.Tensor, replay_fraction: float,
               generator: torch.Generator) -> torch.Tensor:
    """Training rows for the next round: all the new rows plus replayed old ones.

    new: (N, T) rows of the task being learned; old: (M, T) rows kept from earlier
    training; 0 <= replay_fraction < 1. Add R = round(N * f / (1 - f)) old rows, so that
    they make up the fraction f of the result, drawn uniformly at random WITHOUT
    replacement (M >= R) with ``torch.randperm(M, generator=generator)``. Returns
    (N + R, T): every new row once and the R old rows, in any order.
    """
    R = round(len(new) * replay_fraction / (1 - replay_fraction))
    chosen = torch.randperm(len(old), generator=generator)[:R]
    return torch.cat([new, old[chosen]])


def subtraction_scratchpad(a: int, b: int, digits: int = DIGITS) -> str:
    """The same for a - b (a >= b): column i computes ``a_i - b_i - borrow_i`` and
    writes the borrow it needs from the next column, then the digit: ``f"{borrow}{d}"``.
    Example: ``subtraction_scratchpad(503, 127) == "16,17,03;0376\n"``."""
    columns, borrow = [], 0
    for i in range(digits):
        d = (a // 10 ** i) % 10 - (b // 10 ** i) % 10 - borrow
        borrow = int(d < 0)
        columns.append(f"{borrow}{d % 10}")
    return ",".join(columns) + f";{a - b:0{digits + 1}d}\n"


# ----------------------------------------------------------------------------------------
# Provided: training examples in three formats
# ----------------------------------------------------------------------------------------
def example(a: int, b: int, fmt: str, op: str = "+", scratchpad=None,
            calculator=None) -> list[tuple[str, bool]]:
    """One training sequence as segments ``(text, learned)``: the prompt is never
    learned; in the "tool" format neither is the calculator's output (the runtime
    writes it).

    "direct":     357+486=0843
    "scratchpad": 357+486=13,14,08;0843
    "tool":       357+486=[357+486]843;0843    (843 written by the calculator)
    """
    p, answer = make_prompt(a, b, op), f"{true_result(a, b, op):0{DIGITS + 1}d}\n"
    if fmt == "direct":
        return [(p, False), (answer, True)]
    if fmt == "scratchpad":
        steps = scratchpad(a, b) if op == "+" else subtraction_scratchpad(a, b)
        return [(p, False), (steps, True)]
    call = f"[{a:0{DIGITS}d}{op}{b:0{DIGITS}d}]"
    return [(p, False), (call, True), (calculator(call), False), (";" + answer, True)]


def to_batch(examples: list[list[tuple[str, bool]]]):
    """Token ids (B, T) right-padded with the end token, and targets (B, T): the next
    token where it is learned, -100 elsewhere."""
    rows = [(encode("".join(t for t, _ in ex)), [m for t, m in ex for _ in t])
            for ex in examples]
    T = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), T), EOS_ID, dtype=torch.long)
    targets = torch.full((len(rows), T), -100, dtype=torch.long)
    for r, (row, learned) in enumerate(rows):
        ids[r, :len(row)] = torch.tensor(row)
        for t in range(len(row) - 1):
            if learned[t + 1]:
                targets[r, t] = row[t + 1]
    return ids, targets


def tiny_gpt(seed: int = 0) -> GPT:
    """The chapter's model: the chapter-7 GPT, 2 layers, 4 heads, 64 wide (101,824
    weights), reading up to 32 characters."""
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=len(VOCAB), block_size=32, n_layer=2, n_head=4,
                         n_embd=64))


def train_steps(model: GPT, batches, steps: int, lr: float = 3e-3, warmup: int = 30,
                eval_fn=None, eval_every: int = 0, desc: str = "training",
                progress: bool = True) -> dict:
    """AdamW with warm-up and cosine decay on ``batches(step) -> (ids, targets)``.

    Every ``eval_every`` steps (and at the end) ``eval_fn(model)`` is recorded. Returns
    ``{"step", "loss", "eval_step", "eval", "seconds"}`` (seconds of training only)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98),
                            weight_decay=0.0)
    log = {"step": [], "loss": [], "eval_step": [], "eval": [], "seconds": 0.0}
    model.train()
    t0 = time.perf_counter()
    with torch_threads(1):           # a model this small runs faster on one thread
        bar = tqdm(range(1, steps + 1), desc=desc, leave=False, disable=not progress)
        for step in bar:
            cosine = 0.55 + 0.45 * math.cos(math.pi * step / steps)   # down to 0.1 x lr
            for group in opt.param_groups:
                group["lr"] = lr * min(1.0, step / warmup) * cosine
            ids, targets = batches(step)
            logits = model(ids)
            loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(),
                                   ignore_index=-100)   # -100: not learned
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            log["step"].append(step)
            log["loss"].append(loss.item())
            if eval_fn and eval_every and (step % eval_every == 0 or step == steps):
                log["seconds"] += time.perf_counter() - t0
                log["eval_step"].append(step)
                log["eval"].append(eval_fn(model))
                model.train()
                t0 = time.perf_counter()
    log["seconds"] += time.perf_counter() - t0
    model.eval()
    return log


def task_batches(fmt: str, batch_size: int = 64, ops: str = "+", seed: int = 0,
                 **parts):
    """``batches(step)`` for ``train_steps``: fresh training problems of the operators
    in ``ops`` (mixed in equal shares), in format ``fmt``."""
    g = torch.Generator().manual_seed(seed)

    def batches(step):
        examples = []
        for i in range(batch_size):
            op = ops[i % len(ops)]
            (a, b), = draw_problems(1, g, op)
            examples.append(example(a, b, fmt, op, **parts))
        return to_batch(examples)
    return batches


# ----------------------------------------------------------------------------------------
# Provided: sampling, scoring, measuring
# ----------------------------------------------------------------------------------------
@torch.no_grad()
def generate(model: GPT, prompts: list[str], max_new: int, temperature: float = 0.0,
             generator: torch.Generator | None = None, chunk: int = 4096):
    """Sample ``max_new`` tokens after each prompt (all prompts of one length); greedy
    when ``temperature`` is 0. Rows keep going after their end token.
    Returns ids (B, P + max_new)."""
    model.eval()
    out = []
    with torch_threads(1):
        for s in range(0, len(prompts), chunk):
            idx = torch.tensor([encode(p) for p in prompts[s:s + chunk]])
            for _ in range(max_new):
                logits = model(idx)[:, -1].float()
                if temperature == 0:
                    nxt = logits.argmax(-1, keepdim=True)
                else:
                    probs = torch.softmax(logits / temperature, dim=-1)
                    nxt = torch.multinomial(probs, 1, generator=generator)
                idx = torch.cat([idx, nxt], dim=1)
            out.append(idx)
    return torch.cat(out)


def completions(ids: torch.Tensor, prompt_len: int) -> list[str]:
    """The generated text of each row, cut after its first end of line."""
    texts = []
    for row in ids[:, prompt_len:].tolist():
        text = decode(row)
        texts.append(text[:text.index("\n") + 1] if "\n" in text else text)
    return texts


def token_logprobs(model: GPT, ids: torch.Tensor) -> torch.Tensor:
    """log p(token t | tokens < t) for t = 1..T-1: float (B, T - 1), with gradients."""
    logp = torch.log_softmax(model(ids).float(), dim=-1)
    return logp[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)


@torch.no_grad()
def sequence_scores(model: GPT, ids: torch.Tensor, mask: torch.Tensor,
                    chunk: int = 4096) -> torch.Tensor:
    """The model's log-probability of each completion: float (B,), summed over the
    tokens that ``mask`` (B, T) marks."""
    scores = []
    with torch_threads(1):
        for s in range(0, len(ids), chunk):
            logp = token_logprobs(model, ids[s:s + chunk])       # token t at t - 1
            scores.append((logp * mask[s:s + chunk, 1:]).sum(1))
    return torch.cat(scores)


def accuracy(model: GPT, problems: list[tuple[int, int]], max_new: int, reward,
             op: str = "+") -> float:
    """Greedy accuracy on ``problems``: the mean verifiable reward."""
    prompts = [make_prompt(a, b, op) for a, b in problems]
    texts = completions(generate(model, prompts, max_new), len(prompts[0]))
    return sum(reward(p, t) for p, t in zip(prompts, texts)) / len(prompts)


@torch.no_grad()
def generate_with_tools(model: GPT, prompt: str, calculator, max_new: int = 24) -> str:
    """Greedy decoding in which the runtime answers tool calls: after every token, when
    the text ends with a request ``calculator`` can answer, the result is appended to
    the text as if the model had written it, and decoding goes on. Returns the
    completion."""
    model.eval()
    text = prompt
    with torch_threads(1):
        for _ in range(max_new):
            nxt = VOCAB[int(model(torch.tensor([encode(text[-32:])]))[0, -1].argmax())]
            text += nxt
            if nxt == "\n":
                break
            result = calculator(text)
            if result is not None:
                text += result
    return text[len(prompt):]


@torch.no_grad()
def sample_answers(model: GPT, prompts: list[str], n: int, max_new: int, parse, mask_fn,
                   temperature: float = 1.0, seed: int = 0) -> dict:
    """``n`` samples per prompt: their answers (``parse`` of each completion), as a
    list of B lists of n, the model's log-probability of each sample, float (B, n), and
    the mean number of generated tokens per sample."""
    g = torch.Generator().manual_seed(seed)
    P = len(prompts[0])
    ids = generate(model, [p for p in prompts for _ in range(n)], max_new, temperature,
                   g)
    texts = completions(ids, P)
    scores = sequence_scores(model, ids, mask_fn(ids, P, EOS_ID)).view(len(prompts), n)
    answers = [parse(t) for t in texts]
    return {"answers": [answers[i * n:(i + 1) * n] for i in range(len(prompts))],
            "scores": scores, "tokens": float(mask_fn(ids, P, EOS_ID).sum()) / len(ids)}


# ----------------------------------------------------------------------------------------
# Provided: reinforcement learning with a verifiable reward (GRPO, chapter 10)
# ----------------------------------------------------------------------------------------
def grpo_train(model: GPT, steps: int, reward, mask_fn, loss_fn=grpo_loss,
               group_size: int = 8, prompts_per_step: int = 16, max_new: int = MAX_NEW,
               lr: float = 1e-4, temperature: float = 1.0, warmup: int = 10,
               eval_fn=None, eval_every: int = 10, seed: int = 0,
               desc: str = "GRPO") -> dict:
    """GRPO on addition: sample ``group_size`` completions of each prompt, reward each
    with ``reward(prompt, completion)``, and take one gradient step of ``loss_fn`` (one
    step per batch, so the ratio is 1 and no clipping acts; no KL term: trl's defaults).
    Logs the mean reward, the mean entropy of the next-token distribution on the
    generated tokens, their number and ``eval_fn(model)`` every ``eval_every`` steps."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98),
                            weight_decay=0.0)
    log = {"step": [], "reward": [], "entropy": [], "length": [], "eval_step": [],
           "eval": []}
    t0 = time.perf_counter()
    if eval_fn is not None:
        log["eval_step"].append(0)
        log["eval"].append(eval_fn(model))
    for step in tqdm(range(1, steps + 1), desc=desc, leave=False):
        for group in opt.param_groups:   # warm up: Adam's first steps move all weights
            group["lr"] = lr * min(1.0, step / warmup)
        prompts = [make_prompt(a, b) for a, b in draw_problems(prompts_per_step, g)]
        prompts = [p for p in prompts for _ in range(group_size)]   # groups consecutive
        ids = generate(model, prompts, max_new, temperature, g)
        P = len(prompts[0])
        texts = completions(ids, P)
        rewards = torch.tensor([reward(p, t) for p, t in zip(prompts, texts)])
        mask = mask_fn(ids, P, EOS_ID)[:, 1:]          # token t is scored at t - 1
        model.train()
        with torch_threads(1):
            logits = model(ids).float() / temperature  # the policy that sampled
            logp_all = torch.log_softmax(logits[:, :-1], dim=-1)
            logp = logp_all.gather(-1, ids[:, 1:, None]).squeeze(-1)
            old = logp.detach()                        # one step per batch: ratio 1
            loss = loss_fn(logp, old, old, rewards, mask, group_size, beta=0.0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        entropy = -(logp_all.exp() * logp_all).sum(-1).detach()
        log["step"].append(step)
        log["reward"].append(float(rewards.mean()))
        log["entropy"].append(float((entropy * mask).sum() / mask.sum()))
        log["length"].append(float(mask.sum(1).mean()))
        if eval_fn is not None and (step % eval_every == 0 or step == steps):
            log["eval_step"].append(step)
            log["eval"].append(eval_fn(model))
    model.eval()
    log["seconds"] = time.perf_counter() - t0
    return log


# ----------------------------------------------------------------------------------------
# Provided: training on the model's own chains of thought
# ----------------------------------------------------------------------------------------
def self_label(model: GPT, problems: list[tuple[int, int]], n: int, parse, vote,
               min_agreement: float = 0.0, temperature: float = 0.5, op: str = "+",
               seed: int = 0) -> list:
    """No answer key: sample ``n`` scratchpad completions of each problem, take the
    majority answer, and return one sampled completion that reaches it (the model's own
    chain of thought), or None when there is no majority or fewer than
    ``min_agreement * n`` samples agree with it."""
    prompts = [make_prompt(a, b, op) for a, b in problems]
    g = torch.Generator().manual_seed(seed)
    repeated = [p for p in prompts for _ in range(n)]
    ids = generate(model, repeated, MAX_NEW, temperature, g)
    texts = completions(ids, len(prompts[0]))
    out = []
    for i in range(len(prompts)):
        mine = texts[i * n:(i + 1) * n]
        answers = [parse(t) for t in mine]
        label = vote(answers)
        if label is None or answers.count(label) < min_agreement * n:
            out.append(None)
        else:
            out.append(mine[answers.index(label)])
    return out


def chain_rows(problems: list[tuple[int, int]], chains: list, op: str = "+"):
    """Rows ``prompt + chain`` (problems without a chain skipped), right-padded with the
    end token to the prompt length + MAX_NEW: int64 (K, 2 * DIGITS + 2 + MAX_NEW)."""
    P = 2 * DIGITS + 2
    K = sum(c is not None for c in chains)
    rows = torch.full((K, P + MAX_NEW), EOS_ID, dtype=torch.long)
    k = 0
    for (a, b), chain in zip(problems, chains):
        if chain is not None:
            ids = encode(make_prompt(a, b, op) + chain)[:P + MAX_NEW]
            rows[k, :len(ids)] = torch.tensor(ids)
            k += 1
    return rows


def task_rows(n: int, op: str, generator: torch.Generator, scratchpad) -> torch.Tensor:
    """``n`` correct scratchpad rows of a task: the data a replay buffer keeps."""
    problems = draw_problems(n, generator, op)
    write = scratchpad if op == "+" else subtraction_scratchpad
    chains = [write(a, b) for a, b in problems]
    return chain_rows(problems, chains, op)


def finetune_rows(model: GPT, rows: torch.Tensor, steps: int, mask_fn,
                  batch_size: int = 64, lr: float = 1e-3, seed: int = 0,
                  progress: bool = False) -> dict:
    """Supervised fine-tuning on rows ``prompt + completion`` drawn at random: the loss
    on each completion up to its end token (``mask_fn``), never on the prompt. No rows,
    no training."""
    if len(rows) == 0:
        return {"step": [], "loss": [], "eval_step": [], "eval": [], "seconds": 0.0}
    g = torch.Generator().manual_seed(seed)
    P = 2 * DIGITS + 2

    def batches(step):
        ids = rows[torch.randint(len(rows), (batch_size,), generator=g)]
        learned = mask_fn(ids, P, EOS_ID)[:, 1:] > 0
        targets = torch.full_like(ids, -100)
        targets[:, :-1] = torch.where(learned, ids[:, 1:], -100)
        return ids, targets
    return train_steps(model, batches, steps, lr=lr, warmup=5, progress=progress)


# ----------------------------------------------------------------------------------------
# Provided: a SEAL-style loop, the model writes its own training data
# ----------------------------------------------------------------------------------------
def seal_loop(model: GPT, rounds: int, reward, mask_fn, mix, dev: list, old_task: list,
              old_rows: torch.Tensor, replay_fraction: float = 0.0, n_new: int = 256,
              n_tries: int = 4, temperature: float = 0.7, steps: int = 40,
              lr: float = 2e-4, seed: int = 0, desc: str = "SEAL") -> dict:
    """Self-improvement in rounds. Each round the model writes its own training data:
    ``n_tries`` chains of thought for each of ``n_new`` fresh addition problems, of
    which the first one the verifier (``reward``) accepts is kept. A copy of the model
    is fine-tuned on those rows (plus replayed rows of the old task, mixed by ``mix``,
    when ``replay_fraction`` > 0); the copy replaces the model only if its accuracy on
    the labelled ``dev`` problems does not drop. Logs, after every round, the accuracy
    on ``dev`` (addition) and on ``old_task`` (subtraction, learned earlier), the
    number of rows written and whether the round was kept."""
    g = torch.Generator().manual_seed(seed)
    log = {"round": [0], "dev": [accuracy(model, dev, MAX_NEW, reward)],
           "old": [accuracy(model, old_task, MAX_NEW, reward, op="-")], "kept": [],
           "rows": []}
    for r in tqdm(range(1, rounds + 1), desc=desc, leave=False):
        problems = draw_problems(n_new, g)
        prompts = [make_prompt(a, b) for a, b in problems]
        ids = generate(model, [p for p in prompts for _ in range(n_tries)], MAX_NEW,
                       temperature, g)
        texts = completions(ids, len(prompts[0]))
        chains = []
        for i, p in enumerate(prompts):
            tries = texts[i * n_tries:(i + 1) * n_tries]
            chains.append(next((t for t in tries if reward(p, t) == 1.0), None))
        rows = chain_rows(problems, chains)
        log["rows"].append(len(rows))
        if replay_fraction > 0:
            rows = mix(rows, old_rows, replay_fraction, g)
        candidate = copy.deepcopy(model)
        finetune_rows(candidate, rows, steps, mask_fn, lr=lr, seed=seed + r)
        score = accuracy(candidate, dev, MAX_NEW, reward)
        keep = score >= log["dev"][-1]
        if keep:
            model = candidate
        log["kept"].append(keep)
        log["round"].append(r)
        log["dev"].append(score if keep else log["dev"][-1])
        log["old"].append(accuracy(model, old_task, MAX_NEW, reward, op="-"))
    log["model"] = model
    return log
