"""Wrong answers to chapter 14, as learners write them."""
import math

import torch
import torch.nn.functional as F

from . import wrong


# -- patchify -------------------------------------------------------------------------------
@wrong("ch14.patchify", diagnosis="column-major")
def patchify_columns_first(images, patch):
    B, C, H, W = images.shape
    out = []
    for j in range(W // patch):          # columns in the outer loop
        for i in range(H // patch):
            out.append(images[:, :, i * patch:(i + 1) * patch, j * patch:(j + 1) * patch].reshape(B, -1))
    return torch.stack(out, dim=1)


@wrong("ch14.patchify", diagnosis="channels-last")
def patchify_einops_style(images, patch):
    B, C, H, W = images.shape
    x = images.permute(0, 2, 3, 1)                         # channels last, as in many ViT tutorials
    x = x.reshape(B, H // patch, patch, W // patch, patch, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(B, -1, patch * patch * C)


@wrong("ch14.patchify", diagnosis="plain-reshape")
def patchify_view(images, patch):
    B, C, H, W = images.shape
    return images.view(B, (H // patch) * (W // patch), C * patch * patch)


@wrong("ch14.patchify", diagnosis=None)
def patchify_tensor_unfold_no_permute(images, patch):
    B, C, H, W = images.shape
    x = images.unfold(2, patch, patch).unfold(3, patch, patch)   # (B, C, gh, gw, p, p)
    return x.reshape(B, -1, C * patch * patch)                     # channel axis still in front


# -- vit_embeddings -------------------------------------------------------------------------
def _patches(images, p):
    B, C, H, W = images.shape
    x = images.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(B, -1, C * p * p)


@wrong("ch14.vit_embeddings", diagnosis="cls-after-positions")
def vit_cls_after_positions(pixel_values, patch_weight, patch_bias, cls_token, position_embeddings):
    D, p = patch_weight.shape[0], patch_weight.shape[-1]
    x = _patches(pixel_values, p) @ patch_weight.reshape(D, -1).T + patch_bias
    x = x + position_embeddings[:, 1:]
    return torch.cat([cls_token.expand(len(x), -1, -1), x], dim=1)


@wrong("ch14.vit_embeddings", diagnosis="cls-missing")
def vit_no_cls(pixel_values, patch_weight, patch_bias, cls_token, position_embeddings):
    x = F.conv2d(pixel_values, patch_weight, patch_bias, stride=patch_weight.shape[-1])
    x = x.flatten(2).transpose(1, 2)
    return x + position_embeddings[:, 1:]


@wrong("ch14.vit_embeddings", diagnosis="cls-at-end")
def vit_cls_appended(pixel_values, patch_weight, patch_bias, cls_token, position_embeddings):
    x = F.conv2d(pixel_values, patch_weight, patch_bias, stride=patch_weight.shape[-1]).flatten(2).transpose(1, 2)
    x = torch.cat([x, cls_token.repeat(x.shape[0], 1, 1)], dim=1)
    return x + position_embeddings


@wrong("ch14.vit_embeddings", diagnosis="weight-order")
def vit_weight_flattened_channels_last(pixel_values, patch_weight, patch_bias, cls_token, position_embeddings):
    D, p = patch_weight.shape[0], patch_weight.shape[-1]
    w = patch_weight.permute(0, 2, 3, 1).reshape(D, -1)     # (D, p, p, C) flattened
    x = _patches(pixel_values, p) @ w.T + patch_bias
    x = torch.cat([cls_token.expand(len(x), -1, -1), x], dim=1)
    return x + position_embeddings


@wrong("ch14.vit_embeddings", diagnosis="ch14.patchify:column-major")
def vit_patches_by_column(pixel_values, patch_weight, patch_bias, cls_token, position_embeddings):
    B, C, H, W = pixel_values.shape
    D, p = patch_weight.shape[0], patch_weight.shape[-1]
    x = pixel_values.reshape(B, C, H // p, p, W // p, p).permute(0, 4, 2, 1, 3, 5).reshape(B, -1, C * p * p)
    x = x @ patch_weight.reshape(D, -1).T + patch_bias
    x = torch.cat([cls_token.expand(B, -1, -1), x], dim=1)
    return x + position_embeddings


# -- interpolate_pos_encoding ---------------------------------------------------------------
def _grid(pos):
    g = math.isqrt(pos.shape[1] - 1)
    return pos[:, :1], pos[:, 1:].reshape(1, g, g, -1).permute(0, 3, 1, 2), g


@wrong("ch14.interpolate_pos_encoding", diagnosis="bilinear")
def interp_bilinear(position_embeddings, grid_h, grid_w):
    cls, grid, g = _grid(position_embeddings)
    if (grid_h, grid_w) == (g, g):
        return position_embeddings
    grid = F.interpolate(grid, size=(grid_h, grid_w), mode="bilinear", align_corners=False)
    return torch.cat([cls, grid.flatten(2).transpose(1, 2)], dim=1)


@wrong("ch14.interpolate_pos_encoding", diagnosis="align-corners")
def interp_align_corners(position_embeddings, grid_h, grid_w):
    cls, grid, g = _grid(position_embeddings)
    grid = F.interpolate(grid, size=(grid_h, grid_w), mode="bicubic", align_corners=True)
    return torch.cat([cls, grid.flatten(2).transpose(1, 2)], dim=1)


@wrong("ch14.interpolate_pos_encoding", diagnosis="no-permute")
def interp_reshape_only(position_embeddings, grid_h, grid_w):
    D = position_embeddings.shape[-1]
    g = math.isqrt(position_embeddings.shape[1] - 1)
    grid = position_embeddings[:, 1:].reshape(1, D, g, g)
    grid = F.interpolate(grid, size=(grid_h, grid_w), mode="bicubic", align_corners=False)
    return torch.cat([position_embeddings[:, :1], grid.reshape(1, grid_h * grid_w, D)], dim=1)


@wrong("ch14.interpolate_pos_encoding", diagnosis="hw-swapped")
def interp_width_first(position_embeddings, grid_h, grid_w):
    cls, grid, g = _grid(position_embeddings)
    grid = F.interpolate(grid, size=(grid_w, grid_h), mode="bicubic", align_corners=False)
    return torch.cat([cls, grid.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, -1)], dim=1)


@wrong("ch14.interpolate_pos_encoding", diagnosis="cls-dropped")
def interp_forgets_cls(position_embeddings, grid_h, grid_w):
    _, grid, g = _grid(position_embeddings)
    grid = F.interpolate(grid, size=(grid_h, grid_w), mode="bicubic", align_corners=False)
    return grid.flatten(2).transpose(1, 2)


# -- clip_loss ------------------------------------------------------------------------------
def _normed(a, b):
    return a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)


@wrong("ch14.clip_loss", diagnosis="one-direction")
def clip_image_to_text_only(image_embeds, text_embeds, logit_scale):
    i, t = _normed(image_embeds, text_embeds)
    logits = logit_scale.exp() * i @ t.T
    return F.cross_entropy(logits, torch.arange(len(logits))), logits


@wrong("ch14.clip_loss", diagnosis="divided")
def clip_temperature_divides(image_embeds, text_embeds, logit_scale):
    i, t = _normed(image_embeds, text_embeds)
    logits = (i @ t.T) / torch.exp(logit_scale)       # "divide by the temperature"
    labels = torch.arange(logits.shape[0])
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)), logits


@wrong("ch14.clip_loss", diagnosis="not-exponentiated")
def clip_scale_not_exponentiated(image_embeds, text_embeds, logit_scale):
    i, t = F.normalize(image_embeds, dim=-1), F.normalize(text_embeds, dim=-1)
    logits = logit_scale * i @ t.T
    labels = torch.arange(logits.shape[0])
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2, logits


@wrong("ch14.clip_loss", diagnosis="not-normalised")
def clip_raw_dot_products(image_embeds, text_embeds, logit_scale):
    logits = logit_scale.exp() * image_embeds @ text_embeds.T
    labels = torch.arange(logits.shape[0])
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2, logits


@wrong("ch14.clip_loss", diagnosis="summed")
def clip_directions_summed(image_embeds, text_embeds, logit_scale):
    i, t = _normed(image_embeds, text_embeds)
    logits = logit_scale.exp() * i @ t.T
    labels = torch.arange(logits.shape[0])
    return F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels), logits


# -- project_image_features -----------------------------------------------------------------
@wrong("ch14.project_image_features", diagnosis="kept-cls")
def project_all_tokens(vision_hidden, w1, b1, w2, b2):
    return F.linear(F.gelu(F.linear(vision_hidden, w1, b1)), w2, b2)


@wrong("ch14.project_image_features", diagnosis="tanh-gelu")
def project_gpt2_gelu(vision_hidden, w1, b1, w2, b2):
    h = vision_hidden[:, 1:] @ w1.T + b1
    h = 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h ** 3)))
    return h @ w2.T + b2


@wrong("ch14.project_image_features", diagnosis="no-activation")
def project_two_linears(vision_hidden, w1, b1, w2, b2):
    return (vision_hidden[:, 1:] @ w1.T + b1) @ w2.T + b2


@wrong("ch14.project_image_features", diagnosis="relu")
def project_relu(vision_hidden, w1, b1, w2, b2):
    return F.linear(torch.relu(F.linear(vision_hidden[:, 1:], w1, b1)), w2, b2)


@wrong("ch14.project_image_features", diagnosis="dropped-last")
def project_drops_last(vision_hidden, w1, b1, w2, b2):
    return F.linear(F.gelu(F.linear(vision_hidden[:, :-1], w1, b1)), w2, b2)


# -- merge_image_features -------------------------------------------------------------------
@wrong("ch14.merge_image_features", diagnosis="added")
def merge_adds(input_ids, inputs_embeds, image_features, image_token_id):
    mask = (input_ids == image_token_id).unsqueeze(-1)
    extra = torch.zeros_like(inputs_embeds).masked_scatter(mask, image_features)
    return inputs_embeds + extra


@wrong("ch14.merge_image_features", diagnosis="patch-major")
def merge_interleaved(input_ids, inputs_embeds, image_features, image_token_id):
    out = inputs_embeds.clone()
    feats = image_features.permute(1, 0, 2).reshape(-1, image_features.shape[-1])
    out[input_ids == image_token_id] = feats
    return out


@wrong("ch14.merge_image_features", diagnosis="column-order")
def merge_by_position_first(input_ids, inputs_embeds, image_features, image_token_id):
    out = inputs_embeds.clone()
    feats = image_features.reshape(-1, image_features.shape[-1])
    k = 0
    for t in range(input_ids.shape[1]):
        for b in range(input_ids.shape[0]):
            if input_ids[b, t] == image_token_id:
                out[b, t] = feats[k]
                k += 1
    return out


@wrong("ch14.merge_image_features", diagnosis="shifted")
def merge_off_by_one(input_ids, inputs_embeds, image_features, image_token_id):
    out = inputs_embeds.clone()
    feats = image_features.reshape(-1, image_features.shape[-1])
    rows, cols = torch.nonzero(input_ids == image_token_id, as_tuple=True)
    out[rows, (cols + 1).clamp(max=input_ids.shape[1] - 1)] = feats
    return out


@wrong("ch14.merge_image_features", diagnosis=None)
def merge_in_place(input_ids, inputs_embeds, image_features, image_token_id):
    inputs_embeds[input_ids == image_token_id] = image_features.reshape(-1, image_features.shape[-1])
    return inputs_embeds


@wrong("ch14.merge_image_features", diagnosis=None)
def merge_one_image_per_row(input_ids, inputs_embeds, image_features, image_token_id):
    out = inputs_embeds.clone()
    for b in range(input_ids.shape[0]):
        out[b, input_ids[b] == image_token_id] = image_features[b]
    return out


@wrong("ch14.merge_image_features", diagnosis="front")
def merge_images_first(input_ids, inputs_embeds, image_features, image_token_id):
    out = inputs_embeds.clone()
    P = image_features.shape[1]
    out[:, :P] = image_features          # "the image comes first in the prompt"
    return out
