"""Correct answers to chapter 14, in other styles than the reference."""
import math

import torch
import torch.nn.functional as F

from . import right


# -- patchify -------------------------------------------------------------------------------
@right("ch14.patchify", style="Tensor.unfold along H and W, then permute")
def patchify_tensor_unfold(images, patch):
    B, C, H, W = images.shape
    x = images.unfold(2, patch, patch).unfold(3, patch, patch)     # (B, C, gh, gw, p, p)
    return x.permute(0, 2, 3, 1, 4, 5).reshape(B, -1, C * patch * patch)


@right("ch14.patchify", style="explicit loops over the grid, row by row")
def patchify_loops(images, patch):
    B, C, H, W = images.shape
    rows = []
    for i in range(H // patch):
        for j in range(W // patch):
            rows.append(images[:, :, i * patch:(i + 1) * patch, j * patch:(j + 1) * patch].reshape(B, -1))
    return torch.stack(rows, dim=1)


@right("ch14.patchify", style="an identity Conv2d: one output channel per kernel entry")
def patchify_identity_conv(images, patch):
    C = images.shape[1]
    n = C * patch * patch
    eye = torch.eye(n, dtype=images.dtype).reshape(n, C, patch, patch)
    return F.conv2d(images, eye, stride=patch).flatten(2).transpose(1, 2)


# -- vit_embeddings -------------------------------------------------------------------------
@right("ch14.vit_embeddings", style="F.conv2d with kernel = stride = patch, as Hugging Face does")
def vit_conv(pixel_values, patch_weight, patch_bias, cls_token, position_embeddings):
    x = F.conv2d(pixel_values, patch_weight, patch_bias, stride=patch_weight.shape[-1])
    x = x.flatten(2).transpose(1, 2)
    cls = cls_token.expand(x.shape[0], -1, -1)
    return torch.cat((cls, x), dim=1) + position_embeddings


@right("ch14.vit_embeddings", style="einsum on the patches in float64, class row written into a buffer")
def vit_einsum_float64(pixel_values, patch_weight, patch_bias, cls_token, position_embeddings):
    B, C, H, W = pixel_values.shape
    D, p = patch_weight.shape[0], patch_weight.shape[-1]
    x = pixel_values.double().reshape(B, C, H // p, p, W // p, p)
    y = torch.einsum("bchpwq,dcpq->bhwd", x, patch_weight.double()).reshape(B, -1, D) + patch_bias.double()
    out = torch.empty(B, 1 + y.shape[1], D, dtype=torch.float64)
    out[:, 0] = cls_token[0, 0].double()
    out[:, 1:] = y
    return (out + position_embeddings.double()).float()


# -- interpolate_pos_encoding ---------------------------------------------------------------
@right("ch14.interpolate_pos_encoding", style="always interpolates (bicubic at the same size is the identity)")
def interp_always(position_embeddings, grid_h, grid_w):
    D = position_embeddings.shape[-1]
    g = int(round(math.sqrt(position_embeddings.shape[1] - 1)))
    grid = position_embeddings[0, 1:].T.reshape(1, D, g, g)
    grid = F.interpolate(grid, size=(grid_h, grid_w), mode="bicubic", align_corners=False)
    return torch.cat([position_embeddings[:, :1], grid.reshape(1, D, -1).transpose(1, 2)], dim=1)


@right("ch14.interpolate_pos_encoding", style="scale factors instead of a size, float64")
def interp_scale_factor(position_embeddings, grid_h, grid_w):
    n, D = position_embeddings.shape[1] - 1, position_embeddings.shape[2]
    g = math.isqrt(n)
    if grid_h == g and grid_w == g:
        return position_embeddings.clone()
    grid = position_embeddings[:, 1:].double().reshape(1, g, g, D).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(grid_h, grid_w), mode="bicubic", align_corners=False)
    grid = grid.flatten(2).transpose(1, 2).to(position_embeddings.dtype)
    return torch.cat([position_embeddings[:, :1], grid], dim=1)


# -- clip_loss ------------------------------------------------------------------------------
@right("ch14.clip_loss", style="F.normalize and log_softmax along both axes, by hand")
def clip_log_softmax(image_embeds, text_embeds, logit_scale):
    i, t = F.normalize(image_embeds, dim=-1), F.normalize(text_embeds, dim=-1)
    logits = torch.einsum("ie,te->it", i, t) * logit_scale.exp()
    row = -logits.log_softmax(dim=1).diagonal().mean()
    col = -logits.log_softmax(dim=0).diagonal().mean()
    return 0.5 * (row + col), logits


@right("ch14.clip_loss", style="float64, logits per text first, a loop over the pairs")
def clip_float64_loop(image_embeds, text_embeds, logit_scale):
    i = image_embeds.double() / image_embeds.double().pow(2).sum(-1, keepdim=True).sqrt()
    t = text_embeds.double() / text_embeds.double().pow(2).sum(-1, keepdim=True).sqrt()
    per_text = torch.exp(logit_scale.double()) * t @ i.T
    N = per_text.shape[0]
    total = 0
    for k in range(N):
        total = total + (torch.logsumexp(per_text[k], 0) - per_text[k, k])     # text k picks its image
        total = total + (torch.logsumexp(per_text[:, k], 0) - per_text[k, k])  # image k picks its text
    return (total / (2 * N)).float(), per_text.T.float()


# -- project_image_features -----------------------------------------------------------------
@right("ch14.project_image_features", style="matmuls and the erf form of GELU written out")
def project_erf(vision_hidden, w1, b1, w2, b2):
    h = vision_hidden[:, 1:, :] @ w1.T + b1
    h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
    return h @ w2.T + b2


@right("ch14.project_image_features", style="nn.Sequential with the weights copied in")
def project_sequential(vision_hidden, w1, b1, w2, b2):
    mlp = torch.nn.Sequential(torch.nn.Linear(w1.shape[1], w1.shape[0]), torch.nn.GELU(),
                              torch.nn.Linear(w2.shape[1], w2.shape[0]))
    with torch.no_grad():
        mlp[0].weight.copy_(w1)
        mlp[0].bias.copy_(b1)
        mlp[2].weight.copy_(w2)
        mlp[2].bias.copy_(b2)
        return mlp(vision_hidden.narrow(1, 1, vision_hidden.shape[1] - 1))


# -- merge_image_features -------------------------------------------------------------------
@right("ch14.merge_image_features", style="masked_scatter, as Hugging Face does")
def merge_masked_scatter(input_ids, inputs_embeds, image_features, image_token_id):
    mask = (input_ids == image_token_id).unsqueeze(-1).expand_as(inputs_embeds)
    return inputs_embeds.masked_scatter(mask, image_features.to(inputs_embeds.dtype))


@right("ch14.merge_image_features", style="a loop over rows and positions with a running counter")
def merge_loop(input_ids, inputs_embeds, image_features, image_token_id):
    out = inputs_embeds.clone()
    flat = image_features.reshape(-1, image_features.shape[-1])
    k = 0
    for b in range(input_ids.shape[0]):
        for t in range(input_ids.shape[1]):
            if int(input_ids[b, t]) == image_token_id:
                out[b, t] = flat[k]
                k += 1
    return out


@right("ch14.merge_image_features", style="torch.where over a gathered feature table")
def merge_where(input_ids, inputs_embeds, image_features, image_token_id):
    mask = input_ids == image_token_id
    flat = image_features.reshape(-1, image_features.shape[-1])
    index = (mask.reshape(-1).long().cumsum(0) - 1).clamp(min=0).reshape(mask.shape)
    gathered = flat[index] if len(flat) else torch.zeros_like(inputs_embeds)
    return torch.where(mask.unsqueeze(-1), gathered, inputs_embeds)
