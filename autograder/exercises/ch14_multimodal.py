"""Chapter 14 - Multimodal models: ViT, CLIP and LLaVA.

References, all independent of the course's solutions (Hugging Face ``transformers``, weights
copied in):
- patches: ``torch.nn.functional.unfold`` (im2col), whose column order is the Conv2d
  kernel's, transposed to one row per patch;
- ViT embeddings: ``ViTEmbeddings`` (patch Conv2d, class token, positions);
- positions for another image size: ``ViTEmbeddings.interpolate_pos_encoding``;
- CLIP's loss: ``CLIPModel(..., return_loss=True)`` on a tiny CLIP (its own towers make the
  features), and ``modeling_clip.image_text_contrastive_loss`` on logits built the way
  ``CLIPModel.forward`` builds them;
- LLaVA's projector: ``LlavaMultiModalProjector`` after the "default" feature selection
  (the class token dropped, as ``LlavaModel.get_image_features`` does);
- the merge: ``LlavaModel.forward`` of a tiny ``LlavaForConditionalGeneration`` given the
  projected features, read where it hands ``inputs_embeds`` to its language model.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from ..core import Case, Exercise, Mistake, close_tensors, hidden_seed, inherit, register
from ..drivers.ch14_multimodal import clip_gradients, compare_clip, compare_gradients, compare_merged

CH = "ch14"
SOL = "solutions.ch14_multimodal"
VIT = "transformers.models.vit.modeling_vit"
CLIP = "transformers.models.clip.modeling_clip"
LLAVA = "transformers.models.llava.modeling_llava"


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _pick(g: torch.Generator, options):
    return options[int(torch.randint(len(options), (1,), generator=g))]


def _silence():
    import warnings

    from transformers.utils import logging

    logging.set_verbosity_error()
    warnings.filterwarnings("ignore", module="transformers")


# ========================================================================================
# patchify
# ========================================================================================
def _patchify_ref(images, p):
    return F.unfold(images, kernel_size=p, stride=p).transpose(1, 2)


def _patchify_cases(hidden: bool):
    specs = [("B=2, C=3, 8x8 image, 4x4 patches", 0, 2, 3, 8, 8, 4),
             ("a wide image: 6x9, 3x3 patches (2 rows of 3)", 1, 1, 3, 6, 9, 3),
             ("32x32, 8x8 patches (the chapter's ViT)", 2, 2, 3, 32, 32, 8),
             ("one patch covers the whole image", 3, 2, 2, 4, 4, 4),
             ("1x1 patches: every pixel is a patch", 4, 1, 3, 3, 2, 1)]
    if hidden:
        for k in range(2):
            g = _gen(hidden_seed("ch14.patchify", k))
            p = _pick(g, [2, 3, 4])
            specs.append((f"hidden case {k + 1}", hidden_seed("ch14.patchify", k, "x"), _pick(g, [1, 3]),
                          _pick(g, [1, 3, 4]), p * _pick(g, [2, 3, 5]), p * _pick(g, [1, 2, 4]), p))
    for name, seed, B, C, H, W, p in specs:
        x = torch.randn(B, C, H, W, generator=_gen(seed))
        yield Case(name, (x, p), expected=lambda x=x, p=p: _patchify_ref(x, p), compare=close_tensors(0, 0))


def _patchify_wrong(kind):
    def fn(images, patch):
        B, C, H, W = images.shape
        gh, gw = H // patch, W // patch
        x = images.reshape(B, C, gh, patch, gw, patch)
        if kind == "column-major":
            return x.permute(0, 4, 2, 1, 3, 5).reshape(B, gh * gw, -1)
        if kind == "channels-last":
            return x.permute(0, 2, 4, 3, 5, 1).reshape(B, gh * gw, -1)
        return images.reshape(B, gh * gw, -1)  # plain-reshape
    return fn


register(Exercise(
    id="ch14.patchify", chapter=CH, title="Cutting an image into patches", points=1, name="patchify",
    signature="patchify(images: Tensor[B, C, H, W], patch: int) -> Tensor[B, (H/p)(W/p), C*p*p]",
    reference="torch.nn.functional.unfold(images, kernel_size=p, stride=p).transpose(1, 2)",
    solution=f"{SOL}:patchify", cases=_patchify_cases,
    forbidden=["torch.nn.functional:unfold", "torch.nn:Unfold"],
    mistakes=[
        Mistake("column-major", "your patches run down the columns first: ViT (and a Conv2d's output, flattened) "
                "reads them row by row, left to right along the top row of patches, then the next row",
                _patchify_wrong("column-major")),
        Mistake("channels-last", "inside a patch your values are ordered (row, column, channel): a Conv2d kernel, "
                "and so ViT's patch projection, flattens them as (channel, row, column)",
                _patchify_wrong("channels-last")),
        Mistake("plain-reshape", "you reshaped the image without moving any axis: consecutive memory is a strip of "
                "one channel's pixels, not a square patch. Split H and W into (grid, inside) and permute the grid "
                "axes to the front", _patchify_wrong("plain-reshape")),
    ]))


# ========================================================================================
# vit_embeddings
# ========================================================================================
@functools.lru_cache(maxsize=None)
def _vit_module(H, W, p, C, D):
    from transformers import ViTConfig
    from transformers.models.vit.modeling_vit import ViTEmbeddings

    _silence()
    cfg = ViTConfig(image_size=(H, W), patch_size=p, num_channels=C, hidden_size=D, hidden_dropout_prob=0.0)
    return ViTEmbeddings(cfg).eval()


def _vit_ref(pixels, weight, bias, cls, pos):
    B, C, H, W = pixels.shape
    emb = _vit_module(H, W, weight.shape[-1], C, weight.shape[0])
    with torch.no_grad():
        emb.patch_embeddings.projection.weight.copy_(weight)
        emb.patch_embeddings.projection.bias.copy_(bias)
        emb.cls_token.copy_(cls)
        emb.position_embeddings.copy_(pos)
        return emb(pixels)


def _vit_inputs(seed, B, C, H, W, p, D):
    g = _gen(seed)
    P = (H // p) * (W // p)
    return (torch.randn(B, C, H, W, generator=g), torch.randn(D, C, p, p, generator=g) / p,
            torch.randn(D, generator=g), torch.randn(1, 1, D, generator=g) + 2.0,
            torch.randn(1, 1 + P, D, generator=g))


def _vit_cases(hidden: bool):
    specs = [("B=2, 8x8 RGB, 4x4 patches, D=10", 0, 2, 3, 8, 8, 4, 10),
             ("32x32, 8x8 patches, D=16 (the chapter's ViT)", 1, 2, 3, 32, 32, 8, 16),
             ("a 2x3 grid of patches (8x12, p=4)", 2, 1, 3, 8, 12, 4, 6),
             ("one channel, one image, 2x2 patches", 3, 1, 1, 6, 6, 2, 5)]
    if hidden:
        for k in range(2):
            g = _gen(hidden_seed("ch14.vit_embeddings", k))
            p = _pick(g, [2, 4])
            specs.append((f"hidden case {k + 1}", hidden_seed("ch14.vit_embeddings", k, "x"), _pick(g, [1, 3]),
                          _pick(g, [1, 3]), p * _pick(g, [2, 3]), p * _pick(g, [2, 4]), p, _pick(g, [4, 8, 12])))
    for name, seed, B, C, H, W, p, D in specs:
        args = _vit_inputs(seed, B, C, H, W, p, D)
        yield Case(name, args, expected=lambda a=args: _vit_ref(*a), compare=close_tensors())


def _vit_compose(patchify_fn, kind=""):
    def fn(pixel_values, patch_weight, patch_bias, cls_token, position_embeddings):
        B = pixel_values.shape[0]
        D, p = patch_weight.shape[0], patch_weight.shape[-1]
        w = patch_weight.permute(0, 2, 3, 1) if kind == "weight-order" else patch_weight
        x = patchify_fn(pixel_values, p) @ w.reshape(D, -1).T + patch_bias
        cls = cls_token.expand(B, -1, -1)
        if kind == "cls-after-positions":
            return torch.cat([cls, x + position_embeddings[:, 1:]], dim=1)
        if kind == "cls-missing":
            return x + position_embeddings[:, 1:]
        if kind == "cls-at-end":
            return torch.cat([x, cls], dim=1) + position_embeddings
        return torch.cat([cls, x], dim=1) + position_embeddings
    return fn


register(Exercise(
    id="ch14.vit_embeddings", chapter=CH, title="The ViT embeddings: patches, class token, positions", points=2,
    name="vit_embeddings", difficulty="**",
    signature="vit_embeddings(pixel_values: Tensor[B, C, H, W], patch_weight: Tensor[D, C, p, p], "
              "patch_bias: Tensor[D], cls_token: Tensor[1, 1, D], position_embeddings: Tensor[1, 1+P, D]) "
              "-> Tensor[B, 1+P, D]",
    reference="transformers ViTEmbeddings (Conv2d patch projection, class token, positions), weights copied",
    solution=f"{SOL}:vit_embeddings", cases=_vit_cases,
    forbidden=[f"{VIT}:ViTEmbeddings", f"{VIT}:ViTPatchEmbeddings"],
    mistakes=[
        Mistake("cls-after-positions", "the class token was added after the positions: it has a position too, row "
                "0 of position_embeddings. Put the class token in front first, then add all 1 + P positions",
                _vit_compose(_patchify_ref, "cls-after-positions")),
        Mistake("cls-missing", "there is no class token: ViT puts a learned [CLS] vector in front of the patches "
                "(its output is what the classifier, or CLIP, reads), so the sequence has 1 + P rows",
                _vit_compose(_patchify_ref, "cls-missing")),
        Mistake("cls-at-end", "the class token went after the patches: it goes in FRONT, at position 0",
                _vit_compose(_patchify_ref, "cls-at-end")),
        Mistake("weight-order", "your patch vectors and your flattened weight disagree on the order inside a patch: "
                "a Conv2d weight (D, C, p, p) flattens as (channel, row, column), so the patches must too",
                _vit_compose(_patchify_ref, "weight-order")),
        *inherit("ch14.patchify", _vit_compose),
    ]))


# ========================================================================================
# interpolate_pos_encoding
# ========================================================================================
def _interp_ref(pos, gh, gw):
    g = math.isqrt(pos.shape[1] - 1)
    p = 4
    emb = _vit_module(g * p, g * p, p, 3, pos.shape[2])
    with torch.no_grad():
        emb.position_embeddings.copy_(pos)
        dummy = torch.zeros(1, 1 + gh * gw, pos.shape[2])
        return emb.interpolate_pos_encoding(dummy, gh * p, gw * p).clone()


def _interp_cases(hidden: bool):
    specs = [("4x4 grid to 6x6, D=8", 0, 4, 8, 6, 6),
             ("2x2 grid to 3x5 (a wide image), D=4", 1, 2, 4, 3, 5),
             ("4x4 to 2x8: as many patches, another shape", 2, 4, 6, 2, 8),
             ("4x4 to 2x2 (a smaller image)", 3, 4, 5, 2, 2),
             ("the trained 3x3 grid: the positions come back unchanged", 4, 3, 6, 3, 3)]
    if hidden:
        for k in range(2):
            g = _gen(hidden_seed("ch14.interpolate_pos_encoding", k))
            specs.append((f"hidden case {k + 1}", hidden_seed("ch14.interpolate_pos_encoding", k, "x"),
                          _pick(g, [2, 3, 4]), _pick(g, [4, 8]), _pick(g, [3, 5, 7]), _pick(g, [2, 6, 9])))
    for name, seed, g0, D, gh, gw in specs:
        pos = torch.randn(1, 1 + g0 * g0, D, generator=_gen(seed))
        yield Case(name, (pos, gh, gw), expected=lambda pos=pos, gh=gh, gw=gw: _interp_ref(pos, gh, gw),
                   compare=close_tensors(1e-5, 1e-4))


def _interp_wrong(kind):
    def fn(position_embeddings, grid_h, grid_w):
        n, D = position_embeddings.shape[1] - 1, position_embeddings.shape[2]
        g = math.isqrt(n)
        cls_pos, grid = position_embeddings[:, :1], position_embeddings[:, 1:]
        if kind == "no-permute":
            grid = grid.reshape(1, D, g, g)
        else:
            grid = grid.reshape(1, g, g, D).permute(0, 3, 1, 2)
        size = (grid_w, grid_h) if kind == "hw-swapped" else (grid_h, grid_w)
        mode = "bilinear" if kind == "bilinear" else "bicubic"
        grid = F.interpolate(grid, size=size, mode=mode, align_corners=kind == "align-corners")
        if kind == "no-permute":
            grid = grid.reshape(1, grid_h * grid_w, D)
        else:
            grid = grid.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, D)
        if kind == "cls-dropped":
            return grid
        return torch.cat([cls_pos, grid], dim=1)
    return fn


register(Exercise(
    id="ch14.interpolate_pos_encoding", chapter=CH, title="Positions for another image size", points=1,
    name="interpolate_pos_encoding",
    signature="interpolate_pos_encoding(position_embeddings: Tensor[1, 1+g*g, D], grid_h: int, grid_w: int) "
              "-> Tensor[1, 1+grid_h*grid_w, D]",
    reference="transformers ViTEmbeddings.interpolate_pos_encoding (bicubic, align_corners=False), positions copied",
    solution=f"{SOL}:interpolate_pos_encoding", cases=_interp_cases,
    forbidden=[f"{VIT}:ViTEmbeddings"],
    mistakes=[
        Mistake("bilinear", "you interpolated bilinearly: ViT (and DINO, where the recipe comes from) uses bicubic "
                "interpolation", _interp_wrong("bilinear")),
        Mistake("align-corners", "align_corners=True stretches the grid so that the corner positions land on the "
                "corners; ViT resizes with align_corners=False (pixel areas, not pixel centres, are matched)",
                _interp_wrong("align-corners")),
        Mistake("no-permute", "you reshaped the (g*g, D) rows straight into a (D, g, g) image: the D features of "
                "one position must become the channels, so reshape to (1, g, g, D) and permute to (1, D, g, g) (and "
                "back after resizing)", _interp_wrong("no-permute")),
        Mistake("hw-swapped", "height and width are swapped: F.interpolate's size is (rows, columns) = "
                "(grid_h, grid_w)", _interp_wrong("hw-swapped")),
        Mistake("cls-dropped", "the class token's position is missing: keep row 0 as it is and put it back in front "
                "of the resized grid", _interp_wrong("cls-dropped")),
    ]))


# ========================================================================================
# clip_loss
# ========================================================================================
@functools.lru_cache(maxsize=None)
def _tiny_clip():
    """A tiny CLIPModel with a chosen temperature, and features made by its own towers."""
    from transformers import CLIPConfig, CLIPModel

    _silence()
    cfg = CLIPConfig(
        text_config=dict(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16, bos_token_id=38, eos_token_id=39,
                         pad_token_id=0),
        vision_config=dict(image_size=16, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2),
        projection_dim=16)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = CLIPModel(cfg).eval()
    g = _gen(14)
    pixels = torch.randn(6, 3, 16, 16, generator=g)
    ids = torch.randint(1, 38, (6, 7), generator=g)
    ids[:, -1] = 39
    with torch.no_grad():
        model.logit_scale.fill_(1.7)
        img = model.get_image_features(pixel_values=pixels).pooler_output
        txt = model.get_text_features(input_ids=ids).pooler_output
        out = model(input_ids=ids, pixel_values=pixels, return_loss=True)
    return (img, txt, model.logit_scale.detach().clone()), (out.loss, out.logits_per_image)


def _clip_model_expected():
    return _tiny_clip()[1]


def _clip_ref(img, txt, scale):
    """CLIPModel.forward's lines, then the library's loss."""
    from transformers.models.clip.modeling_clip import image_text_contrastive_loss

    img = img / img.norm(p=2, dim=-1, keepdim=True)
    txt = txt / txt.norm(p=2, dim=-1, keepdim=True)
    logits_per_text = txt @ img.T * scale.exp()
    return image_text_contrastive_loss(logits_per_text), logits_per_text.T


def _clip_expected(img, txt, scale):
    with torch.no_grad():
        loss, logits = _clip_ref(img.double(), txt.double(), scale.double())
    return loss.float(), logits.float()


def _clip_grads_expected(img, txt, scale):
    i, t, s = (x.double().clone().requires_grad_(True) for x in (img, txt, scale))
    loss, _ = _clip_ref(i, t, s)
    loss.backward()
    return i.grad.float(), t.grad.float(), s.grad.float()


def _clip_inputs(seed, N, E, scale, aligned=0.0):
    g = _gen(seed)
    img = torch.randn(N, E, generator=g) * (0.5 + 3 * torch.rand(N, 1, generator=g))
    txt = torch.randn(N, E, generator=g) * (0.5 + 3 * torch.rand(N, 1, generator=g))
    if aligned:  # matching pairs point the same way, as after training
        txt = txt + aligned * img / img.norm(dim=-1, keepdim=True) * txt.norm(dim=-1, keepdim=True)
    return img, txt, torch.tensor(float(scale))


def _clip_cases(hidden: bool):
    init = math.log(1 / 0.07)
    specs = [("N=4 pairs, E=8, logit_scale = ln(1/0.07) (CLIP's start)", 0, 4, 8, init, 0.0),
             ("N=8, E=16, logit_scale = ln 100 (CLIP's cap), pairs aligned", 1, 8, 16, math.log(100), 2.0),
             ("logit_scale = 0: temperature 1", 2, 5, 6, 0.0, 0.5),
             ("logit_scale = -1: a temperature above 1", 3, 6, 4, -1.0, 1.0),
             ("one pair: the loss is 0", 4, 1, 8, init, 0.0)]
    if hidden:
        for k in range(2):
            g = _gen(hidden_seed("ch14.clip_loss", k))
            specs.append((f"hidden case {k + 1}", hidden_seed("ch14.clip_loss", k, "x"), _pick(g, [3, 7, 16]),
                          _pick(g, [5, 12, 32]), _pick(g, [0.5, 1.5, 3.0, 4.0]), _pick(g, [0.0, 1.0])))
    for name, seed, N, E, scale, aligned in specs:
        args = _clip_inputs(seed, N, E, scale, aligned)
        yield Case(name, args, expected=lambda a=args: _clip_expected(*a), compare=compare_clip, group="loss")
    args, _ = _tiny_clip()
    yield Case("features of a tiny CLIPModel: its loss with return_loss=True", args,
               expected=_clip_model_expected, compare=compare_clip, group="loss")
    # Where the loss is not saturated, so that the temperature's gradient is far from 0.
    for name, seed, N, E, scale, aligned in [specs[0], specs[2], specs[3]] + specs[5:]:
        args = _clip_inputs(seed, N, E, scale, aligned)
        yield Case(f"gradients: {name}", args, expected=lambda a=args: _clip_grads_expected(*a),
                   run=clip_gradients, compare=compare_gradients, group="gradients")


def _clip_wrong(kind):
    def fn(image_embeds, text_embeds, logit_scale):
        img, txt = image_embeds, text_embeds
        if kind != "not-normalised":
            img = img / img.norm(dim=-1, keepdim=True)
            txt = txt / txt.norm(dim=-1, keepdim=True)
        sims = img @ txt.T
        if kind == "scale-detached":
            logit_scale = logit_scale.detach()
        if kind == "divided":
            logits = sims / logit_scale.exp()
        elif kind == "not-exponentiated":
            logits = sims * logit_scale
        else:
            logits = sims * logit_scale.exp()
        target = torch.arange(len(logits))
        per_image, per_text = F.cross_entropy(logits, target), F.cross_entropy(logits.T, target)
        if kind == "one-direction":
            return per_image, logits
        if kind == "text-direction":
            return per_text, logits
        if kind == "summed":
            return per_image + per_text, logits
        return (per_image + per_text) / 2, logits
    return fn


register(Exercise(
    id="ch14.clip_loss", chapter=CH, title="CLIP's contrastive loss with a learned temperature", points=2,
    name="clip_loss", difficulty="**",
    signature="clip_loss(image_embeds: Tensor[N, E], text_embeds: Tensor[N, E], logit_scale: Tensor[]) "
              "-> (loss: Tensor[], logits_per_image: Tensor[N, N])",
    reference="transformers CLIPModel(return_loss=True) on a tiny CLIP, and modeling_clip."
              "image_text_contrastive_loss on CLIPModel.forward's logits (gradients by autograd, float64)",
    solution=f"{SOL}:clip_loss", cases=_clip_cases,
    forbidden=[f"{CLIP}:image_text_contrastive_loss", f"{CLIP}:contrastive_loss", f"{CLIP}:CLIPModel"],
    mistakes=[
        Mistake("one-direction", "your loss only lets each image pick its text (cross-entropy over the rows): CLIP's "
                "loss is symmetric, the mean of that and of each text picking its image (over the columns)",
                _clip_wrong("one-direction")),
        Mistake("text-direction", "your loss only lets each text pick its image (the columns): add the rows' "
                "cross-entropy, each image picking its text, and take the mean of the two",
                _clip_wrong("text-direction")),
        Mistake("summed", "you added the two directions: CLIP takes their MEAN, (image loss + text loss) / 2",
                _clip_wrong("summed")),
        Mistake("divided", "you divided by exp(logit_scale): logit_scale is the log of the INVERSE temperature, so "
                "the similarities are MULTIPLIED by exp(logit_scale) (about 14.3 at the start, at most 100)",
                _clip_wrong("divided")),
        Mistake("not-exponentiated", "you multiplied by logit_scale itself: it is a logarithm (so that it stays "
                "positive while trained), multiply by exp(logit_scale)", _clip_wrong("not-exponentiated")),
        Mistake("scale-detached", "the loss is right but no gradient reaches logit_scale: the temperature is "
                "learned, so compute with logit_scale.exp() (a tensor in the graph), not math.exp(logit_scale.item()) "
                "or a detached copy", _clip_wrong("scale-detached")),
        Mistake("not-normalised", "the embeddings were not normalised: CLIP compares directions, so divide each row "
                "by its L2 norm before the dot products (the logits are then cosines times the scale)",
                _clip_wrong("not-normalised")),
    ]))


# ========================================================================================
# project_image_features
# ========================================================================================
@functools.lru_cache(maxsize=None)
def _llava(Dv, D, V=64, image_token_id=63):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    _silence()
    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(image_size=16, patch_size=8, hidden_size=Dv, intermediate_size=2 * Dv,
                                       num_hidden_layers=1, num_attention_heads=2),
        text_config=LlamaConfig(vocab_size=V, hidden_size=D, intermediate_size=2 * D, num_hidden_layers=1,
                                num_attention_heads=1, num_key_value_heads=1),
        image_token_id=image_token_id, projector_hidden_act="gelu")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return LlavaForConditionalGeneration(cfg).eval()


def _project_ref(hidden, w1, b1, w2, b2):
    model = _llava(hidden.shape[-1], w1.shape[0])
    proj = model.model.multi_modal_projector
    with torch.no_grad():
        for layer, w, b in ((proj.linear_1, w1, b1), (proj.linear_2, w2, b2)):
            layer.weight.copy_(w)
            layer.bias.copy_(b)
        # vision_feature_select_strategy="default": LlavaModel.get_image_features drops the class token
        return proj(hidden[:, 1:])


def _project_inputs(seed, n, P, Dv, D):
    g = _gen(seed)
    return (torch.randn(n, 1 + P, Dv, generator=g), torch.randn(D, Dv, generator=g) / math.sqrt(Dv),
            torch.randn(D, generator=g), torch.randn(D, D, generator=g) / math.sqrt(D), torch.randn(D, generator=g))


def _project_cases(hidden: bool):
    specs = [("2 images, 4 patches, Dv=8 -> D=12", 0, 2, 4, 8, 12),
             ("1 image, 16 patches (the chapter's captioner), 64 -> 64", 1, 1, 16, 64, 64),
             ("3 images, 1 patch each, Dv=6 -> D=4", 2, 3, 1, 6, 4)]
    if hidden:
        for k in range(2):
            g = _gen(hidden_seed("ch14.project_image_features", k))
            specs.append((f"hidden case {k + 1}", hidden_seed("ch14.project_image_features", k, "x"),
                          _pick(g, [1, 2, 5]), _pick(g, [3, 9]), _pick(g, [4, 10]), _pick(g, [6, 8])))
    for name, seed, n, P, Dv, D in specs:
        args = _project_inputs(seed, n, P, Dv, D)
        yield Case(name, args, expected=lambda a=args: _project_ref(*a), compare=close_tensors(1e-5, 1e-4))


def _project_wrong(kind):
    def fn(vision_hidden, w1, b1, w2, b2):
        h = vision_hidden if kind == "kept-cls" else (vision_hidden[:, :-1] if kind == "dropped-last"
                                                       else vision_hidden[:, 1:])
        z = F.linear(h, w1, b1)
        z = {"tanh-gelu": lambda t: F.gelu(t, approximate="tanh"), "relu": F.relu,
             "no-activation": lambda t: t}.get(kind, F.gelu)(z)
        return F.linear(z, w2, b2)
    return fn


register(Exercise(
    id="ch14.project_image_features", chapter=CH, title="LLaVA's projector", points=1,
    name="project_image_features",
    signature="project_image_features(vision_hidden: Tensor[n, 1+P, Dv], w1: Tensor[D, Dv], b1: Tensor[D], "
              "w2: Tensor[D, D], b2: Tensor[D]) -> Tensor[n, P, D]",
    reference="transformers LlavaMultiModalProjector (projector_hidden_act='gelu'), weights copied, after the "
              "'default' feature selection that drops the class token",
    solution=f"{SOL}:project_image_features", cases=_project_cases,
    forbidden=[f"{LLAVA}:LlavaMultiModalProjector"],
    mistakes=[
        Mistake("kept-cls", "the class token was kept: LLaVA's default feature selection passes only the P patch "
                "features (drop row 0), so an image is P tokens", _project_wrong("kept-cls")),
        Mistake("dropped-last", "you dropped the LAST row: the class token is row 0", _project_wrong("dropped-last")),
        Mistake("tanh-gelu", "you used the tanh approximation of GELU: LLaVA's projector uses the exact one, "
                "x * Phi(x) with the normal CDF (F.gelu's default)", _project_wrong("tanh-gelu")),
        Mistake("relu", "the activation is a ReLU: LLaVA's projector uses GELU", _project_wrong("relu")),
        Mistake("no-activation", "there is no activation between the two linear layers: without it they collapse "
                "into one linear map. Apply GELU after the first", _project_wrong("no-activation")),
    ]))


# ========================================================================================
# merge_image_features
# ========================================================================================
IMAGE_ID = 63


def _merge_ref(ids, table, feats):
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    model = _llava(8, table.shape[1], V=table.shape[0], image_token_id=IMAGE_ID)
    seen = {}

    def grab(module, args, kwargs):
        seen["inputs_embeds"] = kwargs["inputs_embeds"].detach().clone()

    handle = model.model.language_model.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            model.model.language_model.embed_tokens.weight.copy_(table)
            model.model(input_ids=ids, attention_mask=torch.ones_like(ids),
                        mm_encoder_outputs={"image": BaseModelOutputWithPooling(pooler_output=list(feats))})
    finally:
        handle.remove()
    return seen["inputs_embeds"]


def _layout(g, rows, T, P, images_per_row):
    """Token ids (B, T) with ``images_per_row[b]`` blocks of P placeholders at random places."""
    ids = torch.randint(0, IMAGE_ID, (rows, T), generator=g)
    for b, k in enumerate(images_per_row):
        free = T - k * P                          # text tokens around the images
        cuts = sorted(int(c) for c in torch.randint(0, free + 1, (k,), generator=g))
        for j, c in enumerate(cuts):
            start = c + j * P
            ids[b, start:start + P] = IMAGE_ID
    return ids


def _merge_inputs(seed, T, P, D, per_row, fixed=None):
    g = _gen(seed)
    ids = fixed if fixed is not None else _layout(g, len(per_row), T, P, per_row)
    table = torch.randn(IMAGE_ID + 1, D, generator=g)
    n = int((ids == IMAGE_ID).sum()) // P
    feats = torch.randn(n, P, D, generator=g) + 3.0
    return ids, table, feats


def _merge_cases(hidden: bool):
    one = torch.tensor([[1, 2, IMAGE_ID, IMAGE_ID, IMAGE_ID, IMAGE_ID, 5, 6]])
    specs = [("one row: a prompt, one image of 4 patches, more text", 0, 8, 4, 6, None, one),
             ("3 rows: one image, no image, two images", 1, 14, 3, 6, [1, 0, 2], None),
             ("two rows of two images each, 1 patch per image", 2, 6, 1, 4, [2, 2], None),
             ("images at the very start and the very end of a row", 3, 9, 2, 4, None,
              torch.tensor([[IMAGE_ID, IMAGE_ID, 7, 8, 9, 10, 11, IMAGE_ID, IMAGE_ID]])),
             ("a batch without any image: nothing changes", 4, 5, 2, 4, None, torch.tensor([[1, 2, 3, 4, 5]] * 2))]
    if hidden:
        for k in range(3):
            g = _gen(hidden_seed("ch14.merge_image_features", k))
            rows = _pick(g, [2, 3, 4])
            per_row = [int(torch.randint(0, 3, (1,), generator=g)) for _ in range(rows)]
            per_row[int(torch.randint(rows, (1,), generator=g))] = 2   # at least one row with two images
            P = _pick(g, [2, 3, 5])
            specs.append((f"hidden case {k + 1}", hidden_seed("ch14.merge_image_features", k, "x"),
                          2 * P + _pick(g, [3, 6, 10]), P, _pick(g, [4, 8]), per_row, None))
    for name, seed, T, P, D, per_row, fixed in specs:
        ids, table, feats = _merge_inputs(seed, T, P, D, per_row, fixed)
        if feats.shape[0] == 0:
            feats = torch.zeros(0, P, D)
        yield Case(name, (ids, table[ids], feats, IMAGE_ID),
                   expected=lambda i=ids, t=table, f=feats: _merge_ref(i, t, f) if len(f) else t[i],
                   compare=compare_merged)


def _merge_wrong(kind):
    def fn(input_ids, inputs_embeds, image_features, image_token_id):
        out = inputs_embeds.clone()
        mask = input_ids == image_token_id
        D = image_features.shape[-1]
        if kind == "added":
            out[mask] = out[mask] + image_features.reshape(-1, D)
        elif kind == "patch-major":
            out[mask] = image_features.transpose(0, 1).reshape(-1, D)
        elif kind == "column-order":
            t = out.transpose(0, 1).clone()
            t[mask.T] = image_features.reshape(-1, D)
            out = t.transpose(0, 1)
        elif kind == "front":
            n = image_features.shape[0] * image_features.shape[1]
            flat = out.reshape(-1, D).clone()
            flat[:n] = image_features.reshape(-1, D)
            out = flat.reshape(out.shape)
        elif kind == "shifted":
            shifted = torch.zeros_like(mask)
            shifted[:, 1:] = mask[:, :-1]
            out[shifted] = image_features.reshape(-1, D)
        return out
    return fn


register(Exercise(
    id="ch14.merge_image_features", chapter=CH, title="Image features at the placeholder tokens", points=2,
    name="merge_image_features", difficulty="**",
    signature="merge_image_features(input_ids: LongTensor[B, T], inputs_embeds: Tensor[B, T, D], "
              "image_features: Tensor[n_images, P, D], image_token_id: int) -> Tensor[B, T, D]",
    reference="transformers LlavaModel.forward of a tiny LlavaForConditionalGeneration (embedding table copied, "
              "projected features given), its inputs_embeds read as they enter the language model",
    solution=f"{SOL}:merge_image_features", cases=_merge_cases,
    forbidden=[f"{LLAVA}:LlavaModel", f"{LLAVA}:LlavaForConditionalGeneration"],
    mistakes=[
        Mistake("added", "the image features were ADDED to the placeholder embeddings: LLaVA REPLACES them (the "
                "<image> token's own embedding plays no part)", _merge_wrong("added")),
        Mistake("patch-major", "your features are interleaved across images (patch 0 of every image, then patch 1, "
                "...): each image's P features fill its own P placeholders, one image after the other",
                _merge_wrong("patch-major")),
        Mistake("column-order", "you filled the placeholders column by column (position 0 of every row, then "
                "position 1, ...): the images are in reading order, row 0 of the batch first, left to right",
                _merge_wrong("column-order")),
        Mistake("front", "you wrote the image features at the start of the sequence: they go exactly where the "
                "<image> placeholder tokens are (input_ids == image_token_id)", _merge_wrong("front")),
        Mistake("shifted", "your features land one position after the placeholders: write them AT the positions "
                "where input_ids == image_token_id", _merge_wrong("shifted")),
    ]))
