"""Chapter 8 - what the checks need to run and judge a learner's code (public)."""
from __future__ import annotations

import math

import torch

IGNORE = -100


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- mask_tokens --------------------------------------------------------------------------
def mask_stats(original: torch.Tensor, special: torch.Tensor, inputs, labels, mask_id: int, vocab: int) -> dict:
    """What a masking result looks like: rule violations (counts) and rates."""
    if not (isinstance(inputs, torch.Tensor) and isinstance(labels, torch.Tensor)):
        raise TypeError(f"return a tuple (inputs, labels) of two tensors, got {type(inputs).__name__} and "
                        f"{type(labels).__name__}")
    for name, t in (("inputs", inputs), ("labels", labels)):
        if tuple(t.shape) != tuple(original.shape):
            raise TypeError(f"{name} has shape {tuple(t.shape)}, expected {tuple(original.shape)} (the shape of input_ids)")
        if t.dtype != torch.int64:
            raise TypeError(f"{name} has dtype {t.dtype}, expected torch.int64")
    special = special.bool()
    selected = labels != IGNORE
    eligible = ~special
    n_sel = int((selected & eligible).sum())
    changed = inputs != original
    masked = selected & (inputs == mask_id)
    random_ = selected & changed & (inputs != mask_id)
    same = selected & ~changed
    rand_ids = inputs[random_].double()
    return {
        "special_selected": int((selected & special).sum()),
        "label_not_original": int((selected & (labels != original)).sum()),
        "label_is_mask": int((selected & (labels == mask_id) & (original != mask_id)).sum()),
        "unselected_changed": int((~selected & changed).sum()),
        "out_of_vocab": int(((inputs < 0) | (inputs >= vocab)).sum()),
        "select_rate": n_sel / max(1, int(eligible.sum())),
        "mask_frac": int(masked.sum()) / max(1, n_sel),
        "random_frac": int(random_.sum()) / max(1, n_sel),
        "same_frac": int(same.sum()) / max(1, n_sel),
        "random_mean": float(rand_ids.mean() / vocab) if rand_ids.numel() else 0.5,
        "n_selected": n_sel,
        "n_eligible": int(eligible.sum()),
    }


def mask_run(fn, input_ids, special_mask, special_ids, mask_id, vocab, p, seed):
    """Mask the batch with the learner's function; return the statistics of the result."""
    torch.manual_seed(seed)
    out = fn(input_ids, special_ids, mask_id, vocab, p, gen(seed))
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise TypeError(f"return a tuple (inputs, labels), got {type(out).__name__}")
    return mask_stats(input_ids, special_mask, out[0], out[1], mask_id, vocab)


_RULES = [
    ("special_selected", "{n} special or padding positions were selected (their label is not -100): special tokens "
                         "([CLS], [SEP], [PAD], ...) must never be selected"),
    ("label_is_mask", "{n} labels hold the [MASK] id: the label of a selected position is the ORIGINAL token"),
    ("label_not_original", "{n} selected positions have a label that is not the original token"),
    ("unselected_changed", "{n} positions whose label is -100 were changed in the inputs: only selected positions "
                           "may be corrupted"),
    ("out_of_vocab", "{n} input ids are outside [0, vocab_size)"),
]


def compare_mask(expected: dict, got: dict) -> str | None:
    if not isinstance(got, dict):
        return f"could not read your result: {got!r}"
    for key, msg in _RULES:
        if (got[key] > 0) != (expected[key] > 0):
            return msg.format(n=got[key]) if got[key] else f"expected some {key} positions, found none"
    n = max(100, min(expected["n_selected"], got["n_selected"]) or 100)
    # Tolerances: about 4.5 standard deviations of the difference of two independent samples.
    q = expected["select_rate"]
    n_elig = max(1, min(expected.get("n_eligible", 1), got.get("n_eligible", 1)))
    tol_sel = 4.5 * math.sqrt(2 * q * (1 - q) / n_elig) + 0.005 if q not in (0.0, 1.0) else 1e-9
    if abs(got["select_rate"] - expected["select_rate"]) > tol_sel:
        return (f"you selected {got['select_rate']:.1%} of the non-special positions; DataCollatorForLanguageModeling "
                f"selects {expected['select_rate']:.1%} (each with probability mlm_probability)")
    if got["n_selected"] == 0 and expected["n_selected"] == 0:
        return None
    for key, what, share in (("mask_frac", "became [MASK]", "80%"), ("random_frac", "became a random token", "10%"),
                             ("same_frac", "stayed unchanged", "10%")):
        p = min(max(expected[key], 0.05), 0.95)
        tol = 4.5 * math.sqrt(2 * p * (1 - p) / n) + 0.005  # 4.5 standard deviations of a difference of two samples
        if abs(got[key] - expected[key]) > tol:
            return (f"{got[key]:.1%} of your selected positions {what}; expected about {share} "
                    f"(the collator: {expected[key]:.1%})")
    if expected["random_frac"] > 0 and got["random_frac"] > 0 and abs(got["random_mean"] - expected["random_mean"]) > 0.2:
        return (f"your random replacements are not spread over the vocabulary (mean id / vocab_size = "
                f"{got['random_mean']:.2f}, expected about 0.5): draw them from range(vocab_size)")
    return None


# -- span_corruption ----------------------------------------------------------------------
def t5_counts(n: int, density: float, mean_len: float) -> tuple[int, int]:
    """T5's random_spans_noise_mask: how many noise tokens and spans for a sequence of n."""
    n_noise = min(max(int(round(n * density)), 1), n - 1)
    n_spans = max(int(round(n_noise / mean_len)), 1)
    return n_noise, min(n_spans, n_noise, n - n_noise)


def analyse_call(tokens, sentinels, inputs, targets, n_noise_want, n_spans_want):
    """Check one call against T5's rules; return (problem or None, noise mask, span lengths)."""
    if not (isinstance(inputs, (list, tuple)) and isinstance(targets, (list, tuple))):
        return ("types", "return two lists of ints (inputs, targets)"), None, None
    if any(isinstance(t, torch.Tensor) for t in list(inputs) + list(targets)):
        inputs, targets = [int(t) for t in inputs], [int(t) for t in targets]
    sset = set(sentinels)
    in_s = [t for t in inputs if t in sset]
    tg_s = [t for t in targets if t in sset]
    k = len(in_s)
    if k == 0:
        return ("no-sentinel", "your inputs contain no sentinel: each hidden span is replaced by one sentinel id"), None, None
    if in_s != list(sentinels[:k]):
        return ("sentinel-order", f"the sentinels in your inputs are {in_s[:6]}...; the spans must use sentinel_ids[0], "
                "sentinel_ids[1], ... in order, each once"), None, None
    if tg_s[:k] != list(sentinels[:k]) or (targets and targets[0] != sentinels[0]):
        return ("targets-start", f"your targets should start with sentinel_ids[0] and list the same sentinels as "
                f"the inputs, in order; got sentinels {tg_s[:6]} in the targets"), None, None
    if len(tg_s) == k:
        return ("no-final-sentinel", "your targets do not end with the closing sentinel sentinel_ids[n_spans]"), None, None
    if tg_s != list(sentinels[:k + 1]) or targets[-1] != sentinels[k]:
        return ("final-sentinel-id", f"your targets must end with exactly one extra sentinel, sentinel_ids[{k}]"), None, None
    # Rebuild the original: each sentinel in the inputs expands to what follows it in the targets.
    pieces, cur = {}, None
    for t in targets[:-1]:
        if t in sset:
            cur = t
            pieces[cur] = []
        else:
            pieces[cur].append(t)
    rebuilt, mask, spans = [], [], []
    for t in inputs:
        if t in sset:
            rebuilt += pieces[t]
            mask += [True] * len(pieces[t])
            spans.append(len(pieces[t]))
        else:
            rebuilt.append(t)
            mask.append(False)
    if rebuilt != list(tokens):
        return ("reconstruct", "filling each sentinel of the inputs with the tokens that follow it in the targets does "
                "not give back the original sequence"), None, None
    if any(s == 0 for s in spans):
        return ("empty-span", "a sentinel in your targets is followed by no token: every span hides at least one"), None, None
    if any(a in sset and b in sset for a, b in zip(inputs, inputs[1:])):
        return ("adjacent", "two sentinels are adjacent in your inputs: two spans that touch are one span"), None, None
    # T5's layout on every call, not only in the statistics: kept, noise, kept, ..., noise.
    if mask and mask[0]:
        return ("opens-with-span", "a span opens the sequence (its first token is hidden): T5's layout starts with "
                "a kept run, so the first token is never hidden"), None, None
    if mask and not mask[-1]:
        return ("ends-kept", "the sequence ends with kept tokens: T5's layout ends with a noise span, so the last "
                "token is always hidden"), None, None
    return None, mask, spans


def span_run(fn, tokens, sentinels, density, mean_len, calls, first_seed=0):
    """Call the submission ``calls`` times; the analysis happens in the comparison, outside the call."""
    outputs = []
    torch.manual_seed(first_seed)  # for a submission that ignores the generator
    for c in range(calls):
        out = fn(list(tokens), list(sentinels), density, mean_len, gen(first_seed + c))
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            raise TypeError(f"return a tuple (inputs, targets), got {type(out).__name__}")
        outputs.append((out[0], out[1]))
    return {"tokens": list(tokens), "sentinels": list(sentinels), "density": density, "mean_len": mean_len,
            "outputs": outputs}


def span_summary(run: dict) -> dict:
    """The facts the comparison looks at, over all the calls of a run."""
    tokens, sentinels, density, mean_len = run["tokens"], run["sentinels"], run["density"], run["mean_len"]
    n_noise, n_spans = t5_counts(len(tokens), density, mean_len)
    summary = {"problem": None, "problem_text": "", "noise_ok": True, "spans_ok": True, "example": "",
               "varies": False, "lengths_vary": False, "thirds": (0.0, 0.0, 0.0)}
    seen, lengths = set(), set()
    thirds = [0.0, 0.0, 0.0]
    n = len(tokens)
    cut = (n // 3, 2 * n // 3)
    for c, (inputs, targets) in enumerate(run["outputs"]):
        problem, mask, spans = analyse_call(tokens, sentinels, inputs, targets, n_noise, n_spans)
        if problem is not None:
            summary["problem"], summary["problem_text"] = problem
            return summary
        got_noise = sum(mask)
        if got_noise != n_noise and summary["noise_ok"]:
            summary["noise_ok"] = False
            summary["example"] = f"call {c} hid {got_noise} tokens of {n}, the rule gives {n_noise}"
        if len(spans) != n_spans and summary["spans_ok"]:
            summary["spans_ok"] = False
            summary["example"] = summary["example"] or f"call {c} made {len(spans)} spans, the rule gives {n_spans}"
        seen.add(tuple(mask))
        lengths.update(spans)
        for j, (a, b) in enumerate(((0, cut[0]), cut, (cut[1], n))):
            if b > a:
                thirds[j] += sum(mask[a:b]) / (b - a)
    calls = max(1, len(run["outputs"]))
    summary["varies"] = len(seen) > 1
    summary["lengths_vary"] = len(lengths) > 1
    summary["thirds"] = tuple(t / calls for t in thirds)
    return summary


def compare_span(expected_run: dict, got_run: dict) -> str | None:
    if not isinstance(got_run, dict):
        return f"could not read your result: {got_run!r}"
    expected, got = span_summary(expected_run), span_summary(got_run)
    if got["problem"] != expected["problem"]:
        return got["problem_text"] or f"expected: {expected['problem_text']}"
    if got["problem"] is not None:
        return None
    if got["noise_ok"] != expected["noise_ok"]:
        return ("the number of hidden tokens must be round(len(tokens) * noise_density) (at least 1, at most len - 1) "
                f"on every call: {got['example']}")
    if got["spans_ok"] != expected["spans_ok"]:
        return f"the number of spans must be max(1, round(n_noise / mean_span_length)): {got['example']}"
    layout = ("T5 cuts the sequence into runs that alternate kept, noise, kept, noise, ..., starting with a kept run "
              "and ending with a noise run, every run of random positive length")
    if got["varies"] != expected["varies"]:
        if expected["varies"]:
            return "every call returned the same corruption: place the spans at random, using the generator"
        return f"with a single span the layout is fixed (one kept run, then the noise span at the end): {layout}"
    if got["lengths_vary"] != expected["lengths_vary"]:
        return "all your spans have the same length: T5 splits the noise tokens into spans of RANDOM lengths"
    for i, (a, b) in enumerate(zip(expected["thirds"], got["thirds"])):
        if abs(a - b) > 0.5 * max(a, 0.05):
            part = ("first", "middle", "last")[i]
            return (f"over many calls, {b:.1%} of the {part} third of the sequence was hidden, T5's sampler hides "
                    f"{a:.1%} there. {layout}")
    return None
