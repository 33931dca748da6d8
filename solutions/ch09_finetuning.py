"""Chapter 9 - Fine-tuning and in-context learning.

Reference solutions. The docstrings of the exercise functions and classes are the
specification the learner reads; their bodies are the reference solution. Attribute
names (``classifier``, ``base``, ``lora_A``, ``lora_B``, ``scaling``) are part of the
contract: the checks copy weights into them by name. Provided helpers (the Shakespeare
genre data, the frozen-feature cache, the training loops, the attention-only model) are
given in full.
"""
from __future__ import annotations

import math
import os
import random
import re
import time
from collections import Counter

import torch
import torch.nn as nn
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from sentence_transformers import SentenceTransformer
from transformers import AutoModel, AutoTokenizer

from solutions.ch01_next_token import shakespeare_works
from solutions.ch08_objectives import minilm_dir, torch_threads


# --------------------------------------------------------------------------------------
# Exercise: a classification head on top of an encoder
# --------------------------------------------------------------------------------------
class ClassifierHead(nn.Module):
    """Mean pooling over the real tokens, dropout, and one linear layer to class
    scores."""

    def __init__(self, hidden_size: int, num_labels: int, dropout: float = 0.1):
        """Sub-modules: ``self.dropout = nn.Dropout(dropout)`` and ``self.classifier =
        nn.Linear(hidden_size, num_labels)``."""
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)

    def forward(
        self, hidden: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """hidden: (B, T, d) encoder output; attention_mask: (B, T), 1 for real tokens,
        0 for padding.

        Returns logits (B, num_labels): ``classifier(dropout(pooled))`` where
        ``pooled[b]`` is the mean of ``hidden[b, t]`` over the positions t with
        ``attention_mask[b, t] == 1`` only.
        """
        m = attention_mask.to(hidden.dtype).unsqueeze(-1)           # (B, T, 1)
        # (B, d): padding left out
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return self.classifier(self.dropout(pooled))


# --------------------------------------------------------------------------------------
# Exercises: LoRA from scratch (Hu et al., 2021)
# --------------------------------------------------------------------------------------
class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update: y = base(x) + (alpha /
    r) * x A^T B^T."""

    def __init__(self, base: nn.Linear, r: int, alpha: float):
        """Keep ``base`` as ``self.base`` and freeze its weight and bias
        (``requires_grad = False``).

        New trainable parameters: ``self.lora_A = nn.Parameter`` of shape (r,
        in_features), random (``nn.init.kaiming_uniform_(A, a=math.sqrt(5))``, as
        nn.Linear and peft do), and ``self.lora_B = nn.Parameter`` of shape
        (out_features, r), all zeros, so that the layer starts out computing exactly
        ``base(x)``. Store ``self.scaling = alpha / r``.
        """
        super().__init__()
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r))
        self.scaling = alpha / r

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., in_features) -> (..., out_features): ``base(x) + scaling * (x @ A.T)
        @ B.T``.

        Never form the full (out, in) matrix B @ A here: two thin matmuls are cheaper.
        """
        return self.base(x) + self.scaling * ((x @ self.lora_A.T) @ self.lora_B.T)


def lora_merge(
    weight: torch.Tensor,
    lora_A: torch.Tensor,
    lora_B: torch.Tensor,
    alpha: float,
    r: int,
) -> torch.Tensor:
    """The weight of the single ``nn.Linear`` that computes the same as a LoRA layer.

    weight: (out, in); lora_A: (r, in); lora_B: (out, r). Returns (out, in):
    ``weight + (alpha / r) * lora_B @ lora_A``. Inputs are left untouched.
    """
    return weight + (alpha / r) * (lora_B @ lora_A)


def add_lora(
    model: nn.Module, target_modules: list[str], r: int, alpha: float
) -> nn.Module:
    """Put LoRA into ``model``: freeze everything, then wrap the chosen linear layers.

    Every ``nn.Linear`` whose attribute name (the last part of its dotted name, e.g.
    ``query`` in ``encoder.layer.0.attention.self.query``) is in ``target_modules`` is
    replaced, in place, by ``LoRALinear(that_linear, r, alpha)``. All other parameters
    of the model get ``requires_grad = False``, so that only the ``lora_A``/``lora_B``
    matrices train.
    Returns the same model object.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    # Collect first, replace after: changing modules while iterating over them is
    # unsafe.
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name.rpartition(".")[2] in target_modules
    ]
    for name, linear in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(linear, r, alpha))
    return model


# --------------------------------------------------------------------------------------
# Exercises: measuring in-context learning
# --------------------------------------------------------------------------------------
def token_losses(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """The next-token loss at every position, not averaged.

    logits: (B, T, V) from a causal model fed ``tokens`` (B, T). Position t predicts
    token t + 1, so there are T - 1 predictions per sequence. Returns float (B, T - 1)
    with entry ``[b, t] = -log softmax(logits[b, t])[tokens[b, t + 1]]``.
    """
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)          # (B, T-1, V)
    return -logp.gather(-1, tokens[:, 1:].unsqueeze(-1)).squeeze(-1)  # (B, T-1)


def induction_score(attn: torch.Tensor, period: int) -> torch.Tensor:
    """How much each head attends as an induction head on a sequence that repeats
    itself.

    attn: attention probabilities (..., T, T) (query, key) of a causal model fed a
    sequence whose token at position t equals the token at t - period for every t >=
    period. An induction head at query t looks back to the earlier occurrence of the
    current token (t - period) and attends to the token AFTER it, at key t - period + 1.
    Returns (...): the mean over the queries t = period, ..., T - 1 of
    ``attn[..., t, t - period + 1]``.
    """
    T = attn.shape[-1]
    q = torch.arange(period, T)
    return attn[..., q, q - period + 1].mean(dim=-1)


# --------------------------------------------------------------------------------------
# Provided: a labelled task from real text, comedy or tragedy?
# --------------------------------------------------------------------------------------
COMEDIES = [
    "alls_well_that_ends_well",
    "as_you_like_it",
    "comedy_of_errors",
    "loves_labours_lost",
    "measure_for_measure",
    "merchant_of_venice",
    "merry_wives_of_windsor",
    "midsummer_nights_dream",
    "much_ado_about_nothing",
    "taming_of_the_shrew",
    "twelfth_night",
    "two_gentlemen_of_verona",
]
TRAGEDIES = [
    "antony_and_cleopatra",
    "coriolanus",
    "hamlet",
    "julius_caesar",
    "lear",
    "macbeth",
    "othello",
    "romeo_and_juliet",
    "timon_of_athens",
    "tragedy_of_titus_andronicus",
    "troilus_and_cressida",
]
TEST_PLAYS = [
    "comedy_of_errors",
    "much_ado_about_nothing",
    "twelfth_night",
    "hamlet",
    "julius_caesar",
    "macbeth",
]
LABELS = ["comedy", "tragedy"]


def speech_words(text: str) -> list[str]:
    """The spoken words of a play: no front matter, speaker names, stage directions or
    headings."""
    start = re.search(r"^ACT I\b", text, re.M)
    words, in_direction, after_blank = [], False, True
    for line in text[start.start() if start else 0:].split("\n"):
        s = line.strip()
        # [Enter Horatio.] may run over several lines
        if in_direction or s.startswith("["):
            in_direction = "]" not in s
            after_blank = not s
            continue
        if not s:
            after_blank = True
            continue
        speaker = (
            after_blank and s.endswith(".") and len(s) <= 30 and len(s.split()) <= 4
        )
        if speaker or re.match(r"^(ACT|Act|SCENE|Scene)\b", s):
            after_blank = False
            continue
        after_blank = False
        words += re.sub(r"\[.*?\]", " ", s).split()
    return words


def genre_dataset(
    n_words: int = 64,
    train_per_class: int = 180,
    test_per_play: int = 32,
    seed: int = 0,
) -> dict:
    """Passages of ``n_words`` consecutive spoken words, labelled 0 = comedy, 1 =
    tragedy.

    The test split holds out six whole plays (``TEST_PLAYS``): a passage of Hamlet is
    never seen in training, so the test measures genre, not memory of a play's names and
    plots.
    Returns ``{"train": [(text, label, play), ...], "test": [...]}``.
    """
    works = shakespeare_works()
    rng = random.Random(seed)
    data = {"train": [], "test": []}
    for label, plays in enumerate((COMEDIES, TRAGEDIES)):
        train_plays = [p for p in plays if p not in TEST_PLAYS]
        for i, play in enumerate(plays):
            words = speech_words(works[play])
            if play in TEST_PLAYS:
                split, n = "test", test_per_play
            else:
                split = "train"
                n = train_per_class // len(train_plays) + (
                    train_plays.index(play) < train_per_class % len(train_plays)
                )
            # non-overlapping windows
            starts = rng.sample(range(0, len(words) - n_words, n_words), n)
            data[split] += [
                (" ".join(words[s : s + n_words]), label, play) for s in sorted(starts)
            ]
    return data


# --------------------------------------------------------------------------------------
# Provided: the pretrained encoder, and features from its frozen lower layers
# --------------------------------------------------------------------------------------
def load_minilm():
    """all-MiniLM-L6-v2 (6 layers, 384 wide, 22.7 M parameters) and its tokenizer, from
    the local package."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    path = str(minilm_dir())
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()


def extended_mask(attention_mask: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """(B, T) 1/0 -> (B, 1, 1, T) additive mask: 0 for real keys, a huge negative for
    padding."""
    return (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


@torch.no_grad()
def encode_frozen(
    model,
    tokenizer,
    texts: list[str],
    max_length: int,
    split_layer: int,
    batch_size: int = 32,
):
    """Run the encoder once over ``texts``; keep what the fine-tuning and the probe
    need.

    Returns ``(hidden, mask, last)``: the states entering layer ``split_layer`` (N, T,
    d), the attention mask (N, T), and the output of the last layer (N, T, d); T =
    ``max_length``.
    """
    from tqdm.auto import tqdm

    enc = tokenizer(
        texts,
        padding="max_length",
        truncation=True,
        max_length=max_length,
        return_tensors="pt",
    )
    hidden, last = [], []
    for i in tqdm(range(0, len(texts), batch_size), desc="frozen encoder", leave=False):
        out = model(
            input_ids=enc["input_ids"][i : i + batch_size],
            attention_mask=enc["attention_mask"][i : i + batch_size],
            output_hidden_states=True,
        )
        hidden.append(out.hidden_states[split_layer])
        last.append(out.last_hidden_state)
    return torch.cat(hidden), enc["attention_mask"], torch.cat(last)


class TopLayers(nn.Module):
    """The encoder's layers from ``split_layer`` on, as a module that maps hidden states
    to hidden states."""

    def __init__(self, model, split_layer: int):
        super().__init__()
        import copy

        self.layers = copy.deepcopy(model.encoder.layer[split_layer:])

    def forward(
        self, hidden: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        mask = extended_mask(attention_mask, hidden.dtype)
        for layer in self.layers:
            out = layer(hidden, attention_mask=mask)
            hidden = out[0] if isinstance(out, tuple) else out
        return hidden


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    m = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(1) / m.sum(1)


# --------------------------------------------------------------------------------------
# Provided: two baselines (a logistic regression, written in torch)
# --------------------------------------------------------------------------------------
def logistic_regression(
    x_train, y_train, x_test, weight_decay: float = 1e-2, steps: int = 200
):
    """Fit a standardised multinomial logistic regression with L-BFGS; return test
    predictions."""
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
    a, b = (x_train - mu) / sd, (x_test - mu) / sd
    torch.manual_seed(0)
    lin = nn.Linear(a.shape[1], int(y_train.max()) + 1)
    opt = torch.optim.LBFGS(
        lin.parameters(), max_iter=steps, line_search_fn="strong_wolfe"
    )

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(lin(a), y_train) + weight_decay * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return lin(b).argmax(1)


def bag_of_words(train_texts: list[str], test_texts: list[str], min_count: int = 2):
    """log(1 + count) features over the lower-cased words seen at least ``min_count``
    times in training."""
    def words(s):
        return re.findall(r"[a-z']+", s.lower())
    counts = Counter(w for s in train_texts for w in set(words(s)))
    vocab = {
        w: i
        for i, w in enumerate(sorted(w for w, c in counts.items() if c >= min_count))
    }

    def featurise(texts):
        x = torch.zeros(len(texts), len(vocab))
        for i, s in enumerate(texts):
            for w in words(s):
                if w in vocab:
                    x[i, vocab[w]] += 1
        return torch.log1p(x)
    return featurise(train_texts), featurise(test_texts), vocab


# --------------------------------------------------------------------------------------
# Provided: the fine-tuning loop
# --------------------------------------------------------------------------------------
def accuracy(top, head, hidden, mask, labels, batch_size: int = 64) -> float:
    top.eval()
    head.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(labels), batch_size):
            h, m = hidden[i:i + batch_size], mask[i:i + batch_size]
            # drop the columns that are padding in the whole batch
            t = int(m.sum(1).max())
            correct += int(
                (
                    head(top(h[:, :t], m[:, :t]), m[:, :t]).argmax(1)
                    == labels[i : i + batch_size]
                ).sum()
            )
    return correct / len(labels)


def finetune(
    top,
    head,
    train,
    test,
    epochs: int,
    lr: float,
    head_lr: float = 2e-3,
    batch_size: int = 16,
    evals_per_epoch: int = 2,
    seed: int = 0,
    desc: str = "fine-tuning",
) -> dict:
    """AdamW on the trainable parameters of ``top`` and ``head``, linear decay of the
    learning rate.

    ``train`` and ``test`` are tuples ``(hidden, mask, labels)`` of cached frozen
    features.
    Returns a log: the training loss at every step and the test accuracy at each
    evaluation.
    """
    from tqdm.auto import tqdm

    hidden, mask, labels = train
    groups = [{"params": [p for p in top.parameters() if p.requires_grad], "lr": lr},
              {"params": list(head.parameters()), "lr": head_lr}]
    opt = torch.optim.AdamW(groups, weight_decay=0.01)
    steps_per_epoch = math.ceil(len(labels) / batch_size)
    total = epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - s / total)
    eval_at = {
        round(steps_per_epoch * (k + 1) / evals_per_epoch)
        for k in range(evals_per_epoch)
    }
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    log = {
        "step": [],
        "loss": [],
        "eval_step": [0],
        "test_acc": [accuracy(top, head, *test)],
    }
    t0, step = time.perf_counter(), 0
    with tqdm(total=total, desc=desc, leave=False) as bar:
        for epoch in range(epochs):
            order = torch.randperm(len(labels), generator=g)
            for i in range(steps_per_epoch):
                top.train()
                head.train()
                idx = order[i * batch_size:(i + 1) * batch_size]
                h, m = hidden[idx], mask[idx]
                t = int(m.sum(1).max())
                loss = F.cross_entropy(
                    head(top(h[:, :t], m[:, :t]), m[:, :t]), labels[idx]
                )
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                step += 1
                log["step"].append(step)
                log["loss"].append(loss.item())
                bar.update(1)
                if (i + 1) in eval_at:
                    log["eval_step"].append(step)
                    log["test_acc"].append(accuracy(top, head, *test))
    log["seconds"] = time.perf_counter() - t0
    log["trainable"] = sum(
        p.numel()
        for p in list(top.parameters()) + list(head.parameters())
        if p.requires_grad
    )
    return log


# --------------------------------------------------------------------------------------
# Provided: induction heads in a two-layer attention-only Transformer
# --------------------------------------------------------------------------------------
class AttentionOnlyTransformer(nn.Module):
    """Token + learned position embeddings, ``n_layers`` causal multi-head attention
    layers on a
    residual stream (no MLP, no normalisation), and a linear readout. ``forward`` also
    returns
    every layer's attention probabilities, (B, H, T, T) each."""

    def __init__(
        self,
        vocab_size: int,
        max_len: int,
        d_model: int = 64,
        n_heads: int = 4,
        n_layers: int = 2,
    ):
        super().__init__()
        self.n_heads = n_heads
        self.tok = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(max_len, d_model)
        self.qkv = nn.ModuleList(
            [nn.Linear(d_model, 3 * d_model, bias=False) for _ in range(n_layers)]
        )
        self.proj = nn.ModuleList(
            [nn.Linear(d_model, d_model, bias=False) for _ in range(n_layers)]
        )
        self.out = nn.Linear(d_model, vocab_size)

    def forward(self, ids: torch.Tensor):
        B, T = ids.shape
        x = self.tok(ids) + self.pos(torch.arange(T))
        causal = torch.ones(T, T, dtype=torch.bool).tril()
        patterns = []
        for qkv, proj in zip(self.qkv, self.proj):
            # 3 x (B, H, T, dh)
            q, k, v = qkv(x).view(B, T, 3, self.n_heads, -1).permute(2, 0, 3, 1, 4)
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
            # (B, H, T, T)
            att = scores.masked_fill(~causal, float("-inf")).softmax(-1)
            patterns.append(att)
            x = x + proj((att @ v).transpose(1, 2).reshape(B, T, -1))
        return self.out(x), patterns


def repeated_tokens(
    batch_size: int,
    length: int,
    vocab_size: int,
    generator: torch.Generator,
    period: int | None = None,
) -> torch.Tensor:
    """Random tokens in which a segment repeats: ``x[t] = x[t - L]`` for ``L <= t <
    2L``.

    L is ``period`` when given (the evaluation uses L = length // 2: the whole second
    half repeats the first), otherwise drawn per sequence from [length // 8, length //
    2], so that only the content, not a fixed offset, tells the model where to look. (B,
    length) int64.
    """
    x = torch.randint(vocab_size, (batch_size, length), generator=generator)
    for b in range(batch_size):
        L = period or int(
            torch.randint(length // 8, length // 2 + 1, (1,), generator=generator)
        )
        x[b, L:2 * L] = x[b, :L]
    return x


def train_induction(
    steps: int,
    vocab_size: int = 64,
    length: int = 32,
    batch_size: int = 64,
    lr: float = 3e-3,
    eval_every: int = 25,
    seed: int = 0,
    losses_fn=None,
    score_fn=None,
) -> dict:
    """Train the attention-only model on repeated random tokens; track in-context
    learning.

    At every evaluation, on a fixed batch whose second half repeats its first half (L =
    length // 2): ``early`` = mean loss predicting tokens 1 .. L - 1 (first occurrence:
    nothing to copy), ``late`` = mean loss predicting tokens L + 1 .. 2L - 1 (second
    occurrence), the best induction score among the layer-2 heads and the best
    previous-token score among the layer-1 heads. ``losses_fn``/``score_fn`` are
    ``token_losses``/``induction_score``.
    """
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    model = AttentionOnlyTransformer(vocab_size, length)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    g = torch.Generator().manual_seed(seed)
    L = length // 2
    probe = repeated_tokens(
        64, length, vocab_size, torch.Generator().manual_seed(seed + 1), period=L
    )
    log = {"step": [], "early": [], "late": [], "induction": [], "prev_token": []}
    t0 = time.perf_counter()
    with torch_threads(1):
        for step in tqdm(range(steps + 1), desc="attention-only model", leave=False):
            if step % eval_every == 0:
                model.eval()
                with torch.no_grad():
                    logits, patterns = model(probe)
                    # (T - 1,): position t predicts t + 1
                    per_pos = losses_fn(logits, probe).mean(0)
                    log["step"].append(step)
                    log["early"].append(float(per_pos[:L - 1].mean()))
                    log["late"].append(float(per_pos[L:].mean()))
                    log["induction"].append(
                        float(score_fn(patterns[1].mean(0), L).max())
                    )
                    # attn[t, t-1]
                    prev = torch.diagonal(
                        patterns[0].mean(0), offset=-1, dim1=-2, dim2=-1
                    ).mean(-1)
                    log["prev_token"].append(float(prev.max()))
                model.train()
            if step == steps:
                break
            x = repeated_tokens(batch_size, length, vocab_size, g)
            logits, _ = model(x)
            loss = F.cross_entropy(
                logits[:, :-1].reshape(-1, vocab_size), x[:, 1:].reshape(-1)
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
    log["seconds"] = time.perf_counter() - t0
    log["model"], log["probe"] = model, probe
    return log
