"""Chapter 14 - Multimodal models: ViT, CLIP and a LLaVA-style captioner.

Reference solutions. The docstrings of the exercise functions are the specification the
learner reads; their bodies are the reference solution. Layouts follow Hugging Face: a
ViT patch projection is a Conv2d weight (D, C, p, p) with a bias (D,), the class token
is (1, 1, D), the position table (1, 1 + P, D) with the class token's position first;
CLIP's logit_scale is the log of the inverse temperature; LLaVA's projector is
linear_2(gelu(linear_1(x))) on the patch features, the class token dropped.
The rest is PROVIDED: generated images of shapes with their captions, a tiny CLIP and a
tiny captioner, their training loops and their evaluation.
"""
from __future__ import annotations

import itertools
import math
import time
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm


# --------------------------------------------------------------------------------------
# Exercise: cutting an image into patches
# --------------------------------------------------------------------------------------
def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """Cut images into non-overlapping square patches, each flattened to a vector.

    images: (B, C, H, W), H and W multiples of ``patch``.
    Returns (B, P, C * patch * patch), P = (H / patch) * (W / patch). The patches come
    in row-major order (left to right along the top row of patches, then the next
    row); inside a patch the values are ordered (channel, row, column), the order in
    which a Conv2d kernel is flattened.
    """
    B, C, H, W = images.shape
    gh, gw = H // patch, W // patch
    x = images.reshape(B, C, gh, patch, gw, patch)  # rows and columns -> (grid, inside)
    x = x.permute(0, 2, 4, 1, 3, 5)                 # (B, gh, gw, C, p, p): grid first
    return x.reshape(B, gh * gw, C * patch * patch)


# --------------------------------------------------------------------------------------
# Exercise: the ViT embeddings (patches, class token, positions)
# --------------------------------------------------------------------------------------
def vit_embeddings(pixel_values: torch.Tensor, patch_weight: torch.Tensor,
                   patch_bias: torch.Tensor, cls_token: torch.Tensor,
                   position_embeddings: torch.Tensor) -> torch.Tensor:
    """The input sequence of a Vision Transformer.

    pixel_values: (B, C, H, W); patch_weight: (D, C, p, p) and patch_bias: (D,), the
    patch projection (a Conv2d with kernel = stride = p); cls_token: (1, 1, D);
    position_embeddings: (1, 1 + P, D), the class token's position first.
    Project every patch (``patchify``, then a linear map with the weight flattened to
    (D, C p p)), put the class token IN FRONT of the P patch embeddings, then add the
    positions to all 1 + P rows. Returns (B, 1 + P, D).
    """
    B = pixel_values.shape[0]
    D, p = patch_weight.shape[0], patch_weight.shape[-1]
    patches = patchify(pixel_values, p)                          # (B, P, C p p)
    x = patches @ patch_weight.reshape(D, -1).T + patch_bias     # (B, P, D)
    cls = cls_token.expand(B, -1, -1).to(x.dtype)                # one per image
    x = torch.cat([cls, x], dim=1)                               # (B, 1 + P, D)
    return x + position_embeddings


# --------------------------------------------------------------------------------------
# Exercise: position embeddings for another image size
# --------------------------------------------------------------------------------------
def interpolate_pos_encoding(position_embeddings: torch.Tensor, grid_h: int,
                             grid_w: int) -> torch.Tensor:
    """Resize a square grid of learned positions to grid_h x grid_w patches.

    position_embeddings: (1, 1 + g * g, D) for a g x g grid, the class token's row
    first. Keep the class token's row as it is; view the other g * g rows as a
    D-channel image of g x g pixels, resize it to (grid_h, grid_w) by bicubic
    interpolation (align_corners=False) and flatten it back, row-major. When the grid
    is already g x g, return the positions unchanged.
    Returns (1, 1 + grid_h * grid_w, D).
    """
    n, D = position_embeddings.shape[1] - 1, position_embeddings.shape[2]
    g = math.isqrt(n)
    if (grid_h, grid_w) == (g, g):
        return position_embeddings
    cls_pos, grid = position_embeddings[:, :1], position_embeddings[:, 1:]
    grid = grid.reshape(1, g, g, D).permute(0, 3, 1, 2)              # (1, D, g, g)
    grid = F.interpolate(grid, size=(grid_h, grid_w), mode="bicubic",
                         align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, D)   # row-major again
    return torch.cat([cls_pos, grid], dim=1)


# --------------------------------------------------------------------------------------
# Exercise: CLIP's contrastive loss
# --------------------------------------------------------------------------------------
def clip_loss(image_embeds: torch.Tensor, text_embeds: torch.Tensor,
              logit_scale: torch.Tensor):
    """CLIP's symmetric contrastive loss with a learned temperature.

    image_embeds: (N, E) and text_embeds: (N, E), not normalised; row i of each is a
    matching pair. logit_scale: a 0-dim tensor, the LOG of the inverse temperature
    (CLIP starts it at ln(1 / 0.07)); it is trained, so keep it in the graph.
    Normalise both to unit length; logits_per_image = exp(logit_scale) * img @ txt.T
    (N, N). The loss is the mean of two cross-entropies with the answer on the
    diagonal: over each row (an image picks its text) and over each column (a text
    picks its image). Returns (loss, logits_per_image): 0-dim and (N, N).
    """
    img = image_embeds / image_embeds.norm(dim=-1, keepdim=True)
    txt = text_embeds / text_embeds.norm(dim=-1, keepdim=True)
    logits = logit_scale.exp() * img @ txt.T                # (N images, N texts)
    target = torch.arange(logits.shape[0], device=logits.device)
    per_image = F.cross_entropy(logits, target)            # each image picks a text
    per_text = F.cross_entropy(logits.T, target)           # each text picks an image
    return (per_image + per_text) / 2, logits


# --------------------------------------------------------------------------------------
# Exercise: LLaVA's projector
# --------------------------------------------------------------------------------------
def project_image_features(vision_hidden: torch.Tensor, w1: torch.Tensor,
                           b1: torch.Tensor, w2: torch.Tensor,
                           b2: torch.Tensor) -> torch.Tensor:
    """Turn a vision encoder's output into tokens the language model can read.

    vision_hidden: (n_images, 1 + P, Dv), the class token's row first. Drop the class
    token (LLaVA's "default" feature selection keeps the P patches), then apply the
    two-layer projector: w1 (D, Dv), b1 (D,), GELU (exact, erf form), w2 (D, D),
    b2 (D,). Returns (n_images, P, D), in the language model's width D.
    """
    patches = vision_hidden[:, 1:]                  # the class token is not passed on
    return F.linear(F.gelu(F.linear(patches, w1, b1)), w2, b2)


# --------------------------------------------------------------------------------------
# Exercise: writing image features at the placeholder tokens
# --------------------------------------------------------------------------------------
def merge_image_features(input_ids: torch.Tensor, inputs_embeds: torch.Tensor,
                         image_features: torch.Tensor,
                         image_token_id: int) -> torch.Tensor:
    """Replace the embeddings of the image placeholders by the image features.

    input_ids: (B, T) int64, each image written as P copies of ``image_token_id``;
    inputs_embeds: (B, T, D), the embeddings of input_ids; image_features:
    (n_images, P, D), in the order their placeholders appear (row 0 of the batch
    first, left to right). The k-th placeholder of the batch in that order receives
    row k of image_features.reshape(-1, D). A row may hold no image or several.
    Return a NEW (B, T, D) tensor; every other position keeps its embedding.
    """
    mask = input_ids == image_token_id                         # (B, T)
    out = inputs_embeds.clone()
    flat = image_features.reshape(-1, image_features.shape[-1])
    out[mask] = flat.to(out.dtype)               # boolean indexing is row-major order
    return out


# --------------------------------------------------------------------------------------
# Provided: images of shapes and their captions
# --------------------------------------------------------------------------------------
SIZES = ("small", "large")
COLOURS = ("red", "green", "blue", "yellow", "purple")
SHAPES = ("circle", "square", "triangle", "cross")
POSITIONS = ("top left", "top right", "bottom left", "bottom right")
ATTRIBUTES = ("size", "colour", "shape", "position")
RGB = torch.tensor([[0.90, 0.15, 0.15], [0.15, 0.75, 0.20], [0.20, 0.35, 0.95],
                    [0.95, 0.85, 0.10], [0.65, 0.20, 0.80]])
VOCAB = ("<pad>", "<bos>", "<image>", "<eos>", "describe:", "a", "at", "the", *SIZES,
         *COLOURS, *SHAPES, "top", "bottom", "left", "right")
TOKEN = {w: i for i, w in enumerate(VOCAB)}
PAD = TOKEN["<pad>"]
BOS = TOKEN["<bos>"]
EOS = TOKEN["<eos>"]
IMAGE = TOKEN["<image>"]
DESCRIBE = TOKEN["describe:"]


class Combo(NamedTuple):
    """One scene: indices into SIZES, COLOURS, SHAPES and POSITIONS."""
    size: int
    colour: int
    shape: int
    position: int


def caption(combo: Combo) -> str:
    """'a small red circle at the top left': eight words, always in this order."""
    return (f"a {SIZES[combo.size]} {COLOURS[combo.colour]} {SHAPES[combo.shape]} "
            f"at the {POSITIONS[combo.position]}")


def all_combos() -> list[Combo]:
    ranges = (range(len(SIZES)), range(len(COLOURS)), range(len(SHAPES)),
              range(len(POSITIONS)))
    return [Combo(*c) for c in itertools.product(*ranges)]


def is_held_out(combo: Combo) -> bool:
    """Four (shape, colour) pairs never shown in training: one per shape."""
    return (combo.shape + combo.colour) % len(COLOURS) == 0


def split_combos() -> tuple[list[Combo], list[Combo]]:
    """(seen, unseen): 128 captions to train on, 32 with a held-out pair."""
    combos = all_combos()
    return ([c for c in combos if not is_held_out(c)],
            [c for c in combos if is_held_out(c)])


def caption_ids(combos: list[Combo]) -> torch.Tensor:
    """(N, 10) token ids: <bos>, the eight words, <eos>."""
    return torch.tensor([[BOS, *(TOKEN[w] for w in caption(c).split()), EOS]
                         for c in combos])


def render(combos: list[Combo], image_size: int = 32,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw one image per scene: (N, 3, S, S) floats in [0, 1].

    A dark, slightly noisy background; the shape in its quadrant, with its centre,
    radius and colour jittered. The geometry is relative to the image size, so any
    size draws the same scene.
    """
    g = generator or torch.Generator().manual_seed(0)
    N, S = len(combos), image_size
    t = torch.tensor(combos, dtype=torch.float32).reshape(N, 4)
    size, colour, shape, pos = t[:, 0], t[:, 1].long(), t[:, 2].long(), t[:, 3]
    u = S / 32.0                                   # one pixel of the 32 x 32 design

    def jitter(scale):
        return (torch.rand(N, generator=g) - 0.5) * scale * u

    cx = torch.where(pos % 2 == 0, 8.0, 24.0) * u + jitter(4)
    cy = torch.where(pos < 2, 8.0, 24.0) * u + jitter(4)
    r = (torch.where(size == 0, 3.8, 6.8) * u + jitter(0.8))[:, None, None]
    coords = torch.arange(S, dtype=torch.float32) + 0.5
    dx = coords[None, None, :] - cx[:, None, None]                # (N, 1, S)
    dy = coords[None, :, None] - cy[:, None, None]                # (N, S, 1)
    circle = dx ** 2 + dy ** 2 <= r ** 2
    square = (dx.abs() <= 0.85 * r) & (dy.abs() <= 0.85 * r)
    triangle = (dy >= -r) & (dy <= 0.8 * r) & (dx.abs() <= (dy + r) / 1.8)
    cross = (((dx.abs() <= r / 3) & (dy.abs() <= r))
             | ((dy.abs() <= r / 3) & (dx.abs() <= r)))
    masks = torch.stack(torch.broadcast_tensors(circle, square, triangle, cross), 1)
    mask = masks[torch.arange(N), shape].float()[:, None]          # (N, 1, S, S)
    rgb = (RGB[colour] + (torch.rand(N, 3, generator=g) - 0.5) * 0.1).clamp(0, 1)
    background = (0.1 + 0.05 * torch.rand(N, 1, 1, 1, generator=g)
                  + 0.03 * torch.randn(N, 3, S, S, generator=g))
    img = background * (1 - mask) + rgb[:, :, None, None] * mask
    return img.clamp(0, 1)


def normalise_pixels(img: torch.Tensor) -> torch.Tensor:
    return (img - 0.3) / 0.3


class ShapeData(NamedTuple):
    pixels: torch.Tensor    # (N, 3, S, S), normalised
    ids: torch.Tensor       # (N, 10) caption ids
    combo: torch.Tensor     # (N, 4) attribute indices: size, colour, shape, position


def make_data(combos: list[Combo], copies: int, image_size: int = 32,
              seed: int = 0) -> ShapeData:
    """``copies`` images of every scene: copy 0 of every scene, then copy 1, ..."""
    g = torch.Generator().manual_seed(seed)
    rows = combos * copies
    pixels = normalise_pixels(render(rows, image_size, g))
    return ShapeData(pixels, caption_ids(rows), torch.tensor(rows))


# --------------------------------------------------------------------------------------
# Provided: a tiny Transformer, a tiny CLIP and a tiny LLaVA-style captioner
# --------------------------------------------------------------------------------------
def default_parts() -> dict:
    """The chapter's components; the notebook passes the learner's instead."""
    return {"vit_embeddings": vit_embeddings,
            "interpolate_pos_encoding": interpolate_pos_encoding,
            "clip_loss": clip_loss, "project_image_features": project_image_features,
            "merge_image_features": merge_image_features}


class Block(nn.Module):
    """A pre-norm Transformer block: causal for text, bidirectional for images."""

    def __init__(self, d: int, n_head: int, causal: bool):
        super().__init__()
        self.n_head, self.causal = n_head, causal
        self.ln_1, self.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc, self.out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(self.ln_1(x)).split(D, dim=-1)
        q, k, v = (t.view(B, T, self.n_head, -1).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, D))
        return x + self.out(F.gelu(self.fc(self.ln_2(x))))


class TinyCLIPConfig(NamedTuple):
    image_size: int = 32
    patch: int = 8
    width: int = 64          # both towers
    n_layer: int = 2         # per tower
    n_head: int = 4
    embed_dim: int = 64      # the shared embedding space
    vocab_size: int = len(VOCAB)
    text_len: int = 10


class TinyViT(nn.Module):
    """A ViT: patch projection, class token, learned positions, bidirectional blocks."""

    def __init__(self, cfg: TinyCLIPConfig, parts: dict):
        super().__init__()
        self.parts, self.patch = parts, cfg.patch
        D, n = cfg.width, (cfg.image_size // cfg.patch) ** 2
        fan_in = 3 * cfg.patch ** 2
        self.patch_weight = nn.Parameter(torch.randn(D, 3, cfg.patch, cfg.patch)
                                         * fan_in ** -0.5)
        self.patch_bias = nn.Parameter(torch.zeros(D))
        self.cls_token = nn.Parameter(torch.randn(1, 1, D) * 0.02)
        self.position_embeddings = nn.Parameter(torch.randn(1, 1 + n, D) * 0.02)
        self.ln_pre = nn.LayerNorm(D)
        self.blocks = nn.ModuleList(Block(D, cfg.n_head, causal=False)
                                    for _ in range(cfg.n_layer))
        self.ln_post = nn.LayerNorm(D)

    def forward(self, pixels: torch.Tensor, final_norm: bool = True) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 1 + P, D); another size than the trained one gets
        interpolated positions. ``final_norm=False``: the last block's raw output."""
        gh, gw = pixels.shape[2] // self.patch, pixels.shape[3] // self.patch
        pos = self.parts["interpolate_pos_encoding"](self.position_embeddings, gh, gw)
        x = self.parts["vit_embeddings"](pixels, self.patch_weight, self.patch_bias,
                                         self.cls_token, pos)
        x = self.ln_pre(x)
        for block in self.blocks:
            x = block(x)
        return self.ln_post(x) if final_norm else x


class TextEncoder(nn.Module):
    """CLIP's text tower: causal blocks; a caption is read at its <eos> token."""

    def __init__(self, cfg: TinyCLIPConfig):
        super().__init__()
        self.tok = nn.Embedding(cfg.vocab_size, cfg.width)
        self.pos = nn.Parameter(torch.randn(1, cfg.text_len, cfg.width) * 0.02)
        self.blocks = nn.ModuleList(Block(cfg.width, cfg.n_head, causal=True)
                                    for _ in range(cfg.n_layer))
        self.ln_final = nn.LayerNorm(cfg.width)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.tok(ids) + self.pos[:, :ids.shape[1]]
        for block in self.blocks:
            x = block(x)
        eos = (ids == EOS).int().argmax(dim=1)          # the first <eos> of each row
        return self.ln_final(x)[torch.arange(len(ids)), eos]


class TinyCLIP(nn.Module):
    """Two towers and two projections into one space, and a learned temperature."""

    def __init__(self, cfg: TinyCLIPConfig, parts: dict):
        super().__init__()
        self.cfg, self.parts = cfg, parts
        self.vision, self.text = TinyViT(cfg, self.parts), TextEncoder(cfg)
        self.visual_projection = nn.Linear(cfg.width, cfg.embed_dim, bias=False)
        self.text_projection = nn.Linear(cfg.width, cfg.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, E), not normalised: the class token's output,
        projected."""
        return self.visual_projection(self.vision(pixels)[:, 0])

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        return self.text_projection(self.text(ids))

    def forward(self, pixels: torch.Tensor, ids: torch.Tensor):
        return self.parts["clip_loss"](self.encode_image(pixels), self.encode_text(ids),
                                       self.logit_scale)


def n_params(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters()
               if p.requires_grad or not trainable_only)


def warmup_cosine(opt, steps: int, warmup: int = 30):
    def factor(s):
        cosine = 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
        return min(1.0, (s + 1) / warmup) * cosine
    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def train_clip(model: TinyCLIP, data: ShapeData, steps: int, lr: float = 2e-3,
               seed: int = 0, desc: str = "CLIP") -> dict:
    """AdamW, warm-up then cosine decay, on one CPU thread (faster for matrices this
    small, and steady on a busy machine). Every batch holds each training caption once,
    with a random one of its images, so no two texts of a batch are the same. As in
    CLIP, logit_scale is clamped at ln(100) after each step."""
    n_captions = len(set(map(tuple, data.combo.tolist())))
    copies = len(data.ids) // n_captions
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = warmup_cosine(opt, steps)
    hist = {"loss": [], "scale": []}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    try:
        for _ in tqdm(range(steps), desc=desc, leave=False):
            pick = (torch.randint(copies, (n_captions,), generator=g) * n_captions
                    + torch.arange(n_captions))
            loss, _ = model(data.pixels[pick], data.ids[pick])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                model.logit_scale.clamp_(max=math.log(100))
            hist["loss"].append(loss.item())
            hist["scale"].append(model.logit_scale.exp().item())
    finally:
        torch.set_num_threads(threads)
    hist["seconds"] = time.perf_counter() - t0
    return hist


@torch.no_grad()
def similarity(model: TinyCLIP, pixels: torch.Tensor,
               ids: torch.Tensor) -> torch.Tensor:
    """Cosine similarities (N_images, N_texts) in the shared space."""
    was = model.training
    model.eval()
    img = F.normalize(model.encode_image(pixels), dim=-1)
    txt = F.normalize(model.encode_text(ids), dim=-1)
    model.train(was)
    return img @ txt.T


def attribute_accuracy(predicted: torch.Tensor, truth: torch.Tensor) -> dict:
    """Accuracy of predicted (N, 4) attribute indices, per attribute and all four."""
    hit = predicted == truth
    out = {name: hit[:, i].float().mean().item() for i, name in enumerate(ATTRIBUTES)}
    out["all four"] = hit.all(dim=1).float().mean().item()
    return out


def zero_shot(model: TinyCLIP, data: ShapeData,
              combos: list[Combo]) -> tuple[dict, torch.Tensor]:
    """Classify each image among the captions of ``combos`` (the most similar wins):
    the accuracies and the predicted attributes (N, 4)."""
    sim = similarity(model, data.pixels, caption_ids(combos))
    predicted = torch.tensor(combos)[sim.argmax(dim=1)]
    return attribute_accuracy(predicted, data.combo), predicted


def recall_at(sim: torch.Tensor, ks=(1, 5)) -> dict:
    """Retrieval with the right match on the diagonal of sim (N, N): image -> text
    searches a row, text -> image a column. R@k: the right one is among the top k."""
    out = {}
    for direction, s in (("image -> text", sim), ("text -> image", sim.T)):
        rank = (s > s.diagonal()[:, None]).sum(dim=1)   # how many beat the right one
        for k in ks:
            out[f"{direction} R@{k}"] = (rank < k).float().mean().item()
    return out


# -- the captioner ---------------------------------------------------------------------
class CaptionerConfig(NamedTuple):
    width: int = 64
    n_layer: int = 2
    n_head: int = 4
    vocab_size: int = len(VOCAB)
    max_len: int = 32


def captioner_prompt(n_patches: int) -> list[int]:
    """<bos>, one <image> placeholder per patch, 'describe:'; the caption follows."""
    return [BOS] + [IMAGE] * n_patches + [DESCRIBE]


class Captioner(nn.Module):
    """LLaVA in miniature: a frozen vision tower, a trained projector, a small causal
    language model. The image's patch features are projected to the LM's width and
    written at the <image> placeholders of the prompt; the LM continues with words."""

    def __init__(self, vision: TinyViT, cfg: CaptionerConfig, parts: dict,
                 n_patches: int = 16):
        super().__init__()
        self.cfg, self.parts, self.n_patches = cfg, parts, n_patches
        self.vision = vision
        for p in self.vision.parameters():
            p.requires_grad_(False)
        Dv, D = vision.ln_post.normalized_shape[0], cfg.width
        self.w1 = nn.Parameter(torch.randn(D, Dv) * Dv ** -0.5)
        self.b1 = nn.Parameter(torch.zeros(D))
        self.w2 = nn.Parameter(torch.randn(D, D) * D ** -0.5)
        self.b2 = nn.Parameter(torch.zeros(D))
        self.tok = nn.Embedding(cfg.vocab_size, D)
        self.pos = nn.Parameter(torch.randn(1, cfg.max_len, D) * 0.02)
        self.blocks = nn.ModuleList(Block(D, cfg.n_head, causal=True)
                                    for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(D)
        self.head = nn.Linear(D, cfg.vocab_size, bias=False)

    @torch.no_grad()
    def vision_hidden(self, pixels: torch.Tensor, chunk: int = 512) -> torch.Tensor:
        """The frozen tower's output (B, 1 + P, Dv), computed once per image."""
        was = self.vision.training
        self.vision.eval()
        out = torch.cat([self.vision(pixels[i:i + chunk], final_norm=False)
                         for i in range(0, len(pixels), chunk)])
        self.vision.train(was)
        return out

    def image_tokens(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, 1 + P, Dv) -> (B, P, D): the projector, the image path's trained part."""
        return self.parts["project_image_features"](hidden, self.w1, self.b1,
                                                    self.w2, self.b2)

    def forward(self, ids: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """ids (B, T) with the placeholders; features (B, P, D) -> logits (B, T, V)."""
        x = self.parts["merge_image_features"](ids, self.tok(ids), features, IMAGE)
        x = x + self.pos[:, :ids.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))

    @torch.no_grad()
    def generate(self, pixels: torch.Tensor, n_words: int = 8) -> torch.Tensor:
        """Greedy decoding of n_words tokens after the prompt: (B, n_words) ids."""
        was = self.training
        self.eval()
        features = self.image_tokens(self.vision_hidden(pixels))
        ids = torch.tensor(captioner_prompt(self.n_patches)).repeat(len(pixels), 1)
        for _ in range(n_words):
            nxt = self(ids, features)[:, -1].argmax(dim=-1, keepdim=True)
            ids = torch.cat([ids, nxt], dim=1)
        self.train(was)
        return ids[:, -n_words:]


def train_captioner(model: Captioner, data: ShapeData, steps: int,
                    batch_size: int = 128,
                    lr: float = 3e-3, seed: int = 0, desc: str = "captioner") -> dict:
    """The next-token loss on the caption's words and <eos> only (the prompt is given,
    not predicted). The vision tower is frozen: its outputs are computed once."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    prompt = torch.tensor(captioner_prompt(model.n_patches))
    trained = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trained, lr=lr, weight_decay=0.01)
    sched = warmup_cosine(opt, steps)
    hist = {"loss": []}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    try:
        hidden = model.vision_hidden(data.pixels)
        for _ in tqdm(range(steps), desc=desc, leave=False):
            pick = torch.randint(len(data.ids), (batch_size,), generator=g)
            words = data.ids[pick, 1:]                       # eight words and <eos>
            ids = torch.cat([prompt.repeat(batch_size, 1), words[:, :-1]], dim=1)
            logits = model(ids, model.image_tokens(hidden[pick]))
            pred = logits[:, len(prompt) - 1:]           # the positions that predict
            loss = F.cross_entropy(pred.reshape(-1, pred.shape[-1]), words.reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            hist["loss"].append(loss.item())
    finally:
        torch.set_num_threads(threads)
    hist["seconds"] = time.perf_counter() - t0
    return hist


def parse_caption(ids: torch.Tensor) -> tuple[int, int, int, int]:
    """Attribute indices read from eight generated words (-1 for an invalid word)."""
    words = [VOCAB[i] for i in ids.tolist()] + [""] * 8

    def find(options, word):
        return options.index(word) if word in options else -1

    return (find(SIZES, words[1]), find(COLOURS, words[2]), find(SHAPES, words[3]),
            find(POSITIONS, f"{words[6]} {words[7]}"))


def decode(ids: torch.Tensor) -> str:
    return " ".join(VOCAB[i] for i in ids.tolist() if i not in (PAD, BOS, EOS))


# --------------------------------------------------------------------------------------
# Provided: the same models in Hugging Face transformers
# --------------------------------------------------------------------------------------
def copy_block(hf_layer, block: Block) -> None:
    """Our fused q|k|v block into a CLIPEncoderLayer (separate q, k, v projections)."""
    attn, D = hf_layer.self_attn, block.proj.in_features
    for i, proj in enumerate((attn.q_proj, attn.k_proj, attn.v_proj)):
        proj.weight.copy_(block.qkv.weight[i * D:(i + 1) * D])
        proj.bias.copy_(block.qkv.bias[i * D:(i + 1) * D])
    pairs = ((attn.out_proj, block.proj), (hf_layer.layer_norm1, block.ln_1),
             (hf_layer.layer_norm2, block.ln_2), (hf_layer.mlp.fc1, block.fc),
             (hf_layer.mlp.fc2, block.out))
    for theirs, ours in pairs:
        theirs.weight.copy_(ours.weight)
        theirs.bias.copy_(ours.bias)


def clip_vision_config(cfg: TinyCLIPConfig) -> dict:
    return dict(image_size=cfg.image_size, patch_size=cfg.patch, num_channels=3,
                hidden_size=cfg.width, intermediate_size=4 * cfg.width,
                num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head,
                hidden_act="gelu")


@torch.no_grad()
def copy_vision(hf_vision, vit: TinyViT) -> None:
    emb = hf_vision.embeddings
    emb.patch_embedding.weight.copy_(vit.patch_weight)
    emb.class_embedding.copy_(vit.cls_token[0, 0])
    # CLIP's patch projection has no bias: a bias added to every patch is the same as
    # a bias added to every patch position.
    pos = vit.position_embeddings[0].clone()
    pos[1:] += vit.patch_bias
    emb.position_embedding.weight.copy_(pos)
    hf_vision.pre_layrnorm.load_state_dict(vit.ln_pre.state_dict())
    hf_vision.post_layernorm.load_state_dict(vit.ln_post.state_dict())
    for layer, block in zip(hf_vision.encoder.layers, vit.blocks):
        copy_block(layer, block)


@torch.no_grad()
def to_hf_clip(model: TinyCLIP):
    """Our TinyCLIP as a transformers CLIPModel with the same weights."""
    from transformers import CLIPConfig, CLIPModel

    cfg = model.cfg
    text = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.width,
                intermediate_size=4 * cfg.width, num_hidden_layers=cfg.n_layer,
                num_attention_heads=cfg.n_head, max_position_embeddings=cfg.text_len,
                hidden_act="gelu", pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS)
    hf = CLIPModel(CLIPConfig(text_config=text, vision_config=clip_vision_config(cfg),
                              projection_dim=cfg.embed_dim)).eval()
    copy_vision(hf.vision_model, model.vision)
    tm = hf.text_model
    tm.embeddings.token_embedding.weight.copy_(model.text.tok.weight)
    tm.embeddings.position_embedding.weight.copy_(model.text.pos[0])
    tm.final_layer_norm.load_state_dict(model.text.ln_final.state_dict())
    for layer, block in zip(tm.encoder.layers, model.text.blocks):
        copy_block(layer, block)
    hf.visual_projection.weight.copy_(model.visual_projection.weight)
    hf.text_projection.weight.copy_(model.text_projection.weight)
    hf.logit_scale.copy_(model.logit_scale)
    return hf


@torch.no_grad()
def to_hf_llava(captioner: Captioner, clip_cfg: TinyCLIPConfig):
    """A transformers LlavaForConditionalGeneration holding our captioner's vision
    tower, projector and token embeddings (its language model is a Llama, not ours)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig
    from transformers import LlavaForConditionalGeneration

    D = captioner.cfg.width
    text = LlamaConfig(vocab_size=captioner.cfg.vocab_size, hidden_size=D,
                       intermediate_size=4 * D, num_hidden_layers=1,
                       num_attention_heads=captioner.cfg.n_head,
                       num_key_value_heads=captioner.cfg.n_head)
    config = LlavaConfig(vision_config=CLIPVisionConfig(**clip_vision_config(clip_cfg)),
                         text_config=text, image_token_id=IMAGE,
                         projector_hidden_act="gelu", vision_feature_layer=-1,
                         vision_feature_select_strategy="default")
    hf = LlavaForConditionalGeneration(config).eval()
    tower = hf.model.vision_tower
    copy_vision(getattr(tower, "vision_model", tower), captioner.vision)
    proj = hf.model.multi_modal_projector
    for layer, w, b in ((proj.linear_1, captioner.w1, captioner.b1),
                        (proj.linear_2, captioner.w2, captioner.b2)):
        layer.weight.copy_(w)
        layer.bias.copy_(b)
    hf.model.language_model.embed_tokens.weight.copy_(captioner.tok.weight)
    return hf
