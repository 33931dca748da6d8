"""Chapter 18 - Efficient inference.

Reference solutions. The docstrings of the exercise functions are the specification the
learner reads; their bodies are the reference solution. Quantizers return integer codes
and the scales needed to undo them; the rest is PROVIDED: the chapter-7 GPT with a KV
cache, a padding mask and position ids (``CachedGPT``), the NF4 code table, the helpers
that quantize a whole model, train a student and time generation.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from solutions.ch01_next_token import shakespeare_text
from solutions.ch06_gpt import KVCache
from solutions.ch07_pretraining import GPT, encode_corpus, load_pretrained_shakespeare
from solutions.ch10_alignment import to_hf_gpt2 as chapter10_to_hf_gpt2


# ----------------------------------------------------------------------------------------
# Exercises: integer quantization
# ----------------------------------------------------------------------------------------
def absmax_quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric ("absmax") int8 quantization of a whole tensor with one scale.

    x: float tensor of any shape. scale = max |x| / 127 (a 0-dim float32 tensor; 1.0
    when x is all zeros). q = round(x / scale), rounding halves to even (torch.round),
    clamped to [-127, 127], as int8 with the shape of x.
    Returns (q, scale); x is approximately q * scale.
    """
    absmax = x.detach().abs().max().float()
    scale = absmax / 127 if absmax > 0 else torch.ones((), dtype=torch.float32)
    q = torch.round(x.float() / scale).clamp(-127, 127).to(torch.int8)
    return q, scale


def zeropoint_quantize(
    x: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric ("zero-point") uint8 quantization of a whole tensor.

    The range [lo, hi] is the range of x extended to contain 0 (lo = min(min x, 0), hi =
    max(max x, 0)), so that 0.0 is exactly representable. x is not all zeros. scale =
    (hi - lo) / 255 (0-dim float32); zero_point = round(-lo / scale) clamped to [0, 255]
    (0-dim int64): the code that stands for 0.0. q = round(x / scale) + zero_point
    clamped to [0, 255], as uint8. Rounding is half to even (torch.round) everywhere.
    Returns (q, scale, zero_point); x is approximately (q - zero_point) * scale.
    """
    x = x.detach().float()
    lo, hi = x.min().clamp(max=0.0), x.max().clamp(min=0.0)
    scale = (hi - lo) / 255
    zero_point = torch.round(-lo / scale).clamp(0, 255).to(torch.int64)
    q = (torch.round(x / scale) + zero_point).clamp(0, 255).to(torch.uint8)
    return q, scale, zero_point


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero_point=0) -> torch.Tensor:
    """Integer codes back to float32: (q - zero_point) * scale.

    q: int8 or uint8 tensor. scale: a 0-dim tensor (one scale for the tensor) or a
    tensor that broadcasts against q, e.g. (rows, 1) for one scale per row. zero_point:
    an int or an integer tensor broadcasting like scale (0 for symmetric codes).
    Returns a float32 tensor of the shape of q.
    """
    zero_point = torch.as_tensor(zero_point)
    # Subtract in a wide integer type: uint8 arithmetic would wrap around below 0.
    return (q.to(torch.int32) - zero_point.to(torch.int32)).float() * scale.float()


def groupwise_quantize(w: torch.Tensor, bits: int = 4, group_size: int | None = None):
    """Symmetric per-group quantization of a weight matrix to ``bits`` bits.

    w: float (rows, cols). Each row is cut into groups of ``group_size`` consecutive
    columns (the last group of a row is shorter when group_size does not divide cols; a
    group never spans two rows); group_size=None means one group per row ("per
    channel"). Every group gets scale = max |group| / qmax with qmax = 2 ** (bits - 1) -
    1 (7 for 4 bits; a group of zeros gets scale 1), and q = round(w / scale), half to
    even, in [-qmax, qmax].
    Returns (q, scales): int8 (rows, cols) and float32 (rows, n_groups), n_groups =
    ceil(cols / group_size).
    """
    rows, cols = w.shape
    g = cols if group_size is None else group_size
    n_groups = -(-cols // g)
    qmax = 2 ** (bits - 1) - 1
    # Pad each row to whole groups: zeros do not change an absmax.
    padded = F.pad(w.detach().float(), (0, n_groups * g - cols))
    groups = padded.view(rows, n_groups, g)
    absmax = groups.abs().amax(dim=-1)  # (rows, n_groups)
    scales = torch.where(absmax > 0, absmax / qmax, torch.ones_like(absmax))
    q = torch.round(groups / scales[..., None]).clamp(-qmax, qmax)
    return q.view(rows, -1)[:, :cols].to(torch.int8), scales


# ----------------------------------------------------------------------------------------
# NF4 (QLoRA's 4-bit NormalFloat), as bitsandbytes stores it
# ----------------------------------------------------------------------------------------
# The 16 values of NF4, in [-1, 1]: quantiles of a standard normal, rescaled so that the
# extremes are -1 and 1, with an exact 0 (Dettmers et al. 2023). The float32 values of
# bitsandbytes.functional.get_4bit_type("nf4").
NF4_CODE = [
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
]


def nf4_quantize(
    x: torch.Tensor, blocksize: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """NF4 quantization, bit for bit as bitsandbytes stores it.

    x: float tensor of any shape, read in flattened (row-major) order and cut into
    blocks of ``blocksize`` values (the last block may be shorter). Each block is scaled
    by the inverse of its absmax (x * (1 / absmax)) into [-1, 1] and every value is
    replaced by the index (0..15) of the nearest entry of NF4_CODE (a value exactly
    halfway between two entries takes the lower one). Two indices are packed per byte,
    the FIRST value in the HIGH nibble: byte = (i0 << 4) | i1. An odd count is padded
    with the index of 0.0. A block of zeros keeps absmax 0 and the index of 0.0.
    Returns (packed, absmax): uint8 (ceil(n / 2),) and float32 (n_blocks,).
    """
    levels = torch.tensor(NF4_CODE)
    flat = x.detach().reshape(-1).float()
    n = flat.numel()
    n_blocks = -(-n // blocksize)
    blocks = F.pad(flat, (0, n_blocks * blocksize - n)).view(n_blocks, blocksize)
    absmax = blocks.abs().amax(dim=-1)  # (n_blocks,)
    scaled = (
        (blocks * (1.0 / absmax.clamp(min=1e-38))[:, None]).clamp(-1, 1).reshape(-1)[:n]
    )
    midpoints = (levels[1:] + levels[:-1]) / 2  # 15 decision boundaries
    index = torch.bucketize(scaled, midpoints)  # x <= boundary -> lower code
    if n % 2:
        index = torch.cat([index, torch.tensor([NF4_CODE.index(0.0)])])
    index = index.to(torch.uint8)
    return (index[0::2] << 4) | index[1::2], absmax


def nf4_dequantize(
    packed: torch.Tensor, absmax: torch.Tensor, shape, blocksize: int = 64
) -> torch.Tensor:
    """Undo ``nf4_quantize``: unpack the two indices of each byte (high nibble first),
    look them up in NF4_CODE and multiply each value by the absmax of its block.

    packed: uint8 (ceil(n / 2),); absmax: float32 (n_blocks,); shape: the original shape
    (n values in all).
    Returns float32 of that shape.
    """
    levels = torch.tensor(NF4_CODE)
    n = math.prod(shape)
    packed = packed.reshape(-1)
    index = torch.stack([packed >> 4, packed & 0x0F], dim=-1).reshape(-1)[:n].long()
    block = torch.arange(n) // blocksize
    return (levels[index] * absmax[block]).reshape(shape)


# ----------------------------------------------------------------------------------------
# Exercise: the int8 matmul path (LLM.int8() without its outlier split)
# ----------------------------------------------------------------------------------------
def int8_linear(
    x: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor
) -> torch.Tensor:
    """y = x @ w.T in integer arithmetic ("vector-wise" int8, Dettmers et al. 2022).

    x: float32 (N, K) activations; w_q: int8 (M, K) weights quantized per output row
    with scales w_scale: float32 (M,) (w is approximately w_q * w_scale[:, None]).
    Quantize each ROW of x (each token) like ``absmax_quantize``: s_x = max |x_n| / 127,
    round half to even (a row of zeros gets scale 1). Multiply the int8 matrices
    accumulating in int32 (``torch._int_mm`` does it in one kernel; int8 * int8 sums
    overflow int8), then rescale: y[n, m] = acc[n, m] * s_x[n] * w_scale[m].
    Returns float32 (N, M).
    """
    absmax = x.detach().abs().amax(dim=1, keepdim=True).float()  # (N, 1)
    s_x = torch.where(absmax > 0, absmax / 127, torch.ones_like(absmax))
    x_q = torch.round(x.float() / s_x).clamp(-127, 127).to(torch.int8)
    acc = torch._int_mm(x_q, w_q.t())  # (N, M) int32
    return acc.float() * s_x * w_scale.float()[None, :]


# ----------------------------------------------------------------------------------------
# Exercise: knowledge distillation
# ----------------------------------------------------------------------------------------
def distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 2.0
) -> torch.Tensor:
    """Hinton et al.'s distillation loss: T^2 * KL(p_teacher^T || p_student^T), per row.

    student_logits, teacher_logits: float (N, V), one row per token. p^T =
    softmax(logits / T) for both models.
    Returns a 0-dim tensor, differentiable w.r.t. the student's logits: T**2 * (1/N) *
    sum_n sum_v p_t[n, v] * (log p_t[n, v] - log p_s[n, v]).
    """
    T = temperature
    log_p_s = F.log_softmax(student_logits / T, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.detach() / T, dim=-1)
    # KL(teacher || student): the teacher's probabilities weigh the terms.
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=-1).mean()
    return kl * T**2  # keeps the gradient's size independent of T


# ----------------------------------------------------------------------------------------
# Provided: the chapter-7 GPT with a KV cache, position ids and a padding mask
# ----------------------------------------------------------------------------------------
class CachedGPT(GPT):
    """The chapter-7 GPT (same weights, same names) whose forward can also read and
    extend a KV cache, take explicit position ids and ignore padded positions.

    ``forward(idx, position_ids=None, attention_mask=None, cache=None)``: idx (B, T)
    int64, the NEW tokens; cache: a list of KVCache (``new_cache()``), one per block,
    holding the ``past = cache[0].length`` earlier positions (None: no past);
    position_ids (B, T) int64 (default past, past + 1, ...); attention_mask (B, past +
    T), True (or 1) for a real token and False for padding, covering the cached
    positions AND the new ones (default: all real). New token i attends to real
    positions up to itself.
    Returns logits (B, T, vocab_size).
    """

    def new_cache(self) -> list[KVCache]:
        return [KVCache() for _ in self.blocks]

    def forward(self, idx, position_ids=None, attention_mask=None, cache=None):
        B, T = idx.shape
        past = cache[0].length if cache is not None else 0
        S = past + T
        if position_ids is None:
            position_ids = torch.arange(past, S).expand(B, T)
        keys = (
            torch.ones(B, S, dtype=torch.bool)
            if attention_mask is None
            else attention_mask.bool()
        )
        query_pos = torch.arange(past, S)[:, None]  # (T, 1)
        key_pos = torch.arange(S)[None, :]  # (1, S)
        # (B, T, S): causal, and only real keys.
        allowed = (key_pos <= query_pos)[None] & keys[:, None, :]
        # A padded position sees itself, so that no row of the softmax is empty.
        allowed = allowed | (key_pos == query_pos)[None]
        mask = allowed[:, None]  # (B, 1, T, S)
        x = self.wte(idx) + self.wpe(position_ids)
        C, H = self.config.n_embd, self.config.n_head
        for i, block in enumerate(self.blocks):
            q, k, v = block.attn.qkv(block.ln_1(x)).split(C, dim=2)
            q, k, v = (t.view(B, T, H, C // H).transpose(1, 2) for t in (q, k, v))
            if cache is not None:
                k, v = cache[i].update(k, v)  # (B, H, S, d)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            x = x + block.attn.proj(y.transpose(1, 2).reshape(B, T, C))
            x = x + block.mlp(block.ln_2(x))
        return self.lm_head(self.ln_f(x))


def rollback(cache: list[KVCache], length: int) -> None:
    """Forget every cached position from ``length`` on (the next update overwrites
    them)."""
    for layer in cache:
        layer.length = min(layer.length, length)


def as_cached(model: GPT) -> CachedGPT:
    """A CachedGPT with the weights of a chapter-7 GPT, in eval mode."""
    cached = CachedGPT(model.config)
    cached.load_state_dict(model.state_dict())
    return cached.eval()


def pretrained_cached() -> tuple[CachedGPT, callable, callable]:
    """The chapter-7 pretrained Shakespeare model as a CachedGPT, with (encode, decode).
    """
    model, encode, decode = load_pretrained_shakespeare()
    return as_cached(model), encode, decode


# ----------------------------------------------------------------------------------------
# Exercises: batched generation and speculative decoding
# ----------------------------------------------------------------------------------------
@torch.no_grad()
def generate_batch(
    model: CachedGPT, prompts: list[list[int]], max_new_tokens: int, pad_id: int
) -> torch.Tensor:
    """Greedy continuation of several prompts of different lengths in one batch.

    model: a CachedGPT; prompts: B non-empty lists of token ids; pad_id: the id written
    in padded positions (its value must not matter). Pad every prompt on the LEFT to the
    longest length L, so that all rows end at the same column and the next token of
    every row is read from the last column; mark the padding in an attention mask; give
    each real token its position in its own prompt (0, 1, ...), not its column; run the
    padded batch once through the model with a cache (the prefill), then feed one token
    per row per step, extending the mask and the positions.
    Returns int64 (B, max_new_tokens): row b equals greedily generating prompts[b]
    alone.
    """
    B, L = len(prompts), max(len(p) for p in prompts)
    idx = torch.full((B, L), pad_id, dtype=torch.long)
    mask = torch.zeros(B, L, dtype=torch.bool)
    for b, p in enumerate(prompts):
        idx[b, L - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[b, L - len(p) :] = True
    # Position 0 at each row's first real token, not at its first column.
    positions = (mask.long().cumsum(dim=-1) - 1).clamp(min=0)
    cache = model.new_cache()
    logits = model(idx, positions, mask, cache)[:, -1]  # (B, V)
    new = []
    for step in range(max_new_tokens):
        token = logits.argmax(dim=-1)  # (B,)
        new.append(token)
        if step == max_new_tokens - 1:
            break
        positions = positions[:, -1:] + 1
        mask = torch.cat([mask, torch.ones(B, 1, dtype=torch.bool)], dim=1)
        logits = model(token[:, None], positions, mask, cache)[:, -1]
    return torch.stack(new, dim=1)


@torch.no_grad()
def speculative_generate(
    target: CachedGPT,
    draft: CachedGPT,
    prompt: list[int],
    max_new_tokens: int,
    k: int = 4,
) -> tuple[list[int], list[int]]:
    """Greedy speculative decoding (Leviathan et al. 2023; Chen et al. 2023).

    Each round: the draft proposes gamma = min(k, max_new_tokens - produced - 1) tokens
    greedily, one at a time; the target reads them all in ONE forward pass and gives its
    own greedy choice after the current text and after each proposal; the proposals are
    accepted up to the first one that differs from the target's choice; the round then
    appends the accepted proposals and ONE token of the target (its correction at the
    first mismatch, or its next token when all gamma were accepted).
    The output equals the target's own greedy continuation, token for token.
    Returns (new_tokens, accepted): the max_new_tokens new ids, and for every round (one
    target forward pass each) the number of proposals accepted.
    """
    seq = list(prompt)
    end = len(seq) + max_new_tokens
    t_cache, d_cache = target.new_cache(), draft.new_cache()
    accepted = []

    def feed(
        model, cache, tokens
    ):  # the tokens the model has not read yet -> their logits
        return model(torch.tensor([tokens]), cache=cache)[0]  # (len(tokens), V)

    while len(seq) < end:
        gamma = min(k, end - len(seq) - 1)
        proposals = []
        if gamma:
            logits = feed(draft, d_cache, seq[d_cache[0].length :])
            for j in range(gamma):
                proposals.append(int(logits[-1].argmax()))
                if j < gamma - 1:
                    logits = feed(draft, d_cache, proposals[-1:])
        n_before = len(seq)
        logits = feed(target, t_cache, seq[t_cache[0].length :] + proposals)
        # The target's choices after the text and after each of the gamma proposals.
        choice = logits[-(gamma + 1) :].argmax(dim=-1).tolist()
        a = 0
        while a < gamma and proposals[a] == choice[a]:
            a += 1
        seq += proposals[:a] + [choice[a]]
        accepted.append(a)
        rollback(t_cache, n_before + a)  # the target's correction is not read yet
        rollback(d_cache, n_before + a)
    return seq[len(prompt) :], accepted


class TokenCache:
    """The "cache" of a table draft: the tokens read so far (``length`` of them are
    valid)."""

    def __init__(self):
        self.tokens, self.length = [], 0

    def update(self, new: list[int]) -> list[int]:
        self.tokens = self.tokens[: self.length] + list(new)
        self.length = len(self.tokens)
        return self.tokens


class NgramDraft(nn.Module):
    """A draft model that is only a table: after the last ``n - 1`` tokens it proposes
    the token that most often followed them in the training text, backing off to shorter
    contexts for a context never seen. It has CachedGPT's interface (``new_cache``,
    ``forward(idx, cache=...)`` returning (B, T, V) scores, 1 for the proposed token and
    0 elsewhere), so speculative decoding can use it like any draft."""

    def __init__(self, ids: torch.Tensor, vocab_size: int, n: int = 5):
        super().__init__()
        self.V, self.n = vocab_size, n
        # Per context length m = n-1 .. 1: (m, sorted contexts, most frequent next).
        self.tables = []
        ids = ids.long()
        for m in range(n - 1, 0, -1):
            ctx = torch.zeros(len(ids) - m, dtype=torch.long)
            for j in range(m):  # base-V code of the m tokens before each position
                ctx = ctx * vocab_size + ids[j : len(ids) - m + j]
            # (context, next) pairs and their counts, sorted by context.
            pairs, counts = torch.unique(ctx * vocab_size + ids[m:], return_counts=True)
            context = pairs // vocab_size
            # By context, then by count: each context's most frequent next comes last.
            order = torch.argsort(context * (int(counts.max()) + 1) + counts)
            context, pairs = context[order], pairs[order]
            last = (
                torch.unique_consecutive(context, return_counts=True)[1].cumsum(0) - 1
            )
            self.tables.append((m, context[last], pairs[last] % vocab_size))
        self.fallback = int(torch.bincount(ids, minlength=vocab_size).argmax())

    def new_cache(self) -> list[TokenCache]:
        return [TokenCache()]

    def propose(self, history: list[int]) -> int:
        for m, contexts, best in self.tables:
            if len(history) >= m:
                key = 0
                for t in history[-m:]:
                    key = key * self.V + t
                i = int(torch.searchsorted(contexts, key))
                if i < len(contexts) and int(contexts[i]) == key:
                    return int(best[i])
        return self.fallback

    def forward(self, idx, position_ids=None, attention_mask=None, cache=None):
        B, T = idx.shape
        out = torch.zeros(B, T, self.V)
        for b in range(B):
            past = (
                cache[0].update(idx[b].tolist())
                if cache is not None
                else idx[b].tolist()
            )
            start = len(past) - T
            for t in range(T):
                out[b, t, self.propose(past[: start + t + 1])] = 1.0
        return out


def expected_speedup(alpha, gamma: int, c: float):
    """Leviathan et al. (2023), eq. 1 and theorem 3.8: expected wall-time improvement of
    speculative decoding with acceptance rate alpha, gamma proposals per round and a
    draft step that costs c target steps: (1 - alpha^(gamma+1)) / ((1 - alpha)(gamma c +
    1))."""
    alpha = torch.as_tensor(alpha, dtype=torch.float64).clamp(max=1 - 1e-9)
    return (1 - alpha ** (gamma + 1)) / ((1 - alpha) * (gamma * c + 1))


def acceptance_rate(accepted: list[int], k: int, max_new_tokens: int) -> float:
    """The per-proposal acceptance probability estimated from the rounds: accepted
    proposals over the proposals the target actually judged (a round stops judging at
    its first rejection)."""
    judged, produced = 0, 0
    for a in accepted:
        gamma = min(k, max_new_tokens - produced - 1)
        judged += a + (1 if a < gamma else 0)
        produced += a + 1
    return sum(accepted) / max(judged, 1)


# ----------------------------------------------------------------------------------------
# Provided: data, quantized copies of a model, perplexity
# ----------------------------------------------------------------------------------------
@contextlib.contextmanager
def single_thread():
    """One CPU thread inside the block. Models this small run faster (and time far more
    steadily on a shared machine) on one thread: their matrices are too small to split.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def shakespeare_split(vocab: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Chapter 7's split of Shakespeare's works: the first 90% of the characters (what
    the pretrained model read) and the last 10% (held out), as ids of ``vocab``."""
    ids = encode_corpus(shakespeare_text(), vocab)
    n = int(0.9 * len(ids))
    return ids[:n], ids[n:]


def eval_windows(
    data: torch.Tensor, n: int, length: int = 128, seed: int = 0
) -> torch.Tensor:
    """``n`` fixed windows of ``length + 1`` ids drawn from ``data`` (the same every
    call)."""
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(len(data) - length - 1, (n,), generator=g)
    return data[starts[:, None] + torch.arange(length + 1)]


@torch.no_grad()
def perplexity(model: nn.Module, windows: torch.Tensor, batch_size: int = 32) -> float:
    """exp(mean next-token cross-entropy) of ``model`` over ``windows`` (n, T + 1)."""
    total, count = 0.0, 0
    for w in windows.split(batch_size):
        logits = model(w[:, :-1])
        total += F.cross_entropy(
            logits.flatten(0, 1), w[:, 1:].flatten(), reduction="sum"
        ).item()
        count += w[:, 1:].numel()
    return math.exp(total / count)


def quantizable(model: GPT) -> list[tuple[str, nn.Linear]]:
    """The Linear layers of the blocks (attention and MLP): 96% of the chapter-7 model's
    parameters. Embeddings (tied with the output layer) and norms stay in float."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and name.startswith("blocks.")
    ]


def quantized_copy(model: GPT, method) -> tuple[GPT, float]:
    """A copy of ``model`` whose block Linear weights are replaced by ``method(w)``.

    ``method(w) -> (w_hat, bits)``: the dequantized weight (what the matmul would see)
    and the number of bits its storage takes (codes + scales).
    Returns the copy and the bits per quantized weight.
    """
    qmodel = copy.deepcopy(model)
    bits, count = 0.0, 0
    with torch.no_grad():
        for _, layer in quantizable(qmodel):
            w_hat, b = method(layer.weight)
            layer.weight.copy_(w_hat)
            bits += b
            count += layer.weight.numel()
    return qmodel, bits / count


# ----------------------------------------------------------------------------------------
# Provided: distillation
# ----------------------------------------------------------------------------------------
@torch.no_grad()
def teacher_logits(
    teacher: nn.Module, windows: torch.Tensor, batch_size: int = 64
) -> torch.Tensor:
    """The teacher's logits on every window (n, T + 1) of ids: (n, T, V), computed once.
    """
    teacher.eval()
    return torch.cat([teacher(w[:, :-1]) for w in windows.split(batch_size)])


def train_student(
    student: GPT,
    windows: torch.Tensor,
    steps: int,
    targets: torch.Tensor | None = None,
    distill=None,
    temperature: float = 1.0,
    alpha: float = 0.5,
    batch_size: int = 32,
    lr: float = 1e-2,
    seed: int = 0,
    desc: str = "student",
) -> dict:
    """AdamW with warm-up and cosine decay on batches drawn from ``windows`` (n, T + 1).

    Without ``targets`` the loss is the cross-entropy on the data. With the teacher's
    logits on the same windows (``teacher_logits``) it is ``alpha * distill(student,
    teacher, temperature) + (1 - alpha) * cross-entropy``.
    Returns {"loss": [...], "ce": [...] (the cross-entropy part), "seconds": float}.
    """
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(
        student.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / 30)
        * (0.1 + 0.45 * (1 + math.cos(math.pi * s / steps))),
    )
    student.train()
    hist = {"loss": [], "ce": []}
    t0 = time.perf_counter()
    for _ in tqdm(range(steps), desc=desc, leave=False):
        i = torch.randint(len(windows), (batch_size,), generator=g)
        w = windows[i]
        logits = student(w[:, :-1]).flatten(0, 1)  # (B T, V)
        ce = F.cross_entropy(logits, w[:, 1:].flatten())
        loss = ce
        if targets is not None:
            kd = distill(logits, targets[i].flatten(0, 1), temperature)
            loss = alpha * kd + (1 - alpha) * ce
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        sched.step()
        hist["loss"].append(loss.item())
        hist["ce"].append(ce.item())
    hist["seconds"] = time.perf_counter() - t0
    student.eval()
    return hist


@torch.no_grad()
def agreement(
    student: nn.Module, teacher: nn.Module, windows: torch.Tensor
) -> tuple[float, float]:
    """How close a student is to its teacher on ``windows``: the fraction of positions
    where their most likely next token is the same (what a draft needs), and the mean
    KL(teacher || student) per position, in nats."""
    s, t = student(windows[:, :-1]), teacher(windows[:, :-1])
    same = (s.argmax(-1) == t.argmax(-1)).float().mean().item()
    log_s, log_t = F.log_softmax(s, -1), F.log_softmax(t, -1)
    kl = (log_t.exp() * (log_t - log_s)).sum(-1).mean().item()
    return same, kl


# ----------------------------------------------------------------------------------------
# Provided: timing, and the same models in Hugging Face
# ----------------------------------------------------------------------------------------
def best_time(fn, repeat: int = 3) -> float:
    """The fastest of ``repeat`` runs of ``fn()`` after one warm-up run, in seconds."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def to_hf_gpt2(model: GPT, pad_id: int = 0):
    """A Hugging Face ``GPT2LMHeadModel`` with the weights of a chapter-7 GPT:
    chapter 10's conversion, set up to generate from left-padded batches (``pad_id``
    pads, and no token ends a sequence early)."""
    hf = chapter10_to_hf_gpt2(model).eval()
    for cfg in (hf.config, hf.generation_config):
        cfg.pad_token_id = cfg.bos_token_id = pad_id
        cfg.eos_token_id = None
    return hf
