"""Parameter-free kernels: each fast function dispatches to a CUDA kernel when one is installed, and has a
pure-PyTorch ``_ref`` twin with the same signature that serves as its specification."""

from vl_mamba.ops.causal_conv1d import (
    causal_conv1d_fn,
    causal_conv1d_ref,
    causal_conv1d_torch,
    causal_conv1d_update,
    causal_conv1d_update_ref,
    conv_state_from_input,
)
from vl_mamba.ops.cross_entropy import cross_entropy_sum, cross_entropy_sum_ref
from vl_mamba.ops.decode_ssm import ssm_step, ssm_step_ref
from vl_mamba.ops.gemv import (
    add_rms_norm_linear_decode,
    add_rms_norm_linear_decode_ref,
    linear_decode,
    linear_decode_ref,
)
from vl_mamba.ops.mamba_inner import (
    in_proj_channel_major,
    mamba_inner_fn,
    mamba_inner_ref,
    project_scan_inputs,
)
from vl_mamba.ops.rms_norm import add_rms_norm, add_rms_norm_ref
from vl_mamba.ops.scan_triton import selective_scan_triton
from vl_mamba.ops.selective_scan import (
    linear_scan,
    selective_scan_fn,
    selective_scan_ref,
    selective_scan_torch,
    selective_state_update,
    selective_state_update_ref,
)

__all__ = [
    "add_rms_norm",
    "add_rms_norm_linear_decode",
    "add_rms_norm_linear_decode_ref",
    "add_rms_norm_ref",
    "causal_conv1d_fn",
    "causal_conv1d_ref",
    "causal_conv1d_torch",
    "causal_conv1d_update",
    "causal_conv1d_update_ref",
    "conv_state_from_input",
    "cross_entropy_sum",
    "cross_entropy_sum_ref",
    "in_proj_channel_major",
    "linear_decode",
    "linear_decode_ref",
    "linear_scan",
    "mamba_inner_fn",
    "mamba_inner_ref",
    "project_scan_inputs",
    "selective_scan_fn",
    "selective_scan_ref",
    "selective_scan_torch",
    "selective_scan_triton",
    "selective_state_update",
    "selective_state_update_ref",
    "ssm_step",
    "ssm_step_ref",
]
