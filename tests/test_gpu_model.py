"""GPU paths of the whole model: the fused CUDA decoder against the PyTorch path, the VSS connector on
CUDA against the CPU, CUDA-graph generation against plain decoding, and the host waiting for the GPU once in a
training step. Skipped without CUDA."""

from __future__ import annotations

import traceback
import warnings

import pytest
import torch

from vl_mamba.connectors import VSSL2Connector
from vl_mamba.decoders import MambaDecoder
from vl_mamba.encoders import TimmViTEncoder
from vl_mamba.generation import GenerationConfig, generate_tokens
from vl_mamba.model import VLMamba

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def test_decoder_fused_cuda_matches_cpu() -> None:
    pytest.importorskip("mamba_ssm", reason="needs mamba-ssm's CUDA kernels")
    torch.manual_seed(0)
    decoder = MambaDecoder(d_model=128, n_layer=3, vocab_size=1000)
    ids = torch.randint(0, 1000, (2, 97))
    with torch.no_grad():
        cpu = decoder(ids)
        gpu = decoder.cuda()(ids.cuda()).cpu()
    assert _rel(gpu, cpu) < 1e-3


def test_decoder_step_matches_forward_on_cuda() -> None:
    torch.manual_seed(0)
    decoder = MambaDecoder(d_model=64, n_layer=2, vocab_size=500).cuda().eval()
    ids = torch.randint(0, 500, (3, 20), device="cuda")
    with torch.no_grad():
        full = decoder(ids)
        states = decoder.allocate_states(3, torch.device("cuda"), torch.float32)
        steps = torch.stack([decoder.step(decoder.embed(ids[:, t]), states) for t in range(20)], dim=1)
    assert _rel(steps, full) < 1e-3


def test_vss_connector_cuda_matches_cpu() -> None:
    torch.manual_seed(0)
    connector = VSSL2Connector(48, 64, scan="cross")
    features = torch.randn(2, 35, 48)
    out_cpu = connector(features, (5, 7))
    out_cpu.square().sum().backward()
    grads_cpu = [p.grad.clone() for p in connector.parameters()]
    connector.zero_grad()
    connector.cuda()
    out_gpu = connector(features.cuda(), (5, 7))
    out_gpu.square().sum().backward()
    assert _rel(out_gpu.cpu(), out_cpu) < 1e-3
    for p, g in zip(connector.parameters(), grads_cpu):
        assert _rel(p.grad.cpu(), g) < 1e-2


def test_generation_cuda_graph_equals_eager() -> None:
    torch.manual_seed(0)
    encoder = TimmViTEncoder("vit_so400m_patch14_siglip_384", img_size=56,
                             model_kwargs=dict(embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0))
    model = VLMamba(encoder, VSSL2Connector(scan="bi"), MambaDecoder(d_model=64, n_layer=2, vocab_size=500),
                    image_token_id=500).cuda().eval()
    ids = torch.randint(2, 500, (3, 9))
    ids[:, 0] = 500
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[1, :3] = False
    pixels = torch.randn(3, 3, 56, 56)
    has = torch.ones(3, dtype=torch.bool)
    outs = []
    for graph in (False, True):
        config = GenerationConfig(max_new_tokens=20, cuda_graph=graph)
        outs.append(generate_tokens(model, ids, mask, pixels, has, config, (), 0, 500))
    assert torch.equal(outs[0], outs[1])


def test_generation_reuses_its_cuda_graph() -> None:
    torch.manual_seed(0)
    encoder = TimmViTEncoder("vit_so400m_patch14_siglip_384", img_size=56,
                             model_kwargs=dict(embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0))
    model = VLMamba(encoder, VSSL2Connector(scan="uni"), MambaDecoder(d_model=64, n_layer=2, vocab_size=500),
                    image_token_id=500).cuda().eval()
    config = GenerationConfig(max_new_tokens=12, cuda_graph=True)
    results = []
    for seed in (1, 2, 1):
        ids = torch.randint(2, 500, (2, 7), generator=torch.Generator().manual_seed(seed))
        mask = torch.ones_like(ids, dtype=torch.bool)
        results.append(generate_tokens(model, ids, mask, None, torch.zeros(2, dtype=torch.bool), config, (), 0, 500))
    assert len(model.decoder._decode_graphs) == 1
    assert torch.equal(results[0], results[2])
    eager = GenerationConfig(max_new_tokens=12, cuda_graph=False)
    ids = torch.randint(2, 500, (2, 7), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids, dtype=torch.bool)
    expected = generate_tokens(model, ids, mask, None, torch.zeros(2, dtype=torch.bool), eager, (), 0, 500)
    assert torch.equal(results[1], expected)


def test_scan_kernel_takes_channel_strided_inputs() -> None:
    """Views with a unit stride along L (slices of a channel-major projection) go to the kernel uncopied."""
    pytest.importorskip("mamba_ssm", reason="needs mamba-ssm's CUDA kernels")
    from vl_mamba.ops import selective_scan_fn, selective_scan_ref

    torch.manual_seed(0)
    batch, dim, length, n = 2, 64, 50, 8
    xz = torch.randn(batch, 2 * dim, length, device="cuda")
    u, z = xz.chunk(2, dim=1)  # (batch, dim, L) views, stride(-1) == 1, not contiguous
    proj = torch.randn(batch, 2 * n + dim, length, device="cuda")
    B, C, delta = proj.split([n, n, dim], dim=1)
    A = -torch.rand(dim, n, device="cuda") - 0.5
    D = torch.randn(dim, device="cuda")
    out, last = selective_scan_fn(u, delta, A, B, C, D, z, None, True, True)
    ref, ref_last = selective_scan_ref(u.contiguous(), delta.contiguous(), A, B.contiguous(), C.contiguous(), D,
                                       z.contiguous(), None, True, True)
    assert _rel(out, ref) < 1e-4 and _rel(last, ref_last) < 1e-4


def test_a_training_step_waits_for_the_gpu_once() -> None:
    """The splice reads its numbers back in one transfer; the forward after it and the backward never wait."""
    torch.manual_seed(0)
    encoder = TimmViTEncoder("vit_so400m_patch14_siglip_384", img_size=56,
                             model_kwargs=dict(embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0))
    model = VLMamba(encoder, VSSL2Connector(scan="bi"), MambaDecoder(d_model=64, n_layer=2, vocab_size=500),
                    image_token_id=500).cuda()
    ids = torch.randint(2, 500, (3, 12), device="cuda")
    ids[:2, 3] = 500
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[2, 8:] = False
    labels = ids.masked_fill((ids == 500) | ~mask, -100)
    pixels, has = torch.randn(2, 3, 56, 56, device="cuda"), torch.tensor([True, True, False], device="cuda")

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(ids, pixels, labels, mask, has).loss
        loss.backward()

    for _ in range(2):  # kernels built and loaded, Triton's kernels tuned
        step()
    torch.cuda.synchronize()
    waits = []

    def record(message, category, filename, lineno, file=None, line=None):
        if "called a synchronizing CUDA operation" in str(message):
            waits.append(f"{message}\n" + "".join(traceback.format_stack(limit=12)[:-1]))

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert len(waits) == 1 and "splicing.py" in waits[0], "\n\n".join(waits)
