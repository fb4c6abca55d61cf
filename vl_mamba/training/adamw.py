"""AdamW that also writes a bf16 copy of the weights the model reads in bf16 (``vl_mamba.ops.weight_copies``).

``torch.optim.AdamW`` with the same arguments, state and ``state_dict`` (checkpoints move between the two), and
torch's own step (fused where asked) for every parameter but those that a module marked with ``mark_for_copy``
(the Mamba layers' in_proj, x_proj, dt_proj and out_proj weights). Those, where they are float32 CUDA tensors with
float32 gradients, are updated by one Triton kernel per group and step that writes each weight's bf16 copy as it
writes the weight: the forward then reads the copies instead of casting 2.6 billion weights again (Mamba-2.8B).
The update is torch's AdamW (decoupled weight decay, bias corrections), up to float32 rounding; ``amsgrad``,
``maximize``, ``capturable`` and ``differentiable`` groups keep torch's step for every parameter.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vl_mamba.ops.weight_copies import attach_copy, release_copy, wants_copy

__all__ = ["AdamW"]

_BLOCK = 4096
"""Elements per program of the kernel."""


def _torch_step(optimizer: torch.optim.AdamW) -> None:
    """torch's AdamW step, without the optimizer hooks (ours runs them) that torch adds to the class it builds."""
    step = torch.optim.AdamW.step
    if getattr(step, "hooked", False):
        step = step.__wrapped__
    step(optimizer)


class AdamW(torch.optim.AdamW):
    """``torch.optim.AdamW`` that writes bf16 copies of the marked weights as it updates them."""

    def __init__(self, params, *args, **kwargs) -> None:
        super().__init__(params, *args, **kwargs)
        self._owners: dict[tuple[int, ...], Tensor] = {}

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        own = [[p for p in group["params"] if self._takes(group, p)] for group in self.param_groups]
        everything = [group["params"] for group in self.param_groups]
        try:
            for group, mine in zip(self.param_groups, own, strict=True):
                ids = {id(p) for p in mine}
                group["params"] = [p for p in group["params"] if id(p) not in ids]
            _torch_step(self)
        finally:
            for group, params in zip(self.param_groups, everything, strict=True):
                group["params"] = params
        for group, mine in zip(self.param_groups, own, strict=True):
            if mine:
                self._step_with_copies(group, mine)
        return loss

    @staticmethod
    def _takes(group: dict, p: Tensor) -> bool:
        plain = not any(group.get(k) for k in ("amsgrad", "maximize", "capturable", "differentiable"))
        return (plain and p.grad is not None and wants_copy(p) and p.is_cuda and p.dtype == torch.float32
                and p.grad.dtype == torch.float32 and not p.grad.is_sparse and p.grad.is_contiguous()
                and p.is_contiguous())

    def _state_of(self, p: Tensor) -> dict:
        state = self.state[p]
        if not state:
            state["step"] = torch.tensor(0.0)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
        elif state["step"].device.type != "cpu":  # a fused optimizer's state keeps the count on the GPU
            state["step"] = state["step"].cpu()
        return state

    def _step_with_copies(self, group: dict, params: list[Tensor]) -> None:
        from vl_mamba.ops._adamw_triton import adamw_kernel

        states = [self._state_of(p) for p in params]
        by_step: dict[float, list[int]] = {}
        for i, state in enumerate(states):
            state["step"] += 1
            by_step.setdefault(float(state["step"]), []).append(i)
        beta1, beta2 = group["betas"]
        lr = float(group["lr"])
        device = params[0].device
        for step, members in by_step.items():
            for i in members:  # the last step's copies go first, so that the new ones may take their memory
                release_copy(params[i])
            copies = [torch.empty_like(params[i], dtype=torch.bfloat16) for i in members]
            rows, first = [], 0
            for i, copy in zip(members, copies, strict=True):
                p, state = params[i], states[i]
                rows.append([p.data_ptr(), p.grad.data_ptr(), state["exp_avg"].data_ptr(),
                             state["exp_avg_sq"].data_ptr(), copy.data_ptr(), p.numel(), first])
                first += -(-p.numel() // _BLOCK)
            table = torch.tensor(rows, dtype=torch.int64, pin_memory=device.type == "cuda")
            table = table.to(device, non_blocking=True)
            owner = self._owner_table([params[i].numel() for i in members], device)
            correction1, correction2 = 1 - beta1**step, (1 - beta2**step) ** 0.5
            adamw_kernel[(first,)](table, owner, lr, beta1, beta2, group["eps"], group["weight_decay"],
                                   lr / correction1, correction2, BLOCK=_BLOCK, num_warps=8)
            for i, copy in zip(members, copies, strict=True):
                # The kernel wrote the weight behind autograd's back: count it as an in-place change, as torch's
                # optimizers' writes are, before the copy takes the weight's new version.
                torch.autograd.graph.increment_version(params[i])
                attach_copy(params[i], copy)

    def _owner_table(self, sizes: list[int], device: torch.device) -> Tensor:
        """For every chunk of ``_BLOCK`` elements, the index of the tensor it belongs to (kept per list of sizes)."""
        key = (device.index or 0, *sizes)
        owner = self._owners.get(key)
        if owner is None:
            counts = torch.tensor([-(-n // _BLOCK) for n in sizes])
            owner = torch.repeat_interleave(torch.arange(len(sizes), dtype=torch.int32), counts).to(device)
            self._owners[key] = owner
        return owner
