"""``VLMamba`` on tiny parts: visual tokens replace the ``<image>`` placeholder or go first, text-only samples
in a mixed batch, labels -100 on visual tokens and padding, the loss against cross-entropy over the returned
logits, the errors for malformed batches, and a few optimiser steps on a fixed batch that lower the loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vl_mamba import IGNORE_INDEX, VLMamba
from vl_mamba.connectors import MLPConnector, VSSL2Connector
from vl_mamba.decoders import MambaDecoder
from vl_mamba.encoders import TimmViTEncoder

IMG = 99  # the placeholder id in these tests
VISUAL = 4  # 28 px images, 14 px patches: a 2 x 2 grid


def tiny_model(connector=None, seed: int = 0) -> VLMamba:
    torch.manual_seed(seed)
    encoder = TimmViTEncoder(img_size=28, model_kwargs=dict(embed_dim=16, depth=2, num_heads=2, mlp_ratio=2.0))
    decoder = MambaDecoder(d_model=32, n_layer=2, vocab_size=100, d_state=4)
    return VLMamba(encoder, connector or MLPConnector(), decoder, image_token_id=IMG)


@pytest.fixture(scope="module")
def model() -> VLMamba:
    return tiny_model().eval()


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 28, 28, generator=torch.Generator().manual_seed(seed))


def test_visual_tokens_replace_the_placeholder(model):
    ids = torch.tensor([[5, 6, IMG, 7, 8]])
    labels = torch.tensor([[-100, 16, 17, 18, 19]])
    pixels = images(1)
    inputs = model.build_inputs(ids, pixels, labels)
    visual = model.encode_images(pixels)[0]
    text = model.decoder.embed(torch.tensor([5, 6, 7, 8]))
    assert inputs.embeds.shape == (1, 4 + VISUAL, 32) and inputs.mask.all()
    assert torch.equal(inputs.embeds[0, :2], text[:2])
    assert torch.equal(inputs.embeds[0, 2 : 2 + VISUAL], visual)
    assert torch.equal(inputs.embeds[0, 2 + VISUAL :], text[2:])
    assert inputs.labels.tolist() == [[-100, 16] + [IGNORE_INDEX] * VISUAL + [18, 19]]


def test_visual_tokens_go_first_without_a_placeholder(model):
    ids = torch.tensor([[5, 6, 7]])
    pixels = images(1)
    inputs = model.build_inputs(ids, pixels, labels=ids.clone())
    assert torch.equal(inputs.embeds[0, :VISUAL], model.encode_images(pixels)[0])
    assert torch.equal(inputs.embeds[0, VISUAL:], model.decoder.embed(ids)[0])
    assert inputs.labels.tolist() == [[IGNORE_INDEX] * VISUAL + [5, 6, 7]]


def test_mixed_batch_with_text_only_samples_and_padding(model):
    # Sample 0: image at its placeholder, 2 padding tokens at the end. Sample 1: text only. Sample 2: image first.
    ids = torch.tensor([[5, IMG, 6, 0, 0], [7, 8, 9, 10, 11], [12, 13, 0, 0, 0]])
    attention = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    labels = torch.where(attention.bool(), ids, torch.full_like(ids, IGNORE_INDEX))
    has_image = torch.tensor([True, False, True])
    pixels = images(2)
    visual = model.encode_images(pixels)
    for side in ("right", "left"):
        inputs = model.build_inputs(ids, pixels, labels, attention, has_image, padding_side=side)
        lengths = [2 + VISUAL, 5, 2 + VISUAL]
        assert inputs.embeds.shape == (3, 6, 32)
        assert inputs.mask.sum(1).tolist() == lengths
        for i, n in enumerate(lengths):
            real = slice(0, n) if side == "right" else slice(6 - n, 6)
            assert inputs.mask[i, real].all()
            assert (inputs.labels[i][~inputs.mask[i]] == IGNORE_INDEX).all()
            assert not inputs.embeds[i][~inputs.mask[i]].any()
        start = [0 if side == "right" else 6 - n for n in lengths]
        assert torch.equal(inputs.embeds[0, start[0] + 1 : start[0] + 1 + VISUAL], visual[0])
        assert torch.equal(inputs.embeds[1, start[1] : start[1] + 5], model.decoder.embed(ids[1]))
        assert torch.equal(inputs.embeds[2, start[2] : start[2] + VISUAL], visual[1])
        assert inputs.labels[0, start[0] :][: lengths[0]].tolist() == [5] + [IGNORE_INDEX] * VISUAL + [6]
        assert inputs.labels[2, start[2] :][: lengths[2]].tolist() == [IGNORE_INDEX] * VISUAL + [12, 13]


def test_loss_is_cross_entropy_over_labelled_positions(model):
    ids = torch.tensor([[5, IMG, 6, 7, 8], [9, 10, 11, 12, 0]])
    attention = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]])
    labels = torch.tensor([[-100, -100, 6, 7, 8], [-100, 10, 11, 12, -100]])
    out = model(ids, images(1), labels, attention, torch.tensor([True, False]), return_logits=True)
    inputs = model.build_inputs(ids, images(1), labels, attention, torch.tensor([True, False]))
    targets = inputs.labels[:, 1:]
    keep = targets != IGNORE_INDEX
    expected = F.cross_entropy(out.logits[:, :-1][keep].float(), targets[keep])
    assert out.num_tokens == 6 == int(keep.sum())
    assert out.logits.shape == (2, 4 + VISUAL, 104)
    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-6)


def test_text_only_batch_without_pixels(model):
    ids = torch.tensor([[5, 6, 7]])
    out = model(ids, labels=ids, return_logits=True)
    assert out.logits.shape == (1, 3, 104) and out.num_tokens == 2
    torch.testing.assert_close(out.logits, model.decoder(input_ids=ids))


def test_malformed_batches_are_errors(model):
    with pytest.raises(ValueError, match="sample 0 has 2 image placeholders"):
        model.build_inputs(torch.tensor([[IMG, 5, IMG]]), images(1))
    with pytest.raises(ValueError, match="sample 0 has an image placeholder but no image"):
        model.build_inputs(torch.tensor([[5, IMG]]))
    with pytest.raises(ValueError, match="2 samples have an image but pixel_values holds 1"):
        model.build_inputs(torch.tensor([[5], [6]]), images(1))
    with pytest.raises(ValueError, match="padding_side must be"):
        model.build_inputs(torch.tensor([[5], [6]]), padding_side="middle")


def test_connector_width_mismatch():
    encoder = TimmViTEncoder(img_size=28, model_kwargs=dict(embed_dim=16, depth=1, num_heads=2))
    decoder = MambaDecoder(d_model=32, n_layer=1, vocab_size=100)
    with pytest.raises(ValueError, match=r"was built for 24 -> 32, but the encoder gives 16"):
        VLMamba(encoder, MLPConnector(24, 32), decoder)


def test_a_few_steps_lower_the_loss_and_leave_the_encoder_alone():
    model = tiny_model(VSSL2Connector(scan="bi", d_state=4)).train()
    frozen = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 99, (4, 10), generator=gen)
    ids[:3, 2] = IMG
    labels = ids.masked_fill(ids == IMG, IGNORE_INDEX)
    has_image = torch.tensor([True, True, True, False])
    pixels = images(3)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(6):
        loss = model(ids, pixels, labels, has_image=has_image).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses
    assert all(p.grad is None for p in model.encoder.parameters())
    assert all(torch.equal(v, frozen[k]) for k, v in model.encoder.state_dict().items())
    assert all(p.grad is not None for p in model.connector.parameters())
