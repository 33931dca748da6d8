"""Chapter 14: claims the chapter makes, checked against the libraries."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import autograder
from autograder.core import using_secret
from solutions.ch14_multimodal import (EOS, IMAGE, SHAPES, Captioner, CaptionerConfig, TinyCLIP,
                                       TinyCLIPConfig, caption, caption_ids, captioner_prompt, clip_loss,
                                       default_parts, is_held_out, make_data, merge_image_features,
                                       patchify, recall_at, render, split_combos, to_hf_clip, to_hf_llava)
from tests.helpers import reference_submission


def _silence():
    import transformers

    transformers.logging.set_verbosity_error()


def _perturbed_clip(seed=0):
    torch.manual_seed(seed)
    model = TinyCLIP(TinyCLIPConfig(), default_parts())
    with torch.no_grad():  # away from the initialisation (zero biases, unit norms)
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def test_patches_times_the_flattened_kernel_equal_vits_patch_convolution():
    from transformers import ViTConfig
    from transformers.models.vit.modeling_vit import ViTPatchEmbeddings

    _silence()
    g = torch.Generator().manual_seed(0)
    emb = ViTPatchEmbeddings(ViTConfig(image_size=(12, 16), patch_size=4, num_channels=3, hidden_size=7))
    x = torch.randn(2, 3, 12, 16, generator=g)
    w, b = emb.projection.weight, emb.projection.bias
    with torch.no_grad():
        ours = patchify(x, 4) @ w.reshape(7, -1).T + b
        assert torch.allclose(ours, emb(x), atol=1e-5)


def test_tiny_clip_is_a_clip_model():
    _silence()
    model = _perturbed_clip()
    hf = to_hf_clip(model)
    seen, _ = split_combos()
    data = make_data(seen[:24], 1, seed=1)
    with torch.no_grad():
        loss, logits = model(data.pixels, data.ids)
        out = hf(input_ids=data.ids, pixel_values=data.pixels, return_loss=True)
        assert abs(loss.item() - out.loss.item()) < 1e-5
        assert torch.allclose(logits, out.logits_per_image, atol=1e-4)
        big = make_data(seen[:8], 1, image_size=48, seed=2)
        theirs = hf.get_image_features(pixel_values=big.pixels, interpolate_pos_encoding=True).pooler_output
        assert torch.allclose(model.encode_image(big.pixels), theirs, atol=1e-4)


def test_clip_text_config_would_pool_at_the_largest_id_with_eos_2():
    """The trap the chapter avoids: with eos_token_id == 2, CLIP pools at argmax(input_ids)."""
    _silence()
    assert EOS != 2
    model = _perturbed_clip()
    hf = to_hf_clip(model)
    ids = caption_ids(split_combos()[0][:4])
    with torch.no_grad():
        right = hf.get_text_features(input_ids=ids).pooler_output
        hf.text_model.eos_token_id = 2
        legacy = hf.get_text_features(input_ids=ids).pooler_output
    assert not torch.allclose(right, legacy, atol=1e-3)


def test_captioner_front_end_is_llavas():
    _silence()
    clip = _perturbed_clip()
    cap = Captioner(clip.vision, CaptionerConfig(), default_parts())
    with torch.no_grad():
        for p in cap.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    hf = to_hf_llava(cap, TinyCLIPConfig())
    seen = {}
    hook = hf.model.language_model.register_forward_pre_hook(
        lambda m, a, k: seen.update(e=k["inputs_embeds"]), with_kwargs=True)
    data = make_data(split_combos()[1][:3], 1, seed=3)
    ids = torch.tensor(captioner_prompt(16)).repeat(3, 1)
    with torch.no_grad():
        hf(input_ids=ids, pixel_values=data.pixels)
        ours = merge_image_features(ids, cap.tok(ids), cap.image_tokens(cap.vision_hidden(data.pixels)), IMAGE)
    hook.remove()
    assert torch.allclose(seen["e"], ours, atol=1e-5)


def test_a_loss_that_detaches_the_temperature_loses_only_the_gradient_points():
    def clip_scale_as_float(image_embeds, text_embeds, logit_scale):
        i, t = F.normalize(image_embeds, dim=-1), F.normalize(text_embeds, dim=-1)
        logits = math.exp(logit_scale.item()) * i @ t.T
        labels = torch.arange(len(logits))
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2, logits

    result = autograder.grade("ch14.clip_loss", clip_scale_as_float, hidden=True)
    assert result.score == result.max_score / 2, result.feedback
    assert all(c.passed == (c.group == "loss") for c in result.checks), result.feedback
    assert "no gradient reaches logit_scale" in result.feedback


def test_the_data():
    seen, unseen = split_combos()
    assert len(seen) == 128 and len(unseen) == 32
    pairs = {(c.shape, c.colour) for c in unseen}
    assert len(pairs) == 4 and {s for s, _ in pairs} == set(range(len(SHAPES)))
    assert len({c for _, c in pairs}) == 4
    assert all(len(caption(c).split()) == 8 for c in seen + unseen)
    img = render(unseen, 32, torch.Generator().manual_seed(0))
    lit = (img - img.median(dim=-1, keepdim=True).values).abs().sum(1) > 0.3  # the shape's pixels
    ys, xs = torch.arange(32.0)[:, None], torch.arange(32.0)[None, :]
    for k, c in enumerate(unseen):
        m = lit[k].float()
        cy, cx = float((m * ys).sum() / m.sum()), float((m * xs).sum() / m.sum())
        assert (cy < 16) == (c.position < 2) and (cx < 16) == (c.position % 2 == 0), (k, c, cy, cx)
    assert all(is_held_out(c) for c in unseen) and not any(is_held_out(c) for c in seen)


def test_recall_counts_ties_in_favour_and_misses():
    sim = torch.eye(4)
    assert all(v == 1.0 for v in recall_at(sim).values())
    sim[0, 1] = 2.0   # image 0 prefers text 1; text 1 now prefers image 0
    r = recall_at(sim, ks=(1,))
    assert r["image -> text R@1"] == 0.75 and r["text -> image R@1"] == 0.75


def test_clip_loss_matches_the_library_loss_and_the_init_temperature():
    from transformers.models.clip.modeling_clip import image_text_contrastive_loss

    g = torch.Generator().manual_seed(0)
    img, txt = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    s = torch.tensor(math.log(1 / 0.07))
    loss, logits = clip_loss(img, txt, s)
    assert torch.allclose(loss, image_text_contrastive_loss(logits.T), atol=1e-6)
    assert abs(TinyCLIP(TinyCLIPConfig(), default_parts()).logit_scale.exp().item() - 1 / 0.07) < 1e-4


@pytest.mark.parametrize("secret", ["another secret", "a third one"])
def test_hidden_cases_hold_under_other_secrets(secret):
    with using_secret(secret):
        for row in autograder.catalogue("ch14"):
            result = autograder.grade(row["id"], reference_submission(row["id"]), hidden=True)
            assert result.passed, result.feedback
