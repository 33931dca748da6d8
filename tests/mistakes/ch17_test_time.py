"""Wrong answers to chapter 17, as learners write them."""
import math

import torch

from . import wrong


# -- scratchpad -----------------------------------------------------------------------------
@wrong("ch17.scratchpad", diagnosis="msb-first")
def scratchpad_left_to_right(a, b, digits=3):
    sa, sb = str(a).zfill(digits), str(b).zfill(digits)
    cols, carry = [], 0
    for x, y in zip(sa, sb):                 # reads the hundreds first
        s = int(x) + int(y) + carry
        cols.append(f"{s:02d}")
        carry = s // 10
    return ",".join(cols) + ";" + str(a + b).zfill(digits + 1) + "\n"


@wrong("ch17.scratchpad", diagnosis="no-carry")
def scratchpad_forgets_carry(a, b, digits=3):
    cols = []
    for i in range(digits):
        s = (a // 10 ** i) % 10 + (b // 10 ** i) % 10
        cols.append(f"{s:02d}")
    return ",".join(cols) + f";{a + b:0{digits + 1}d}\n"


@wrong("ch17.scratchpad", diagnosis="one-digit")
def scratchpad_single_digit_columns(a, b, digits=3):
    cols, carry = [], 0
    for i in range(digits):
        s = a // 10 ** i % 10 + b // 10 ** i % 10 + carry
        carry = s // 10
        cols.append(str(s % 10))
    return ",".join(cols) + f";{a + b:0{digits + 1}d}\n"


@wrong("ch17.scratchpad", diagnosis="unpadded")
def scratchpad_answer_not_padded(a, b, digits=3):
    cols, carry = [], 0
    for i in range(digits):
        s = a // 10 ** i % 10 + b // 10 ** i % 10 + carry
        cols.append(str(s).zfill(2))
        carry = int(s >= 10)
    return ",".join(cols) + ";" + str(a + b) + "\n"


# -- parse_answer ---------------------------------------------------------------------------
@wrong("ch17.parse_answer", diagnosis="no-cut")
def parse_last_semicolon_of_everything(completion):
    answer = completion.split(";")[-1].strip()
    return int(answer) if answer.isdigit() else None


@wrong("ch17.parse_answer", diagnosis="first-semicolon")
def parse_first_semicolon(completion):
    line = completion.split("\n")[0]
    answer = line.split(";")[1] if ";" in line else line
    return int(answer) if answer.isdigit() else None


@wrong("ch17.parse_answer", diagnosis="int-accepts")
def parse_with_try_int(completion):
    line = completion.partition("\n")[0]
    try:
        return int(line.rsplit(";", 1)[-1])
    except ValueError:
        return None


# -- verifiable_reward ----------------------------------------------------------------------
def _parse(completion):
    answer = completion.split("\n", 1)[0].rsplit(";", 1)[-1]
    return int(answer) if answer and all(c in "0123456789" for c in answer) else None


@wrong("ch17.verifiable_reward", diagnosis="always-add")
def reward_always_adds(prompt, completion):
    a, b = prompt[:3], prompt[4:7]
    return 1.0 if _parse(completion) == int(a) + int(b) else 0.0


@wrong("ch17.verifiable_reward", diagnosis="string-compare")
def reward_compares_text(prompt, completion):
    op = "+" if "+" in prompt else "-"
    a, b = prompt[:-1].split(op)
    value = int(a) + int(b) if op == "+" else int(a) - int(b)
    return float(completion.split("\n")[0].split(";")[-1] == str(value))


@wrong("ch17.verifiable_reward", diagnosis="partial")
def reward_partial_credit(prompt, completion):
    op = "+" if "+" in prompt else "-"
    a, b = prompt[:-1].split(op)
    value = f"{int(a) + int(b) if op == '+' else int(a) - int(b):04d}"
    answer = completion.split("\n")[0].split(";")[-1]
    if len(answer) != 4:
        return 0.0
    return sum(x == y for x, y in zip(answer, value)) / 4


@wrong("ch17.verifiable_reward", diagnosis="ch17.parse_answer:int-accepts")
def reward_with_loose_int(prompt, completion):
    op = "+" if "+" in prompt else "-"
    a, b = prompt[:-1].split(op)
    value = int(a) + int(b) if op == "+" else int(a) - int(b)
    try:
        got = int(completion.split("\n")[0].split(";")[-1])
    except ValueError:
        return 0.0
    return 1.0 if got == value else 0.0


# -- calculator -----------------------------------------------------------------------------
@wrong("ch17.calculator", diagnosis="eval")
def calculator_with_eval(text):
    if not text.endswith("]") or "[" not in text:
        return None
    expr = text[text.rfind("[") + 1:-1]
    try:
        return str(eval(expr, {"__builtins__": {}}))
    except Exception:
        return None


@wrong("ch17.calculator", diagnosis="first-bracket")
def calculator_first_bracket(text):
    if not text.endswith("]") or "[" not in text:
        return None
    body = text[text.find("[") + 1:-1]
    for op in "+-*":
        if op in body:
            x, _, y = body.partition(op)
            if x.isdigit() and y.isdigit():
                x, y = int(x), int(y)
                return str({"+": x + y, "-": x - y, "*": x * y}[op])
    return None


@wrong("ch17.calculator", diagnosis="not-at-end")
def calculator_anywhere(text):
    import re

    found = re.findall(r"\[(\d+)([-+*])(\d+)\]", text)
    if not found:
        return None
    x, op, y = found[-1]
    x, y = int(x), int(y)
    return str(x + y if op == "+" else x - y if op == "-" else x * y)


# -- majority_vote --------------------------------------------------------------------------
@wrong("ch17.majority_vote", diagnosis="none-votes")
def vote_counts_none(answers):
    from collections import Counter

    if not answers:
        return None
    return Counter(answers).most_common(1)[0][0]


@wrong("ch17.majority_vote", diagnosis="tie-largest")
def vote_ties_to_largest(answers):
    counts = {}
    for x in answers:
        if x is not None:
            counts[x] = counts.get(x, 0) + 1
    if not counts:
        return None
    return sorted(counts.items(), key=lambda kv: (kv[1], kv[0]))[-1][0]


@wrong("ch17.majority_vote", diagnosis="tie-last")
def vote_ties_to_last(answers):
    counts = {}
    best, best_count = None, 0
    for x in answers:
        if x is None:
            continue
        counts[x] = counts.get(x, 0) + 1
    for x in answers:
        if x is not None and counts[x] >= best_count:
            best, best_count = x, counts[x]
    return best


@wrong("ch17.majority_vote", diagnosis="zero-skipped")
def vote_skips_zero(answers):
    counts = {}
    for x in answers:
        if x:
            counts[x] = counts.get(x, 0) + 1
    return max(counts, key=counts.get) if counts else None


# -- best_of_n ------------------------------------------------------------------------------
@wrong("ch17.best_of_n", diagnosis="multiply-mask")
def best_of_n_multiplies(scores, valid):
    best = (scores * valid.float()).argmax(dim=1)
    return torch.where(valid.any(dim=1), best, torch.tensor(-1))


@wrong("ch17.best_of_n", diagnosis="ignore-valid")
def best_of_n_ignores_valid(scores, valid):
    best = scores.argmax(dim=1)
    best[~valid.any(dim=1)] = -1
    return best


@wrong("ch17.best_of_n", diagnosis="tie-last")
def best_of_n_loop_ge(scores, valid):
    out = []
    for row, ok in zip(scores.tolist(), valid.tolist()):
        best, best_score = -1, -math.inf
        for i, (s, v) in enumerate(zip(row, ok)):
            if v and s >= best_score:
                best, best_score = i, s
        out.append(best)
    return torch.tensor(out)


@wrong("ch17.best_of_n", diagnosis="none-zero")
def best_of_n_no_minus_one(scores, valid):
    return scores.masked_fill(~valid, -math.inf).argmax(dim=1)


# -- pass_at_k ------------------------------------------------------------------------------
@wrong("ch17.pass_at_k", diagnosis="with-replacement")
def pass_at_k_with_replacement(n, c, k):
    return 1.0 - (1.0 - c / n) ** k


@wrong("ch17.pass_at_k", diagnosis="float-comb")
def pass_at_k_scipy_floats(n, c, k):
    import numpy as np
    from scipy.special import comb

    if n - c < k:
        return 1.0
    with np.errstate(invalid="ignore"):      # inf / inf: the learner sees nan, not a warning
        return float(1.0 - comb(n - c, k) / comb(n, k))


@wrong("ch17.pass_at_k", diagnosis="off-by-one")
def pass_at_k_product_shifted(n, c, k):
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c, n):
        prod *= 1.0 - k / i
    return 1.0 - prod


# -- completion_mask ------------------------------------------------------------------------
@wrong("ch17.completion_mask", diagnosis="exclude-eos")
def mask_stops_before_eos(ids, prompt_len, eos_id):
    gen = torch.zeros_like(ids, dtype=torch.bool)
    gen[:, prompt_len:] = True
    ended = ((ids == eos_id) & gen).long().cumsum(1) > 0
    return (gen & ~ended).float()


@wrong("ch17.completion_mask", diagnosis="ignore-eos")
def mask_everything_after_prompt(ids, prompt_len, eos_id):
    mask = torch.zeros(ids.shape)
    mask[:, prompt_len:] = 1.0
    return mask


@wrong("ch17.completion_mask", diagnosis="eos-in-prompt")
def mask_eos_from_start(ids, prompt_len, eos_id):
    is_end = (ids == eos_id).long()
    before = (is_end.cumsum(1) - is_end) > 0
    mask = (~before).float()
    mask[:, :prompt_len] = 0.0
    return mask


# -- replay_mix -----------------------------------------------------------------------------
@wrong("ch17.replay_mix", diagnosis="fraction-of-new")
def replay_fraction_of_new(new, old, replay_fraction, generator):
    R = round(replay_fraction * len(new))
    idx = torch.randperm(len(old), generator=generator)[:R]
    return torch.cat([new, old[idx]])


@wrong("ch17.replay_mix", diagnosis="first-rows")
def replay_first_rows(new, old, replay_fraction, generator):
    R = round(len(new) * replay_fraction / (1 - replay_fraction))
    return torch.cat([new, old[:R]])


@wrong("ch17.replay_mix", diagnosis="with-replacement")
def replay_with_randint(new, old, replay_fraction, generator):
    R = round(len(new) * replay_fraction / (1 - replay_fraction))
    idx = torch.randint(0, len(old), (R,), generator=generator)
    return torch.cat([new, old[idx]])


@wrong("ch17.replay_mix", diagnosis="no-generator")
def replay_global_rng(new, old, replay_fraction, generator):
    R = round(len(new) * replay_fraction / (1 - replay_fraction))
    return torch.cat([new, old[torch.randperm(len(old))[:R]]])
