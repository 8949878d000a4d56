"""SwiGLU feed-forward with BitLinear projections: down(silu(gate(x)) * up(x))."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.config import NanoPrimeConfig
from model.modules import cpu_kernels
from model.modules.bitnet import make_linear


class SwiGLU(nn.Module):
    """Gate and up projections share one matrix (one input norm and activation quantization for both)."""

    def __init__(self, config: NanoPrimeConfig, hidden: int | None = None) -> None:
        super().__init__()
        self.hidden = hidden or config.ffn_hidden
        self.gate_up = make_linear(config, config.d_model, 2 * self.hidden)
        self.down = make_linear(config, self.hidden, config.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up = self.gate_up(x)
        if self._kernel_fits(gate_up):
            return self.down(cpu_kernels.swiglu(gate_up))
        gate, up = gate_up.chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)

    def _kernel_fits(self, gate_up: torch.Tensor) -> bool:
        """fp32 on the CPU without autograd, where the C kernel is built (and wanted)."""
        return (
            gate_up.dtype == torch.float32
            and gate_up.device.type == "cpu"
            and not (torch.is_grad_enabled() and gate_up.requires_grad)
            and cpu_kernels.enabled()
        )
