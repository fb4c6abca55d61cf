"""``plan_splice`` and the splice ``VLMamba.build_inputs`` makes from it, on random batches (placeholders anywhere,
padding on either side, samples with and without images, masked labels), against a per-sample reference that
concatenates each sample's pieces; and the labelled-position count the loss uses against a direct count."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_model import IMG, VISUAL, images, tiny_model
from torch.nn.utils.rnn import pad_sequence

from vl_mamba import IGNORE_INDEX
from vl_mamba.splicing import plan_splice


@pytest.fixture(scope="module")
def model():
    return tiny_model().eval()


def reference_splice(model, input_ids, pixel_values, labels, attention_mask, has_image, side):
    """Sample by sample: keep the real tokens, put the image's tokens at the placeholder (dropping it) or first."""
    visual = model.encode_images(pixel_values) if has_image.any() else None
    text = model.decoder.embed(input_ids.masked_fill(input_ids == IMG, 0))
    embeds, masks, targets, image = [], [], [], 0
    for i in range(input_ids.shape[0]):
        keep = attention_mask[i].bool()
        emb, lab = text[i][keep], labels[i][keep]
        where = (input_ids[i][keep] == IMG).nonzero().flatten().tolist()
        if has_image[i]:
            at, cut = (where[0], 1) if where else (0, 0)
            emb = torch.cat([emb[:at], visual[image].to(emb.dtype), emb[at + cut:]])
            lab = torch.cat([lab[:at], lab.new_full((VISUAL,), IGNORE_INDEX), lab[at + cut:]])
            image += 1
        embeds.append(emb)
        masks.append(torch.ones(len(emb), dtype=torch.bool))
        targets.append(lab)

    def pad(seqs, value):
        if side == "right":
            return pad_sequence(seqs, batch_first=True, padding_value=value)
        return pad_sequence([s.flip(0) for s in seqs], batch_first=True, padding_value=value).flip(1)

    return pad(embeds, 0.0), pad(masks, False), pad(targets, IGNORE_INDEX)


def random_batch(gen: torch.Generator, batch: int, width: int, side: str):
    ids = torch.randint(1, 90, (batch, width), generator=gen)
    lengths = torch.randint(0, width + 1, (batch,), generator=gen)
    lengths[0] = width  # at least one sample fills the width
    columns = torch.arange(width)
    mask = columns < lengths[:, None] if side == "right" else columns >= (width - lengths)[:, None]
    has_image = torch.rand(batch, generator=gen) < 0.6
    for i in range(batch):
        real = mask[i].nonzero().flatten()
        if has_image[i] and len(real) and torch.rand(1, generator=gen) < 0.7:
            ids[i, real[torch.randint(0, len(real), (1,), generator=gen)]] = IMG
    labels = ids.masked_fill(torch.rand(batch, width, generator=gen) < 0.3, IGNORE_INDEX)
    labels = labels.masked_fill(~mask | (ids == IMG), IGNORE_INDEX)
    ids = ids.masked_fill(~mask, 0)
    return ids, mask.long(), labels, has_image


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("seed", range(6))
def test_splice_matches_the_per_sample_reference(model, side, seed):
    gen = torch.Generator().manual_seed(seed)
    ids, mask, labels, has_image = random_batch(gen, batch=5, width=7, side=side)
    pixels = images(int(has_image.sum()), seed) if has_image.any() else None
    with torch.no_grad():
        inputs = model.build_inputs(ids, pixels, labels, mask, has_image, padding_side=side)
        embeds, masks, targets = reference_splice(model, ids, pixels, labels, mask, has_image, side)
    assert torch.equal(inputs.mask, masks)
    assert torch.equal(inputs.labels, targets)
    torch.testing.assert_close(inputs.embeds, embeds, rtol=0, atol=0)
    if side == "right":
        assert inputs.num_labels == int((targets[:, 1:] != IGNORE_INDEX).sum())
    else:
        assert inputs.num_labels is None


@pytest.mark.parametrize("seed", range(4))
def test_loss_matches_cross_entropy_over_the_labelled_positions(model, seed):
    gen = torch.Generator().manual_seed(seed)
    ids, mask, labels, has_image = random_batch(gen, batch=4, width=6, side="right")
    pixels = images(int(has_image.sum()), seed) if has_image.any() else None
    with torch.no_grad():
        out = model(ids, pixels, labels, mask, has_image, return_logits=True)
        targets = model.build_inputs(ids, pixels, labels, mask, has_image).labels[:, 1:]
    keep = targets != IGNORE_INDEX
    assert out.num_tokens == int(keep.sum())
    expected = F.cross_entropy(out.logits[:, :-1][keep].float(), targets[keep], reduction="sum")
    expected = expected / max(int(keep.sum()), 1)
    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-6)


def test_gradients_reach_the_text_embeddings_and_the_visual_tokens(model):
    ids = torch.tensor([[5, IMG, 6, 7], [8, 9, 10, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    visual = torch.randn(1, VISUAL, 32, requires_grad=True)
    model.encode_images = lambda _pixels: visual
    try:
        inputs = model.build_inputs(ids, images(1), ids, mask, torch.tensor([True, False]))
    finally:
        del model.encode_images
    weights = torch.randn_like(inputs.embeds)
    (inputs.embeds * weights).sum().backward()
    # Each visual token's gradient is the weight at the position it was spliced into (after token 5).
    torch.testing.assert_close(visual.grad[0], weights[0, 1:1 + VISUAL])


def test_plan_for_text_without_images_and_an_empty_text():
    mask = torch.tensor([[True, True, False]])
    plan = plan_splice(mask, torch.zeros_like(mask), torch.tensor([False]), VISUAL)
    assert plan.source.tolist() == [[0, 1]] and plan.num_images == 0 and plan.visual_rows.numel() == 0
    plan = plan_splice(torch.zeros(2, 1, dtype=torch.bool), torch.zeros(2, 1, dtype=torch.bool),
                       torch.tensor([True, True]), VISUAL)
    assert plan.mask.all() and not plan.is_text.any() and plan.visual_rows.tolist() == list(range(2 * VISUAL))
