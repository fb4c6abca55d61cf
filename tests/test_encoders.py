"""The timm ViT encoder on tiny SigLIP- and CLIP-shaped configurations: output shape and grid, prefix tokens
dropped, the chosen block's features against a hand-run of the timm blocks, row-major tokens in every block, frozen
by default, the data config, weights from a local file; and ``ImageTransform`` on every PIL mode and in its three
resize modes."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from vl_mamba.encoders import ConvEncoder, ImageTransform, TimmViTEncoder, save_timm_checkpoint, to_rgb
from vl_mamba.encoders.timm_vit import default_layer

TINY = dict(embed_dim=32, depth=3, num_heads=2, mlp_ratio=2.0)
SIGLIP = "vit_so400m_patch14_siglip_384"
CLIP = "vit_large_patch14_clip_336.openai"


def tiny(name: str, **kwargs) -> TimmViTEncoder:
    return TimmViTEncoder(name, img_size=56, model_kwargs=TINY, **kwargs)


def by_hand(encoder: TimmViTEncoder, name: str, images: torch.Tensor, norm: bool = False) -> torch.Tensor:
    """The same weights in an unpruned timm model, run block by block up to the encoder's layer."""
    model = timm.create_model(name, img_size=56, num_classes=0, **TINY).eval()
    missing, unexpected = model.load_state_dict(encoder.model.state_dict(), strict=False)
    assert not unexpected
    assert all(k.startswith(("blocks.", "norm.", "fc_norm.", "attn_pool.", "head")) for k in missing), missing
    x = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(images))))
    for block in model.blocks[: encoder.layer + 1]:
        x = block(x)
    if norm:
        x = model.norm(x)
    return x[:, model.num_prefix_tokens :]


@pytest.mark.parametrize("name, prefix_tokens", [(SIGLIP, 0), (CLIP, 1)])
def test_shapes_grid_and_prefix_tokens(name, prefix_tokens):
    encoder = tiny(name)
    assert encoder.model.num_prefix_tokens == prefix_tokens
    assert encoder.grid == (4, 4) and encoder.num_patches == 16 and encoder.embed_dim == 32
    features = encoder(torch.randn(2, 3, 56, 56))
    assert features.shape == (2, 16, 32)  # the CLS token of CLIP is dropped


def test_default_layer_penultimate_for_clip_last_for_siglip():
    assert default_layer(CLIP) == -2 and default_layer(SIGLIP) == -1
    assert tiny(CLIP).layer == 1 and tiny(SIGLIP).layer == 2


@pytest.mark.parametrize(
    "name, layer, norm", [(SIGLIP, None, False), (SIGLIP, 0, False), (SIGLIP, -1, True), (CLIP, None, False),
                          (CLIP, -1, False), (CLIP, 0, False)]
)
def test_features_of_the_chosen_block(name, layer, norm):
    torch.manual_seed(0)
    encoder = tiny(name, layer=layer, norm=norm).eval()
    assert len(encoder.model.blocks) == encoder.layer + 1  # later blocks are pruned
    images = torch.randn(2, 3, 56, 56)
    expected = by_hand(encoder, name, images, norm=norm)
    torch.testing.assert_close(encoder(images), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", [SIGLIP, CLIP])
def test_blocks_see_row_major_tokens(name):
    """timm hands the patch tokens on as a transposed view; the encoder lays them out row-major once, so no block's
    norm copies the residual stream again."""
    encoder = tiny(name)
    layouts = []
    for block in encoder.model.blocks:
        block.norm1.register_forward_pre_hook(lambda module, args: layouts.append(args[0].is_contiguous()))
    features = encoder(torch.randn(2, 3, 56, 56))
    assert layouts == [True] * len(encoder.model.blocks)
    assert features.is_contiguous() or name == CLIP  # CLIP's CLS token is sliced off


def test_frozen_by_default_with_no_gradient():
    encoder = tiny(SIGLIP)
    assert not any(p.requires_grad for p in encoder.parameters())
    encoder.requires_grad_(True)  # training it is the caller's choice
    encoder(torch.randn(1, 3, 56, 56)).sum().backward()
    assert all(p.grad is not None for p in encoder.parameters())


def test_data_config_follows_the_input_size():
    siglip, clip = tiny(SIGLIP).data_config, tiny(CLIP).data_config
    assert siglip["input_size"] == clip["input_size"] == (3, 56, 56)
    assert siglip["mean"] == (0.5, 0.5, 0.5)
    assert clip["mean"] == pytest.approx((0.48145466, 0.4578275, 0.40821073))  # OpenAI CLIP statistics
    transform = ImageTransform(clip)
    assert transform(Image.new("RGB", (90, 70))).shape == (3, 56, 56)


def test_block_class_and_errors():
    encoder = tiny(SIGLIP)
    assert isinstance(encoder.model.blocks[0], encoder.block_class)
    with pytest.raises(ValueError, match="layer=3 is outside the 3 blocks"):
        tiny(SIGLIP, layer=3)
    with pytest.raises(ValueError, match="layer=-4 is outside"):
        tiny(SIGLIP, layer=-4)


def test_not_a_vit_is_refused():
    with pytest.raises(ValueError, match="not a timm Vision Transformer"):
        TimmViTEncoder("resnet10t")


@pytest.mark.parametrize("name", [SIGLIP, CLIP])
def test_weights_from_a_local_file(tmp_path, name):
    source = timm.create_model(name, img_size=56, num_classes=0, **TINY)
    with torch.no_grad():
        for p in source.parameters():
            p.normal_()
    path = save_timm_checkpoint(source, tmp_path / "tiny.safetensors")
    encoder = tiny(name, checkpoint_path=str(path), layer=-1)
    own = encoder.model.state_dict()
    assert own, "no weights"
    expected = source.state_dict()
    for key, value in own.items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0, msg=key)


def test_missing_local_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint file"):
        tiny(SIGLIP, checkpoint_path=str(tmp_path / "absent.safetensors"))


# --- ImageTransform -------------------------------------------------------------------------------------------------

CONFIG = {"input_size": (3, 32, 32), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "interpolation": "bicubic"}


def _images() -> dict[str, Image.Image]:
    rgba = Image.new("RGBA", (20, 10), (255, 0, 0, 255))
    rgba.putpixel((0, 0), (0, 0, 0, 0))  # fully transparent: becomes white
    palette = Image.new("P", (20, 10), 0)
    palette.putpalette([0, 0, 255] + [0, 255, 0] * 255)
    palette.info["transparency"] = 1
    gray16 = Image.fromarray(np.linspace(0, 65535, 200).astype(np.uint16).reshape(10, 20))
    assert gray16.mode == "I;16"
    return {
        "RGB": Image.new("RGB", (20, 10), (10, 20, 30)),
        "RGBA": rgba,
        "P": palette,
        "CMYK": Image.new("CMYK", (20, 10), (0, 255, 255, 0)),
        "L": Image.new("L", (20, 10), 128),
        "I;16": gray16,
        "I": gray16.convert("I"),
        "F": gray16.convert("F"),
        "LA": Image.new("LA", (20, 10), (50, 255)),
    }


@pytest.mark.parametrize("mode", list(_images()))
@pytest.mark.parametrize("resize", ["pad", "squash", "crop"])
def test_every_mode_becomes_a_normalised_rgb_tensor(mode, resize):
    out = ImageTransform(CONFIG, resize=resize)(_images()[mode])
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    assert torch.isfinite(out).all() and out.min() >= -1.0 - 1e-6 and out.max() <= 1.0 + 1e-6


def test_to_rgb_colours():
    images = _images()
    rgba = to_rgb(images["RGBA"])
    assert rgba.mode == "RGB" and rgba.getpixel((0, 0)) == (255, 255, 255) and rgba.getpixel((5, 5)) == (255, 0, 0)
    assert to_rgb(images["CMYK"]).getpixel((0, 0)) == (255, 0, 0)
    assert to_rgb(images["L"]).getpixel((0, 0)) == (128, 128, 128)
    gray = to_rgb(images["I;16"])  # 16-bit range rescaled to 8 bits
    assert gray.getpixel((0, 0)) == (0, 0, 0) and gray.getpixel((19, 9)) == (255, 255, 255)


def test_resize_modes():
    # A 40 x 20 image: left half red, right half blue.
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    image.paste((0, 0, 255), (20, 0, 40, 20))
    config = dict(CONFIG, interpolation="nearest")
    red = torch.tensor([1.0, -1.0, -1.0])
    blue = torch.tensor([-1.0, -1.0, 1.0])
    mean_grey = torch.tensor([(128 / 255 - 0.5) / 0.5] * 3)  # the mean colour, 0.5 -> 128

    padded = ImageTransform(config, "pad")(image)  # padded top and bottom with the mean colour
    assert torch.allclose(padded[:, 0, 0], mean_grey, atol=1e-6)
    assert torch.allclose(padded[:, -1, -1], mean_grey, atol=1e-6)
    assert torch.allclose(padded[:, 16, 2], red) and torch.allclose(padded[:, 16, 30], blue)

    squashed = ImageTransform(config, "squash")(image)  # every row is the whole image
    assert torch.allclose(squashed[:, 0, 2], red) and torch.allclose(squashed[:, 31, 30], blue)

    cropped = ImageTransform(config, "crop")(image)  # short side to 32, centre 32 x 32 of 64 x 32
    assert torch.allclose(cropped[:, 0, 2], red) and torch.allclose(cropped[:, 31, 30], blue)
    assert torch.allclose(cropped[:, :, 15], red[:, None]) and torch.allclose(cropped[:, :, 16], blue[:, None])

    with pytest.raises(ValueError, match="resize must be"):
        ImageTransform(config, "stretch")


def test_conv_encoder_keeps_colour_without_norm():
    """The default ConvEncoder has no normalisation layer, and tells apart two images that differ only in the
    colour of one small object; ``norm="group"`` brings GroupNorm back; an unknown norm is refused."""
    torch.manual_seed(0)
    image = torch.full((2, 3, 32, 32), 0.8)
    image[0, :, 12:18, 12:18] = torch.tensor([0.9, 0.1, 0.1])[:, None, None]  # red
    image[1, :, 12:18, 12:18] = torch.tensor([0.5, 0.2, 0.7])[:, None, None]  # purple
    plain = ConvEncoder(32, (16, 32))
    out = plain(image)
    assert out.shape == (2, 64, 32) and plain.grid == (8, 8)
    assert not any(isinstance(m, torch.nn.GroupNorm) for m in plain.modules())
    assert (out[0] - out[1]).abs().max() > 1e-3
    assert any(isinstance(m, torch.nn.GroupNorm) for m in ConvEncoder(32, (16, 32), norm="group").modules())
    with pytest.raises(ValueError, match="unknown norm"):
        ConvEncoder(32, (16, 32), norm="batch")


def test_conv_encoder_sincos_position_codes():
    """``position="sincos"``: fixed codes (a buffer, not a parameter, not in the state dict) that tell every cell
    apart, with one channel that rises along the columns and one along the rows; width must divide by 4."""
    from vl_mamba.encoders.conv import grid_sincos

    codes = grid_sincos(4, 16)
    assert codes.shape == (16, 16)
    assert len({tuple(row.tolist()) for row in codes}) == 16
    grid = codes.reshape(4, 4, 16)
    assert (grid[:, 1:, 8] > grid[:, :-1, 8]).all() and (grid[1:, :, 0] > grid[:-1, :, 0]).all()
    encoder = ConvEncoder(32, (16, 32), position="sincos")
    assert "position" not in encoder.state_dict() and "position" not in dict(encoder.named_parameters())
    image = torch.rand(1, 3, 32, 32)
    features = image
    for block in encoder.blocks:
        features = block(features)
    torch.testing.assert_close(encoder(image), features.flatten(2).transpose(1, 2) + grid_sincos(8, 32))
    with pytest.raises(ValueError, match="divisible by 4"):
        grid_sincos(4, 6)
    with pytest.raises(ValueError, match="unknown position"):
        ConvEncoder(32, (16, 32), position="rope")
