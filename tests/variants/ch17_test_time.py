"""Correct answers to chapter 17, in other styles than the reference."""
import bisect
import math
import re
from fractions import Fraction

import numpy as np
import torch

from . import right


# -- scratchpad -----------------------------------------------------------------------------
@right("ch17.scratchpad", style="digit strings, reversed")
def scratchpad_strings(a, b, digits=3):
    xs, ys = str(a).zfill(digits)[::-1], str(b).zfill(digits)[::-1]
    out, carry = [], 0
    for x, y in zip(xs, ys):
        carry, s = divmod(int(x) + int(y) + carry, 10)
        out.append(f"{carry}{s}")
    return ",".join(out) + ";" + f"{a + b}".rjust(digits + 1, "0") + "\n"


@right("ch17.scratchpad", style="recursion over the columns")
def scratchpad_recursive(a, b, digits=3):
    def columns(x, y, carry, left):
        if left == 0:
            return []
        s = x % 10 + y % 10 + carry
        return ["%02d" % s] + columns(x // 10, y // 10, s // 10, left - 1)
    return ",".join(columns(a, b, 0, digits)) + ";" + "%0*d" % (digits + 1, a + b) + "\n"


# -- parse_answer ---------------------------------------------------------------------------
@right("ch17.parse_answer", style="one regular expression")
def parse_regex(completion):
    line = completion.split("\n")[0]
    m = re.search(r"(?:^|;)([0-9]+)$", line)
    if m is None or ";" in line[m.end(1):] or (";" in line and line.rfind(";") != m.start(1) - 1):
        return None
    return int(m.group(1))


@right("ch17.parse_answer", style="character loop from the end")
def parse_loop(completion):
    end = completion.find("\n")
    line = completion if end < 0 else completion[:end]
    digits = ""
    for ch in reversed(line):
        if ch == ";":
            break
        if ch not in "0123456789":
            return None
        digits = ch + digits
    return int(digits) if digits else None


# -- verifiable_reward ----------------------------------------------------------------------
def _parse(completion):
    answer = completion.partition("\n")[0].rpartition(";")[2]
    return int(answer) if re.fullmatch("[0-9]+", answer) else None


@right("ch17.verifiable_reward", style="regex on the prompt")
def reward_regex(prompt, completion):
    a, op, b = re.fullmatch(r"(\d+)([+-])(\d+)=", prompt).groups()
    value = int(a) + int(b) if op == "+" else int(a) - int(b)
    return float(_parse(completion) == value)


@right("ch17.verifiable_reward", style="operator table, returns an int-valued float")
def reward_table(prompt, completion):
    import operator

    for sym, fn in (("+", operator.add), ("-", operator.sub)):
        if sym in prompt:
            left, right = prompt[:-1].split(sym)
            return 1.0 if _parse(completion) == fn(int(left), int(right)) else 0.0
    return 0.0


# -- calculator -----------------------------------------------------------------------------
@right("ch17.calculator", style="one anchored regular expression")
def calculator_regex(text):
    m = re.search(r"\[([0-9]+)([-+*])([0-9]+)\]$", text)
    if m is None or text.endswith("\n"):
        return None
    x, op, y = int(m.group(1)), m.group(2), int(m.group(3))
    return str({"+": x + y, "-": x - y, "*": x * y}[op])


@right("ch17.calculator", style="a little state machine over the characters")
def calculator_scan(text):
    if not text.endswith("]"):
        return None
    start = text.rfind("[")
    if start < 0:
        return None
    body = text[start + 1:-1]
    left, op, right = "", None, ""
    for ch in body:
        if ch in "0123456789":
            if op is None:
                left += ch
            else:
                right += ch
        elif ch in "+-*" and op is None and left:
            op = ch
        else:
            return None
    if op is None or not right:
        return None
    x, y = int(left), int(right)
    return str(x * y if op == "*" else x + y if op == "+" else x - y)


# -- majority_vote --------------------------------------------------------------------------
@right("ch17.majority_vote", style="sort by (-count, first position)")
def vote_sorted(answers):
    seen = [x for x in answers if x is not None]
    if not seen:
        return None
    return sorted(set(seen), key=lambda x: (-seen.count(x), seen.index(x)))[0]


@right("ch17.majority_vote", style="running counts, strict > keeps the first")
def vote_running(answers):
    counts = {}
    for x in answers:
        if x is not None:
            counts[x] = counts.get(x, 0) + 1
    best = None
    for x in counts:                     # dicts keep insertion order: first met first
        if best is None or counts[x] > counts[best]:
            best = x
    return best


# -- best_of_n ------------------------------------------------------------------------------
@right("ch17.best_of_n", style="python loops with a strict >")
def best_of_n_loops(scores, valid):
    out = []
    for row, ok in zip(scores.tolist(), valid.tolist()):
        best = -1
        for i, (s, v) in enumerate(zip(row, ok)):
            if v and (best < 0 or s > row[best]):
                best = i
        out.append(best)
    return torch.tensor(out, dtype=torch.long)


@right("ch17.best_of_n", style="numpy, float64, -inf fill")
def best_of_n_numpy(scores, valid):
    s = np.where(valid.numpy(), scores.double().numpy(), -np.inf)
    best = s.argmax(axis=1)
    best[~valid.numpy().any(axis=1)] = -1
    return torch.from_numpy(best)


# -- pass_at_k ------------------------------------------------------------------------------
@right("ch17.pass_at_k", style="exact integers with math.comb")
def pass_at_k_comb(n, c, k):
    if n - c < k:
        return 1.0
    return float(1 - Fraction(math.comb(n - c, k), math.comb(n, k)))


@right("ch17.pass_at_k", style="log-gamma")
def pass_at_k_lgamma(n, c, k):
    if n - c < k:
        return 1.0
    log_ratio = (math.lgamma(n - c + 1) - math.lgamma(n - c - k + 1)
                 - math.lgamma(n + 1) + math.lgamma(n - k + 1))
    return -math.expm1(log_ratio)


@right("ch17.pass_at_k", style="numpy product (the Codex paper's code shape)")
def pass_at_k_numpy(n, c, k):
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


# -- completion_mask ------------------------------------------------------------------------
@right("ch17.completion_mask", style="python loop, break after the end token")
def mask_loop(ids, prompt_len, eos_id):
    out = torch.zeros(ids.shape, dtype=torch.float32)
    for b, row in enumerate(ids.tolist()):
        for t in range(prompt_len, len(row)):
            out[b, t] = 1.0
            if row[t] == eos_id:
                break
    return out


@right("ch17.completion_mask", style="index of the first end token, compared with arange")
def mask_first_index(ids, prompt_len, eos_id):
    B, T = ids.shape
    gen = ids[:, prompt_len:] == eos_id
    has = gen.any(1)
    first = torch.where(has, gen.float().argmax(1) + prompt_len, torch.full((B,), T - 1))
    pos = torch.arange(T)
    return ((pos >= prompt_len) & (pos <= first[:, None])).to(torch.float64)


# -- replay_mix -----------------------------------------------------------------------------
@right("ch17.replay_mix", style="shuffled result, multinomial without replacement")
def replay_multinomial(new, old, replay_fraction, generator):
    R = int(round(len(new) * replay_fraction / (1 - replay_fraction)))
    if R == 0:
        return new.clone()
    idx = torch.multinomial(torch.ones(len(old)), R, replacement=False, generator=generator)
    mixed = torch.cat([new, old[idx]])
    return mixed[torch.randperm(len(mixed), generator=generator)]


@right("ch17.replay_mix", style="interleaved, the old rows from a permutation")
def replay_interleaved(new, old, replay_fraction, generator):
    R = round(len(new) * replay_fraction / (1 - replay_fraction))
    picked = old[torch.randperm(len(old), generator=generator)[:R]]
    rows = []
    for i in range(max(len(new), R)):
        if i < len(new):
            rows.append(new[i])
        if i < R:
            rows.append(picked[i])
    return torch.stack(rows)
