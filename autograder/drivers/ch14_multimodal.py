"""Chapter 14 - what the checks need to run and judge a learner's code (public)."""
from __future__ import annotations

import torch

from ..core import compare_float, compare_tensors


def _is_pair(got) -> bool:
    return isinstance(got, (tuple, list)) and len(got) == 2


def compare_clip(expected, got, atol: float = 1e-5, rtol: float = 1e-4):
    """``clip_loss`` returns ``(loss, logits_per_image)``: the logits first, then the loss."""
    if not _is_pair(got):
        return f"return a pair (loss, logits_per_image), got {type(got).__name__}"
    e_loss, e_logits = expected
    g_loss, g_logits = got
    problem = compare_tensors(e_logits, g_logits, atol=atol, rtol=rtol)
    if problem:
        return f"logits_per_image: {problem}"
    if isinstance(g_loss, torch.Tensor) and g_loss.numel() != 1:
        return f"the loss must be a single number (a 0-dim tensor), got shape {tuple(g_loss.shape)}"
    problem = compare_float(float(e_loss), g_loss, atol=atol, rtol=rtol)
    return None if problem is None else f"the logits are right, but the loss differs: {problem}"


def clip_gradients(fn, image_embeds, text_embeds, logit_scale):
    """Call ``clip_loss`` on leaf copies of its inputs and back-propagate the loss.

    Returns the gradients ``(d image_embeds, d text_embeds, d logit_scale)``: the
    temperature is learned, so the loss must reach it through autograd."""
    img = image_embeds.detach().clone().requires_grad_(True)
    txt = text_embeds.detach().clone().requires_grad_(True)
    scale = logit_scale.detach().clone().requires_grad_(True)
    out = fn(img, txt, scale)
    loss = out[0] if isinstance(out, (tuple, list)) else out
    if not isinstance(loss, torch.Tensor) or loss.grad_fn is None:
        raise TypeError("your loss is not connected to its inputs by autograd (a Python number, .item(), "
                        ".detach() or torch.no_grad?): CLIP learns the temperature, so gradients must flow")
    loss.backward()
    grads = []
    for name, t in (("image_embeds", img), ("text_embeds", txt), ("logit_scale", scale)):
        grads.append(t.grad if t.grad is not None else torch.zeros_like(t))
    return tuple(grads)


def compare_gradients(expected, got, atol: float = 1e-5, rtol: float = 1e-4):
    names = ("image_embeds", "text_embeds", "logit_scale")
    if not isinstance(got, (tuple, list)) or len(got) != 3:
        return "could not collect the gradients of your loss"
    for name, e, g in zip(names, expected, got):
        problem = compare_tensors(e, g, atol=atol, rtol=rtol)
        if problem:
            return f"the gradient with respect to {name} differs: {problem}"
    return None


def compare_merged(expected, got, atol: float = 1e-6, rtol: float = 1e-5):
    """The merged embeddings, with the first wrong position named (batch row, sequence index)."""
    problem = compare_tensors(expected, got, atol=atol, rtol=rtol)
    if problem is None or not isinstance(got, torch.Tensor) or got.shape != expected.shape:
        return problem
    bad = ((got.double() - expected.double()).abs() > atol + rtol * expected.double().abs()).any(-1)
    rows, cols = torch.nonzero(bad, as_tuple=True)
    where = ", ".join(f"({int(r)}, {int(c)})" for r, c in list(zip(rows, cols))[:4])
    more = " ..." if len(rows) > 4 else ""
    return f"{int(bad.sum())} of {bad.numel()} (row, position) vectors are wrong, e.g. at {where}{more}: {problem}"
