"""``MambaDecoder``: logits against transformers' ``MambaForCausalLM`` with the same random weights, tiny
checkpoints written in the state-spaces and transformers formats, the errors for checkpoints that do not fit,
step-by-step decoding against the full forward, left padding that leaves the state exactly zero; and, on a
GPU, mamba_ssm's fused path against the CPU path."""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import json
import os

import pytest
import torch
from _helpers import assert_close_rel, needs_cuda

from vl_mamba.decoders import MambaDecoder

TINY = dict(d_model=32, n_layer=2, vocab_size=100, d_state=8, expand=2, d_conv=4)


def tiny_decoder(seed: int = 0, **overrides) -> MambaDecoder:
    """A tiny decoder with every parameter moved off its initial value (norm weights, D, A, conv bias...)."""
    torch.manual_seed(seed)
    decoder = MambaDecoder(**{**TINY, **overrides})
    with torch.no_grad():
        for name, p in decoder.named_parameters():
            scale = 0.02 if "embedding" in name else 0.1
            p.add_(scale * torch.randn_like(p))
    return decoder.eval()


@pytest.fixture(scope="module")
def hf():
    """transformers' Mamba classes, offline (their CPU path is the slow sequential one: keep models tiny)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    transformers = pytest.importorskip("transformers")
    if importlib.util.find_spec("causal_conv1d") is not None:
        # Seen with transformers 5.17 and causal-conv1d 1.7: its Mamba then calls the CUDA conv on CPU tensors.
        pytest.skip("transformers' Mamba runs causal-conv1d's CUDA kernel on CPU tensors where it is installed")
    return transformers


def hf_twin(hf, decoder: MambaDecoder):
    """transformers' MambaForCausalLM with the decoder's weights (only one key prefix differs)."""
    c = decoder.config
    config = hf.MambaConfig(
        hidden_size=c.d_model, num_hidden_layers=c.n_layer, vocab_size=c.padded_vocab_size, state_size=c.d_state,
        expand=c.expand, conv_kernel=c.d_conv, time_step_rank=c.dt_rank, layer_norm_epsilon=c.norm_epsilon,
        use_bias=c.bias, use_conv_bias=c.conv_bias, residual_in_fp32=c.residual_in_fp32, tie_word_embeddings=True,
    )
    model = hf.MambaForCausalLM(config).eval()
    state = {k.replace("backbone.embedding.", "backbone.embeddings."): v for k, v in decoder.state_dict().items()}
    model.load_state_dict(state, strict=True)
    return model


def test_parity_with_transformers(hf):
    decoder = tiny_decoder()
    twin = hf_twin(hf, decoder)
    ids = torch.randint(0, 100, (2, 13), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = decoder(input_ids=ids)
        theirs = twin(ids, use_cache=False).logits
        ours_embeds = decoder(inputs_embeds=decoder.embed(ids))
    assert ours.shape == theirs.shape == (2, 13, 104)
    assert_close_rel(ours, theirs, 1e-4, "logits")
    assert torch.equal(ours, ours_embeds)


def test_tied_and_padded_vocabulary():
    decoder = tiny_decoder()
    assert decoder.config.padded_vocab_size == 104 and decoder.vocab_size == 100
    assert decoder.lm_head.weight is decoder.backbone.embedding.weight
    assert decoder.backbone.embedding.weight.shape == (104, 32)
    assert decoder.backbone.layers[0].mixer.A_log._no_weight_decay


def test_state_spaces_checkpoint_round_trip(tmp_path):
    decoder = tiny_decoder()
    decoder.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert {"d_model", "n_layer", "vocab_size", "ssm_cfg", "rms_norm", "residual_in_fp32"} <= set(config)
    state = torch.load(tmp_path / "pytorch_model.bin", weights_only=True)
    assert "backbone.embedding.weight" in state and "backbone.layers.1.mixer.A_log" in state
    loaded = MambaDecoder.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 100, (2, 7))
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids), decoder(input_ids=ids))
    assert loaded.lm_head.weight is loaded.backbone.embedding.weight


@pytest.mark.parametrize("shards", [False, True], ids=["one-file", "sharded"])
def test_transformers_checkpoint_loads(hf, tmp_path, shards):
    torch.manual_seed(0)
    config = hf.MambaConfig(hidden_size=32, num_hidden_layers=2, vocab_size=100, state_size=8, expand=2,
                            conv_kernel=4, time_step_rank=3)  # vocab not a multiple of 8: no padding rows
    model = hf.MambaForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(tmp_path, max_shard_size="40KB" if shards else "1GB")
    assert (tmp_path / ("model.safetensors.index.json" if shards else "model.safetensors")).is_file()
    decoder = MambaDecoder.from_pretrained(tmp_path).eval()
    assert decoder.config.dt_rank == 3 and decoder.config.padded_vocab_size == 100
    ids = torch.randint(0, 100, (2, 9))
    with torch.no_grad():
        assert_close_rel(decoder(input_ids=ids), model(ids, use_cache=False).logits, 1e-4, "logits")


def _write(tmp_path, decoder, edit_config=None, edit_state=None):
    decoder.save_pretrained(tmp_path)
    if edit_config:
        config = json.loads((tmp_path / "config.json").read_text())
        edit_config(config)
        (tmp_path / "config.json").write_text(json.dumps(config))
    if edit_state:
        state = torch.load(tmp_path / "pytorch_model.bin", weights_only=True)
        edit_state(state)
        torch.save(state, tmp_path / "pytorch_model.bin")
    return tmp_path


def test_wrong_checkpoints_are_clear_errors(tmp_path):
    decoder = tiny_decoder()
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 32, "n_layer": 2}))
    with pytest.raises(ValueError, match="not a Mamba config"):
        MambaDecoder.from_pretrained(gpt2)

    mamba2 = _write(tmp_path / "mamba2", decoder, edit_config=lambda c: c["ssm_cfg"].update(layer="Mamba2"))
    with pytest.raises(ValueError, match="only Mamba-1"):
        MambaDecoder.from_pretrained(mamba2)

    wider = _write(tmp_path / "shape", decoder, edit_config=lambda c: c["ssm_cfg"].update(d_state=16))
    with pytest.raises(ValueError, match=r"does not fit MambaDecoder: shape mismatch .*A_log \(64, 8\) vs \(64, 16\)"):
        MambaDecoder.from_pretrained(wider)

    missing = _write(tmp_path / "missing", decoder, edit_state=lambda s: s.pop("backbone.layers.1.mixer.D"))
    with pytest.raises(ValueError, match=r"missing \['backbone.layers.1.mixer.D'\]"):
        MambaDecoder.from_pretrained(missing)

    extra = _write(tmp_path / "extra", decoder, edit_state=lambda s: s.update({"backbone.extra": torch.zeros(1)}))
    with pytest.raises(ValueError, match=r"unexpected \['backbone.extra'\]"):
        MambaDecoder.from_pretrained(extra)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        MambaDecoder.from_pretrained(empty)
    (empty / "config.json").write_text(json.dumps(decoder.config.to_state_spaces_dict()))
    with pytest.raises(FileNotFoundError, match="has none of"):
        MambaDecoder.from_pretrained(empty)
    with pytest.raises(ValueError, match="is a file"):
        MambaDecoder.from_pretrained(empty / "config.json")
    with pytest.raises(FileNotFoundError, match="no checkpoint directory"):
        MambaDecoder.from_pretrained(str(tmp_path / "absent"))


def test_config_clash_and_missing_sizes(tmp_path):
    decoder = tiny_decoder()
    decoder.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"d_model=64 \(checkpoint: 32\), n_layer=3 \(checkpoint: 2\) disagree"):
        MambaDecoder(pretrained=str(tmp_path), d_model=64, n_layer=3)
    MambaDecoder(pretrained=str(tmp_path), d_model=32, vocab_size=100)  # agreeing values are fine
    with pytest.raises(ValueError, match="needs n_layer when no pretrained"):
        MambaDecoder(d_model=32)
    with pytest.raises(ValueError, match="checkpoint_lvl must be 0 or 1"):
        MambaDecoder(d_model=32, n_layer=1, checkpoint_lvl=-1)
    kept = MambaDecoder(pretrained=str(tmp_path), checkpoint_lvl=0)
    assert [layer.mixer.checkpoint_lvl for layer in kept.backbone.layers] == [0, 0]


def test_step_decoding_equals_full_forward():
    decoder = tiny_decoder()
    embeds = decoder.embed(torch.randint(0, 100, (3, 11)))
    with torch.no_grad():
        full = decoder(inputs_embeds=embeds)
        states = decoder.allocate_states(3, torch.device("cpu"), torch.float32)
        steps = torch.stack([decoder.step(embeds[:, t], states) for t in range(11)], dim=1)
        assert_close_rel(steps, full, 1e-5, "step by step")
        # Prefill 6 positions as a whole sequence, then step through the rest.
        states = decoder.allocate_states(3, torch.device("cpu"), torch.float32)
        prefill = decoder.logits(decoder.forward_hidden(embeds[:, :6], states=states))
        rest = torch.stack([decoder.step(embeds[:, t], states) for t in range(6, 11)], dim=1)
    assert_close_rel(torch.cat([prefill, rest], dim=1), full, 1e-5, "prefill then steps")


def test_fused_path_equals_masked_path():
    """No state and no mask: ``mamba_inner_fn``; an all-true mask takes the unfused path; same logits."""
    decoder = tiny_decoder()
    embeds = decoder.embed(torch.randint(0, 100, (2, 9)))
    with torch.no_grad():
        fused = decoder.forward_hidden(embeds)
        unfused = decoder.forward_hidden(embeds, mask=torch.ones(2, 9, dtype=torch.bool))
    assert_close_rel(unfused, fused, 1e-6, "hidden")


def test_left_padding_mask_leaves_state_exactly_zero():
    decoder = tiny_decoder()
    lengths = [9, 5, 1]
    seqs = [decoder.embed(torch.randint(0, 100, (1, n))) for n in lengths]
    junk = torch.randn(3, 9, 32) * 3  # whatever sits in the padding must not leak
    padded = junk.clone()
    mask = torch.zeros(3, 9, dtype=torch.bool)
    for i, (n, seq) in enumerate(zip(lengths, seqs)):
        padded[i, 9 - n :] = seq[0]
        mask[i, 9 - n :] = True
    with torch.no_grad():
        # Padding alone: the state stays exactly zero.
        states = decoder.allocate_states(1, torch.device("cpu"), torch.float32)
        decoder.forward_hidden(junk[:1, :4], states=states, mask=torch.zeros(1, 4, dtype=torch.bool))
        assert all(not s.ssm.any() and not s.conv.any() for s in states)

        states = decoder.allocate_states(3, torch.device("cpu"), torch.float32)
        hidden = decoder.forward_hidden(padded, states=states, mask=mask)
        next_embeds = decoder.embed(torch.randint(0, 100, (3, 4)))
        batched_steps = torch.stack([decoder.step(next_embeds[:, t], states) for t in range(4)], dim=1)
        for i, (n, seq) in enumerate(zip(lengths, seqs)):
            alone = decoder.allocate_states(1, torch.device("cpu"), torch.float32)
            expected = decoder.forward_hidden(seq, states=alone)
            assert_close_rel(hidden[i, 9 - n :], expected[0], 1e-5, f"sequence {i}")
            steps = torch.stack([decoder.step(next_embeds[i : i + 1, t], alone) for t in range(4)], dim=1)
            assert_close_rel(batched_steps[i], steps[0], 1e-5, f"steps after sequence {i}")


def test_gradient_checkpointing_gives_the_same_gradients():
    ids = torch.randint(0, 100, (2, 8))
    grads = []
    for checkpointing in (False, True):
        decoder = tiny_decoder().train()
        decoder.gradient_checkpointing = checkpointing
        decoder(input_ids=ids).logsumexp(-1).mean().backward()
        grads.append({n: p.grad.clone() for n, p in decoder.named_parameters()})
    for name in grads[0]:
        assert_close_rel(grads[1][name], grads[0][name], 1e-6, name)


@contextlib.contextmanager
def fused_layer_calls():
    """Counts the calls of the fused Mamba layer (``mamba_inner_fn``) inside the block: yields the list of calls."""
    from vl_mamba.decoders import mamba_block

    fused, calls = mamba_block.mamba_inner_fn, []
    mamba_block.mamba_inner_fn = lambda *a, **k: calls.append(1) or fused(*a, **k)
    try:
        yield calls
    finally:
        mamba_block.mamba_inner_fn = fused


def frozen_checkpointed_run(device: str = "cpu") -> tuple[int, torch.Tensor, torch.Tensor]:
    """A frozen decoder under activation checkpointing, fed embeddings that want gradients (the first training
    stage, in which only the connector learns): how many times the fused layer ran, the logits, and the
    embeddings' gradient."""
    decoder = tiny_decoder(d_model=64, d_state=16).to(device).train().requires_grad_(False)
    decoder.gradient_checkpointing = True
    embeds = decoder.embed(torch.randint(0, 100, (2, 37)).to(device)).detach().requires_grad_(True)
    with fused_layer_calls() as calls:
        logits = decoder(inputs_embeds=embeds)
        logits.logsumexp(-1).mean().backward()
    return len(calls), logits.detach(), embeds.grad


def test_frozen_layers_under_checkpointing_take_the_unfused_path():
    """The unfused ops compute no weight gradients where no weight wants one; the fused layer runs wherever a
    weight of the layer trains, or without checkpointing."""
    calls, logits, grad = frozen_checkpointed_run()
    assert calls == 0
    decoder = tiny_decoder(d_model=64, d_state=16).train()
    decoder.gradient_checkpointing = True
    decoder.requires_grad_(False).backbone.layers[1].mixer.out_proj.weight.requires_grad_(True)
    with fused_layer_calls() as used:
        decoder(input_ids=torch.randint(0, 100, (2, 9))).sum().backward()
    # layer 1 trains out_proj: fused, in the forward and again in the backward's recomputation; layer 0 (frozen,
    # not recomputed since nothing before it wants a gradient) would have been a third
    assert len(used) == 2
    assert decoder.backbone.layers[1].mixer.out_proj.weight.grad is not None


def test_path_choice_sees_the_weights_as_fsdp_leaves_them():
    """During its forward FSDP replaces a block's registered parameters with plain views of its flat parameter;
    the frozen-or-trained test reads the weights themselves, so it answers the same in the forward and in the
    backward's recomputation."""
    mixer = tiny_decoder(d_model=64, d_state=16).backbone.layers[0].mixer.requires_grad_(False)
    for name, param in list(mixer.named_parameters()):
        owner_name, _, attr = name.rpartition(".")
        owner = mixer.get_submodule(owner_name)
        delattr(owner, attr)
        setattr(owner, attr, param.detach())
    assert not list(mixer.parameters())
    assert not mixer._weights_trained()
    mixer.out_proj.weight.requires_grad_(True)
    assert mixer._weights_trained()


@pytest.mark.parametrize(
    "device", ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, needs_cuda("mamba_ssm", "causal_conv1d")])]
)
def test_checkpointed_backward_after_another_forward(device):
    """The recomputation in the backward takes the path its forward took, even when another forward (here one
    without gradients, on which no block is checkpointed) ran in between. (On a GPU the two paths save different
    tensors, and checkpointing would refuse a recomputation that took the other.)"""
    decoder = tiny_decoder(d_model=64, d_state=16).to(device).train().requires_grad_(False)
    decoder.gradient_checkpointing = True
    embeds = decoder.embed(torch.randint(0, 100, (2, 11)).to(device)).detach().requires_grad_(True)
    loss = decoder(inputs_embeds=embeds).logsumexp(-1).mean()
    with torch.no_grad():
        decoder(inputs_embeds=embeds)
    loss.backward()
    reference = embeds.detach().requires_grad_(True)
    decoder.gradient_checkpointing = False
    decoder(inputs_embeds=reference).logsumexp(-1).mean().backward()
    assert_close_rel(embeds.grad, reference.grad, 1e-6, "gradient of the embeddings")
    assert not any(layer.mixer.recomputed for layer in decoder.backbone.layers)


def test_input_errors():
    decoder = tiny_decoder()
    with pytest.raises(ValueError, match="exactly one of input_ids and inputs_embeds"):
        decoder()
    with pytest.raises(ValueError, match="exactly one of input_ids and inputs_embeds"):
        decoder(input_ids=torch.zeros(1, 2, dtype=torch.long), inputs_embeds=torch.zeros(1, 2, 32))


# --- GPU: mamba_ssm's fused path against the CPU path ----------------------------------------------------------------


@pytest.mark.gpu
@needs_cuda("mamba_ssm", "causal_conv1d")
@pytest.mark.parametrize("own_scan", ["0", "1"], ids=["mamba_ssm", "own"])
def test_cuda_fused_decoder_matches_cpu(own_scan, monkeypatch):
    """The decoder on mamba_ssm's fused layer body and on this package's (``VL_MAMBA_CUDA_SCAN``)."""
    monkeypatch.setenv("VL_MAMBA_CUDA_SCAN", own_scan)
    decoder = tiny_decoder(d_model=64, d_state=16)
    gpu = copy.deepcopy(decoder).cuda()
    ids = torch.randint(0, 100, (2, 37))
    cpu_logits = decoder(input_ids=ids)
    gpu_logits = gpu(input_ids=ids.cuda())
    assert_close_rel(gpu_logits, cpu_logits, 2e-4, "logits")
    cpu_logits.logsumexp(-1).mean().backward()
    gpu_logits.logsumexp(-1).mean().backward()
    for (name, p_cpu), p_gpu in zip(decoder.named_parameters(), gpu.parameters()):
        assert_close_rel(p_gpu.grad, p_cpu.grad, 2e-3, f"grad of {name}")


@pytest.mark.gpu
@needs_cuda("mamba_ssm", "causal_conv1d")
def test_cuda_frozen_unfused_path_matches_cpu():
    calls, cpu_logits, cpu_grad = frozen_checkpointed_run()
    calls_gpu, gpu_logits, gpu_grad = frozen_checkpointed_run("cuda")
    assert calls == calls_gpu == 0
    assert_close_rel(gpu_logits, cpu_logits, 2e-4, "logits")
    assert_close_rel(gpu_grad, cpu_grad, 2e-3, "gradient of the embeddings")


@pytest.mark.gpu
@needs_cuda("mamba_ssm", "causal_conv1d")
def test_cuda_step_decoding_matches_cpu():
    decoder = tiny_decoder(d_model=64, d_state=16)
    gpu = copy.deepcopy(decoder).cuda()
    embeds = decoder.embed(torch.randint(0, 100, (2, 12))).detach()
    with torch.no_grad():
        full = decoder(inputs_embeds=embeds)
        states = gpu.allocate_states(2, torch.device("cuda"), torch.float32)
        prefill = gpu.logits(gpu.forward_hidden(embeds[:, :5].cuda(), states=states))
        rest = torch.stack([gpu.step(embeds[:, t].cuda(), states) for t in range(5, 12)], dim=1)
    assert_close_rel(torch.cat([prefill, rest], dim=1), full, 2e-4, "prefill then steps on the GPU")


def test_time_step_range_of_a_model_from_scratch(tmp_path):
    decoder = MambaDecoder(d_model=32, n_layer=2, vocab_size=100, dt_min=0.01, dt_max=0.5)
    steps = torch.cat([torch.nn.functional.softplus(layer.mixer.dt_proj.bias) for layer in decoder.backbone.layers])
    assert steps.min() >= 0.01 - 1e-6 and steps.max() <= 0.5 + 1e-6
    assert steps.max() > 0.1  # beyond mamba_ssm's default range: the setting took effect
    tiny_decoder().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"dt_min=0.01 \(checkpoint: 0.001\)"):
        MambaDecoder(pretrained=str(tmp_path), dt_min=0.01)  # an initialisation setting: the checkpoint has its own
