"""Stages, optimiser groups, the learning-rate schedule, loading a stage-1 connector and the FSDP wrap
policy's classes: the training pieces that need no trainer run."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from vl_mamba.connectors import VSSL2Connector
from vl_mamba.decoders import MambaBlock, MambaDecoder
from vl_mamba.encoders import ConvEncoder
from vl_mamba.encoders.conv import ConvBlock
from vl_mamba.model import VLMamba
from vl_mamba.training.lit_module import VLMambaLitModule, load_connector
from vl_mamba.training.optim import param_groups, warmup_cosine
from vl_mamba.training.stages import apply_stage, parts_table
from vl_mamba.training.strategies import VLMambaFSDPStrategy


def tiny_model() -> VLMamba:
    torch.manual_seed(0)
    return VLMamba(ConvEncoder(16, (8, 16)), VSSL2Connector(scan="bi", d_state=4),
                   MambaDecoder(d_model=16, n_layer=2, vocab_size=50))


@pytest.mark.parametrize(
    ("stage", "trainable"),
    [("align", {"connector"}), ("finetune", {"connector", "decoder"}), ("full", {"encoder", "connector", "decoder"}),
     (["decoder.backbone.layers.1"], {"decoder"})],
)
def test_stages_choose_what_trains(stage, trainable: set[str]) -> None:
    model = tiny_model()
    apply_stage(model, stage)
    parts = {name.split(".")[0] for name, p in model.named_parameters() if p.requires_grad}
    assert parts == trainable
    if isinstance(stage, list):
        assert all(n.startswith("decoder.backbone.layers.1.") for n, p in model.named_parameters() if p.requires_grad)
    table = parts_table(model)
    assert table.row_count == 4


def test_stage_errors() -> None:
    model = tiny_model()
    with pytest.raises(ValueError, match="nothing would train"):
        apply_stage(model, [])
    with pytest.raises(ValueError, match="no parameter matches"):
        apply_stage(model, ["projector"])


def test_no_weight_decay_for_ssm_parameters_norms_biases_and_embeddings() -> None:
    model = tiny_model()
    apply_stage(model, "full")
    groups = param_groups(model.named_parameters(), lr=1e-3, weight_decay=0.1, part_lr={"connector": 5e-3})
    decayed = {n for g in groups if g["weight_decay"] > 0 for n in g["names"]}
    plain = {n for g in groups if g["weight_decay"] == 0 for n in g["names"]}
    for name in plain | decayed:
        leaf = name.rsplit(".", 1)[-1]
        if leaf in ("A_log", "A_logs", "D", "Ds", "bias", "dt_projs_bias") or "norm" in name or "embedding" in name:
            assert name in plain, name
    assert "decoder.backbone.layers.0.mixer.in_proj.weight" in decayed
    assert "decoder.backbone.embedding.weight" in plain
    assert all(g["lr"] == 5e-3 for g in groups if g["names"][0].startswith("connector."))
    assert all(g["lr"] == 1e-3 for g in groups if not g["names"][0].startswith("connector."))
    # the tied LM head is the embedding: counted once
    total = sum(p.numel() for g in groups for p in g["params"])
    assert total == sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def test_warmup_then_cosine() -> None:
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    schedule = warmup_cosine(optimizer, total_steps=100, warmup_steps=10, min_lr_ratio=0.1)
    lrs = []
    for _ in range(100):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:10]))
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[55] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 45 / 90)))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[-1] > 0.1


def test_stage_two_starts_from_a_stage_one_connector(tmp_path: Path, tokenizer_path: Path) -> None:
    first = tiny_model()
    module_state = {f"model.{k}": v for k, v in first.state_dict().items()}
    ckpt = tmp_path / "stage1.ckpt"
    torch.save({"state_dict": module_state, "epoch": 0}, ckpt)
    torch.manual_seed(1)
    second = VSSL2Connector(scan="bi", d_state=4)
    second.connect(first.connector.in_dim, first.connector.out_dim)
    load_connector(second, ckpt)
    for (name, a), b in zip(first.connector.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), name
    other = VSSL2Connector(scan="cross", d_state=4)
    other.connect(first.connector.in_dim, first.connector.out_dim)
    with pytest.raises(ValueError, match="another architecture"):
        load_connector(other, ckpt)
    module = VLMambaLitModule(
        ConvEncoder(16, (8, 16)), VSSL2Connector(scan="bi", d_state=4), MambaDecoder(d_model=16, n_layer=2,
        vocab_size=50277), tokenizer=str(tokenizer_path), stage="finetune", init_connector_from=str(ckpt),
    )
    for name, value in first.connector.state_dict().items():
        assert torch.equal(module.model.connector.state_dict()[name], value), name
    assert module.block_classes() == {ConvBlock, MambaBlock}


def test_fsdp_checkpointing_leaves_the_mamba_blocks_to_the_decoder(tokenizer_path: Path) -> None:
    def lit_module(stage: str) -> VLMambaLitModule:
        return VLMambaLitModule(
            ConvEncoder(16, (8, 16)), VSSL2Connector(scan="bi", d_state=4), MambaDecoder(d_model=16, n_layer=2,
            vocab_size=50277), tokenizer=str(tokenizer_path), stage=stage,
        )

    module = lit_module("finetune")
    plain = VLMambaFSDPStrategy()
    plain.connect(module)
    assert plain._wrapper_checkpointed(module.block_classes()) == ()
    assert not module.model.decoder.gradient_checkpointing
    strategy = VLMambaFSDPStrategy(checkpoint_blocks=True)
    strategy.connect(module)
    # A decoder that trains checkpoints its own blocks (one tensor kept per block); FSDP's wrapper takes the
    # encoder's.
    assert strategy._wrapper_checkpointed(module.block_classes()) == (ConvBlock,)
    assert module.model.decoder.gradient_checkpointing
    # A frozen decoder (the align stage) stays with FSDP's wrapper.
    frozen = lit_module("align")
    strategy = VLMambaFSDPStrategy(checkpoint_blocks=True)
    strategy.connect(frozen)
    assert set(strategy._wrapper_checkpointed(frozen.block_classes())) == {ConvBlock, MambaBlock}
    assert not frozen.model.decoder.gradient_checkpointing
