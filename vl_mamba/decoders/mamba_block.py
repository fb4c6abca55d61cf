"""One Mamba-1 block: residual add + RMSNorm, then the selective-scan mixer.

Parameter names follow mamba_ssm (``mixer.in_proj``, ``mixer.conv1d``, ``mixer.x_proj``, ``mixer.dt_proj``,
``mixer.A_log``, ``mixer.D``, ``mixer.out_proj``, ``norm``) so that state-spaces checkpoints load unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vl_mamba.decoders.config import MambaConfig
from vl_mamba.ops import (
    add_rms_norm,
    add_rms_norm_linear_decode,
    causal_conv1d_fn,
    conv_state_from_input,
    in_proj_channel_major,
    linear_decode,
    mamba_inner_fn,
    project_scan_inputs,
    selective_scan_fn,
    ssm_step,
)


@dataclass
class LayerState:
    """A layer's recurrent state for generation: the conv window and the SSM state."""

    conv: Tensor
    """Last d_conv inputs of the convolution, (batch, d_inner, d_conv)."""
    ssm: Tensor
    """SSM state, (batch, d_inner, d_state), float32."""
    A: Tensor | None = None
    """-exp(A_log) in float32, (d_inner, d_state): refreshed by every prefill, read by every step."""
    D: Tensor | None = None
    """D in float32, (d_inner,)."""
    dt_bias: Tensor | None = None
    """dt_proj.bias in float32, (d_inner,)."""


class RMSNorm(nn.Module):
    """RMSNorm with a learned scale; the fused residual add lives in ``vl_mamba.ops.add_rms_norm``."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.weight._no_weight_decay = True

    def forward(self, x: Tensor, residual: Tensor | None = None, residual_in_fp32: bool = True):
        """x, residual: (..., dim) -> (normed, new residual)."""
        return add_rms_norm(x, residual, self.weight, self.eps, residual_in_fp32)


class MambaMixer(nn.Module):
    """The Mamba-1 layer (selective SSM with a causal depthwise conv and a SiLU gate)."""

    def __init__(self, cfg: MambaConfig) -> None:
        super().__init__()
        d, e, n, r = cfg.d_model, cfg.d_inner, cfg.d_state, cfg.dt_rank
        self.d_state, self.d_conv, self.dt_rank = n, cfg.d_conv, r
        self.in_proj = nn.Linear(d, 2 * e, bias=cfg.bias)
        self.conv1d = nn.Conv1d(e, e, cfg.d_conv, groups=e, padding=cfg.d_conv - 1, bias=cfg.conv_bias)
        self.x_proj = nn.Linear(e, r + 2 * n, bias=False)
        self.dt_proj = nn.Linear(r, e, bias=True)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(e, 1))
        self.D = nn.Parameter(torch.ones(e))
        self.out_proj = nn.Linear(e, d, bias=cfg.bias)
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True
        init_dt_proj(self.dt_proj, r, cfg.dt_min, cfg.dt_max, cfg.dt_init_floor)
        self.checkpoint_lvl = 1
        """mamba_ssm's ``checkpoint_lvl`` for the fused layer body (``mamba_inner_fn``): 1 recomputes the conv's output
        and delta in the backward, 0 keeps them (a faster backward for two more (batch, d_inner, L) tensors a layer).
        Set by the decoder."""
        self.recomputed = False
        """True while the layer runs under the decoder's activation checkpointing (its saved activations then
        live one block at a time): a layer whose own weights are frozen then takes the unfused ops, whose backward
        computes no weight gradients, where mamba_ssm's fused backward computes them all (out_proj's alone costs
        as much as its forward product). Without checkpointing the fused path stays, since it stores less
        (it recomputes the conv in the backward)."""

    def _weights_trained(self) -> bool:
        # The tensors themselves rather than ``parameters()``: FSDP replaces the registered parameters with plain
        # views of its flat parameter while it runs a forward. in_proj's product runs outside the Mamba ops.
        weights = (self.conv1d.weight, self.conv1d.bias, self.x_proj.weight, self.dt_proj.weight,
                   self.dt_proj.bias, self.A_log, self.D, self.out_proj.weight, self.out_proj.bias)
        return any(w is not None and w.requires_grad for w in weights)

    def forward(self, hidden: Tensor, state: LayerState | None = None, mask: Tensor | None = None) -> Tensor:
        """Whole sequences.

        Args:
            hidden: (batch, L, d_model).
            state: when given, filled with the state after the last position (for generation).
            mask: (batch, L), False at left-padding positions; they leave the state exactly as zero.

        Returns:
            (batch, L, d_model).
        """
        # (batch, 2 * d_inner, L) with L the unit-stride axis: x and z reach the conv and the scan uncopied.
        xz = in_proj_channel_major(hidden, self.in_proj.weight, self.in_proj.bias)
        if state is None and mask is None and not (self.recomputed and not self._weights_trained()):
            return mamba_inner_fn(
                xz, self.conv1d.weight, self.conv1d.bias, self.x_proj.weight, self.dt_proj.weight,
                self.out_proj.weight, self.out_proj.bias, None, self.D.float(), self.dt_proj.bias.float(),
                self.checkpoint_lvl, A_log=self.A_log.float(),
            )
        A = -torch.exp(self.A_log.float())
        x, z = xz.chunk(2, dim=1)
        if mask is not None:
            keep = mask.unsqueeze(1).to(x.dtype)
            x = x * keep
        if state is not None:
            state.conv.copy_(conv_state_from_input(x, self.d_conv))
        x = causal_conv1d_fn(x, self.conv1d.weight.squeeze(1), self.conv1d.bias, activation="silu")
        if mask is not None:
            x = x * keep  # zero input at padding: the state stays exactly zero until the first real token
        dt, B, C = project_scan_inputs(x, self.x_proj.weight, self.dt_proj.weight)
        out = selective_scan_fn(
            x, dt, A, B, C, self.D.float(), z, delta_bias=self.dt_proj.bias.float(), delta_softplus=True,
            return_last_state=state is not None,
        )
        if state is not None:
            out, last = out
            state.ssm.copy_(last)
            self._store_constants(state, A)
        return self.out_proj(out.transpose(1, 2))

    def _store_constants(self, state: LayerState, A: Tensor) -> None:
        """Float32 copies of the step's parameter-derived constants, computed once per prompt, not per token."""
        with torch.no_grad():
            for name, value in (("A", A), ("D", self.D.float()), ("dt_bias", self.dt_proj.bias.float())):
                buffer = getattr(state, name)
                if buffer is None:
                    setattr(state, name, value.detach().clone())
                else:
                    buffer.copy_(value)

    def step(self, hidden: Tensor, state: LayerState) -> Tensor:
        """One token: hidden (batch, d_model) -> (batch, d_model); ``state`` advances in place."""
        return self.step_projected(linear_decode(hidden, self.in_proj.weight, self.in_proj.bias), state)

    def step_projected(self, xz: Tensor, state: LayerState) -> Tensor:
        """``step`` from in_proj's output xz (batch, 2 * d_inner) on."""
        # The projections are matrix-vector products at batch 1: linear_decode runs them closer to bandwidth,
        # and ssm_step fuses what lies between them (conv, x_proj, dt_proj, state update) into two kernels.
        x, z = xz.chunk(2, dim=-1)
        if state.A is None:
            self._store_constants(state, -torch.exp(self.A_log.float()))
        y = ssm_step(
            x, z, state.conv, state.ssm, self.conv1d.weight.squeeze(1), self.conv1d.bias, self.x_proj.weight,
            self.dt_proj.weight, state.A, state.D, state.dt_bias,
        )
        return linear_decode(y, self.out_proj.weight, self.out_proj.bias)

    def allocate_state(self, batch: int, device: torch.device, dtype: torch.dtype) -> LayerState:
        e = self.in_proj.out_features // 2
        state = LayerState(
            conv=torch.zeros(batch, e, self.d_conv, device=device, dtype=dtype),
            ssm=torch.zeros(batch, e, self.d_state, device=device, dtype=torch.float32),
        )
        self._store_constants(state, -torch.exp(self.A_log.float()))
        return state


class MambaBlock(nn.Module):
    """``residual += hidden; hidden = mixer(norm(residual))``: mamba_ssm's Block with an RMSNorm."""

    def __init__(self, cfg: MambaConfig) -> None:
        super().__init__()
        self.residual_in_fp32 = cfg.residual_in_fp32
        self.norm = RMSNorm(cfg.d_model, cfg.norm_epsilon)
        self.mixer = MambaMixer(cfg)

    def forward(
        self, hidden: Tensor, residual: Tensor | None, state: LayerState | None = None, mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """hidden, residual: (batch, L, d_model) -> the same two after this block."""
        hidden, residual = self.norm(hidden, residual, self.residual_in_fp32)
        return self.mixer(hidden, state, mask), residual

    def step(self, hidden: Tensor, residual: Tensor | None, state: LayerState) -> tuple[Tensor, Tensor]:
        """hidden, residual: (batch, d_model)."""
        # One kernel for the norm and in_proj at batch 1 (add_rms_norm_linear_decode).
        in_proj = self.mixer.in_proj
        xz, residual = add_rms_norm_linear_decode(
            hidden, residual, self.norm.weight, self.norm.eps, self.residual_in_fp32, in_proj.weight, in_proj.bias
        )
        return self.mixer.step_projected(xz, state), residual


def init_dt_proj(dt_proj: nn.Linear, rank: int, dt_min: float, dt_max: float, floor: float) -> None:
    """Mamba's time-step initialisation: softplus(bias) log-uniform in [dt_min, dt_max], small weights."""
    with torch.no_grad():
        std = rank**-0.5
        dt_proj.weight.uniform_(-std, std)
        dt = torch.exp(torch.rand(dt_proj.out_features) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=floor)
        dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse of softplus
    dt_proj.bias._no_weight_decay = True
    dt_proj.bias._no_reinit = True
