"""BitNet b1.58 linear layer: ternary weights, 8-bit activations, trained with the straight-through estimator.

Training keeps a full-precision latent weight and quantizes on the fly:

    x   -> per-token absmax int8: a = 127 / max|x|, q = round(x * a)
    W   -> absmean ternary: s = mean|W|, t = clamp(round(W / s), -1, 1)
    r   =  1 / sqrt(mean(q^2) / a^2 + eps)      the input RMSNorm (no learned scale), from the int8 codes
    y   =  (q @ t^T) * (s / a * r) (+ bias)

The input norm scales each token by one number, and absmax quantization does not see a token's scale, so the
norm folds into the output scale: it is RMSNorm(x) quantized, with the mean square taken over the dequantized
input q / a. Every sum is of integers (q @ t^T in fp32, sum q^2 in fp64), exact in any order, and the scalar
r is a fixed sequence of correctly rounded operations; so a CPU kernel that reads the 2-bit codes
(ternary_linear.c) gives the very numbers the training path gives. The straight-through estimator passes the
gradient unchanged through both quantizers: it is the gradient of RMSNorm(x)_q @ W_q^T with W_q = t * s.

Serving packs the ternary values 2 bits each (four per byte along the input dimension, value + 1 in {0, 1, 2})
with one fp32 scale per matrix. A layer restored from its packed form holds t (as floats, for the matmul of a
long prompt) and s, and gives the same output bit for bit as the training path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from model.config import NanoPrimeConfig
from model.modules import cpu_kernels
from model.modules.norm import cast, rms_norm, upcast

INIT_STD = 0.02
_SHIFTS = (0, 2, 4, 6)


def ternarize(weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Absmean quantization: values in {-1, 0, +1} (in the weight's dtype) and the scale mean|W| (>= fp32)."""
    wf = upcast(weight)
    scale = wf.abs().mean().clamp(min=eps)
    return (wf / scale).round().clamp(-1, 1).to(weight.dtype), scale


def activation_codes(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token absmax 8-bit quantization: integer codes q (as >= fp32 floats) and the scale a, q ~ x * a."""
    xf = upcast(x)
    scale = xf.abs().amax(dim=-1, keepdim=True).clamp(min=eps).reciprocal() * 127.0
    return (xf * scale).round(), scale


def quantize_activations(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Per-token absmax fake quantization to 8 bits (the int8 grid mapped back to x's scale)."""
    codes, scale = activation_codes(x, eps)
    return (codes / scale).to(x.dtype)


def output_factor(
    codes: torch.Tensor, act_scale: torch.Tensor, scale: torch.Tensor, normalize: bool, eps: float
) -> torch.Tensor:
    """The fp32 factor of each token's integer sums: s / a, times r = 1 / sqrt(mean(q^2) / a^2 + eps) when the
    layer normalizes its input. Computed in fp64 step by step as ternary_linear.c does it."""
    if not normalize:
        return scale / act_scale
    a = act_scale.double()
    mean_square = codes.square().sum(-1, keepdim=True, dtype=torch.float64) / codes.shape[-1] / (a * a)
    r = 1.0 / torch.sqrt(mean_square + eps)
    return (scale.double() / a * r).float()


def ternary_product(
    x: torch.Tensor,
    values: torch.Tensor,
    scale: torch.Tensor,
    quantize: bool,
    eps: float,
    normalize: bool = False,
) -> torch.Tensor:
    """(q @ t^T) * (s / a [* r]) with quantized activations, else (x [normalized] @ t^T) * s.

    Training and serving share this; `normalize` is the layer's input RMSNorm (see the module docstring).
    """
    if not quantize:
        x = rms_norm(x, eps) if normalize else x
        return F.linear(x, values) * scale.to(x.dtype)
    codes, act_scale = activation_codes(x, eps)
    factor = output_factor(codes, act_scale, scale, normalize, eps)
    return cast(F.linear(codes.to(values.dtype), values) * factor, x.dtype)


class _StraightThrough(torch.autograd.Function):
    """ternary_product of x forward; backward as if y = normed_q @ (t * s)^T, both quantizers the identity.

    `normed` is x after the layer's input norm (x itself without one), computed by autograd outside: its
    gradient flows on through the norm. The forward value comes from x, the way serving computes it.
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(
        ctx,
        x: torch.Tensor,
        normed: torch.Tensor,
        weight: torch.Tensor,
        eps: float,
        quantize: bool,
        normalize: bool,
    ) -> torch.Tensor:
        values, scale = ternarize(weight, eps)
        ctx.save_for_backward(normed, values, scale)
        ctx.eps, ctx.quantize = eps, quantize
        if not quantize:
            return ternary_product(normed, values, scale, False, eps)
        return ternary_product(x, values, scale, True, eps, normalize)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        normed, values, scale = ctx.saved_tensors
        grad_normed = grad_w = None
        if ctx.needs_input_grad[1]:
            grad_normed = (grad @ values.to(grad.dtype)) * scale.to(grad.dtype)
        if ctx.needs_input_grad[2]:
            x_q = quantize_activations(normed, ctx.eps) if ctx.quantize else normed
            grad_w = grad.reshape(-1, grad.shape[-1]).t() @ x_q.reshape(-1, normed.shape[-1]).to(grad.dtype)
        return None, grad_normed, grad_w, None, None, None


@dataclass
class PackedTernary:
    """Serving form of one BitLinear weight: 2-bit codes (out, ceil(in / 4)) uint8 and an fp32 scale."""

    data: torch.Tensor
    scale: torch.Tensor
    in_features: int


def pack_ternary(values: torch.Tensor) -> torch.Tensor:
    """Pack a (out, in) tensor of {-1, 0, +1} into (out, ceil(in / 4)) uint8, four values per byte."""
    if values.dim() != 2:
        raise ValueError(f"pack_ternary expects a 2-D weight, got shape {tuple(values.shape)}")
    codes = values.round().to(torch.int16) + 1
    if bool(((codes < 0) | (codes > 2)).any()) or not torch.equal(codes.to(values.dtype) - 1, values):
        raise ValueError("pack_ternary expects every value in {-1, 0, +1}")
    out_features, in_features = values.shape
    pad = (-in_features) % 4
    codes = F.pad(codes, (0, pad), value=1).to(torch.uint8).view(out_features, -1, 4)
    packed = torch.zeros(codes.shape[:2], dtype=torch.uint8, device=values.device)
    for i, shift in enumerate(_SHIFTS):
        packed |= codes[..., i] << shift
    return packed


def unpack_ternary(packed: torch.Tensor, in_features: int) -> torch.Tensor:
    """Inverse of pack_ternary: int8 values in {-1, 0, +1} of shape (out, in_features)."""
    if packed.dtype != torch.uint8 or packed.dim() != 2:
        raise ValueError(
            f"packed ternary weights must be a 2-D uint8 tensor, got {packed.dtype} {tuple(packed.shape)}"
        )
    if packed.shape[1] != (in_features + 3) // 4:
        raise ValueError(
            f"packed weight has {packed.shape[1]} bytes per row; {in_features} inputs need "
            f"{(in_features + 3) // 4}"
        )
    shifts = torch.tensor(_SHIFTS, dtype=torch.uint8, device=packed.device)
    codes = (packed.unsqueeze(-1) >> shifts) & 3
    if bool((codes == 3).any()):
        raise ValueError("packed ternary weights contain the invalid 2-bit code 3")
    return (codes.view(packed.shape[0], -1)[:, :in_features].to(torch.int8) - 1).contiguous()


class BitLinear(nn.Module):
    """A linear layer with ternary weights and (optionally) 8-bit activations; see the module docstring.

    `input_norm=False, quantize_activations=False` leaves only the weight quantization, which keeps the layer
    linear in its input (MLA's latent up-projection relies on this to absorb it into the query and output).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        eps: float = 1e-5,
        input_norm: bool = True,
        quantize_activations: bool = True,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.eps = eps
        self.input_norm = input_norm
        self.quantize_activations = quantize_activations
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        # Set only in the serving form: then `weight` holds the ternary values t (frozen), this their scale s.
        self.register_buffer("weight_scale", None)
        self._kernel_blocks: torch.Tensor | None = None  # t in the CPU kernel's layout, when it is available
        self._kernel_scale = 0.0  # s as a Python float for the kernel call
        self._dense: torch.Tensor | None = None  # t * s, kept by the serving form once asked for
        nn.init.normal_(self.weight, std=INIT_STD)

    @property
    def is_packed(self) -> bool:
        return self.weight_scale is not None

    def quantized_weight(self) -> torch.Tensor:
        """The matrix W_q = t * s the layer multiplies with (no gradient; for weight absorption).

        The serving form computes it once: MLA's decoding step asks for it in every layer, every token.
        """
        with torch.no_grad():
            if not self.is_packed:
                values, scale = ternarize(self.weight, self.eps)
                return values * scale.to(values.dtype)
            if self._dense is None:
                self._dense = self.weight * self.weight_scale.to(self.weight.dtype)
            return self._dense

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.is_packed:
            normed = rms_norm(x, self.eps) if self.input_norm else x
            y = _StraightThrough.apply(
                x, normed, self.weight, self.eps, self.quantize_activations, self.input_norm
            )
        elif self._kernel_blocks is not None and self._kernel_fits(x):
            bias = None if self.bias is None else self.bias.detach()
            return cpu_kernels.ternary_linear(
                x, self._kernel_blocks, self.out_features, self._kernel_scale, bias, self.eps, self.input_norm
            )
        else:
            y = ternary_product(
                x, self.weight, self.weight_scale, self.quantize_activations, self.eps, self.input_norm
            )
        return y if self.bias is None else y + self.bias

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001, ANN202 (nn.Module's signature)
        """Module.to(dtype) and friends leave the scale s in fp32: it is part of the exact arithmetic."""
        scale = self.weight_scale
        self._dense = None
        super()._apply(fn, recurse)
        if scale is not None:
            self.weight_scale = scale.to(device=self.weight.device, dtype=torch.float32)
        return self

    def _kernel_fits(self, x: torch.Tensor) -> bool:
        """fp32 CPU inputs; long ones only where torch's matmul has too few threads to beat the kernel."""
        return (
            x.dtype == torch.float32
            and x.device.type == "cpu"
            and (
                x.numel() <= cpu_kernels.MAX_ROWS * self.in_features
                or torch.get_num_threads() <= cpu_kernels.ALL_ROWS_THREADS
            )
            and not (x.requires_grad and torch.is_grad_enabled())
            and (self.bias is None or self.bias.dtype == torch.float32)
        )

    # ---- serving form --------------------------------------------------------------------------------------
    def pack(self) -> PackedTernary:
        """The 2-bit packed ternary weight and its fp32 scale."""
        with torch.no_grad():
            if self.is_packed:
                scale, values = self.weight_scale.float(), self.weight.float()
            else:
                values, scale = ternarize(self.weight, self.eps)
            return PackedTernary(
                pack_ternary(values.float()), scale.detach().float().clone(), self.in_features
            )

    @torch.no_grad()
    def load_packed(self, packed: PackedTernary) -> None:
        """Switch this layer to the serving form holding `packed` (frozen: it no longer trains)."""
        if packed.in_features != self.in_features or packed.data.shape[0] != self.out_features:
            raise ValueError(
                f"packed weight is for a {packed.in_features}->{packed.data.shape[0]} layer, "
                f"this layer is {self.in_features}->{self.out_features}"
            )
        if (
            packed.scale.numel() != 1
            or not bool(torch.isfinite(packed.scale).all())
            or float(packed.scale) <= 0
        ):
            raise ValueError(f"packed weight scale must be one positive finite number, got {packed.scale}")
        scale = packed.scale.reshape(()).to(device=self.weight.device, dtype=torch.float32)
        values = unpack_ternary(packed.data.to(self.weight.device), self.in_features)
        self.weight = nn.Parameter(values.to(self.weight.dtype), requires_grad=False)
        self.weight_scale = scale
        self._dense = None
        self._kernel_scale = float(scale)
        self._kernel_blocks = (
            cpu_kernels.pack_blocks(values)
            if self.quantize_activations and values.device.type == "cpu" and cpu_kernels.enabled()
            else None
        )

    @classmethod
    def from_packed(
        cls,
        packed: PackedTernary,
        bias: torch.Tensor | None = None,
        eps: float = 1e-5,
        input_norm: bool = True,
        quantize_activations: bool = True,
    ) -> BitLinear:
        """Build a serving-form layer from its packed weight (and optional bias)."""
        layer = cls(
            packed.in_features, packed.data.shape[0], bias is not None, eps, input_norm, quantize_activations
        )
        layer.load_packed(packed)
        if bias is not None:
            layer.bias.data.copy_(bias)
        return layer

    def extra_repr(self) -> str:
        return (
            f"{self.in_features}, {self.out_features}, bias={self.bias is not None}, "
            f"input_norm={self.input_norm}, quantize_activations={self.quantize_activations}, "
            f"packed={self.is_packed}"
        )


def make_linear(
    config: NanoPrimeConfig,
    in_features: int,
    out_features: int,
    *,
    bias: bool = False,
    input_norm: bool = True,
    quantize_activations: bool = True,
) -> nn.Module:
    """BitLinear for a block's linear layer, or a plain nn.Linear when config.bitnet.enabled is False."""
    if config.bitnet.enabled:
        quantize = quantize_activations and config.bitnet.quantize_activations
        return BitLinear(in_features, out_features, bias, config.bitnet.eps, input_norm, quantize)
    layer = nn.Linear(in_features, out_features, bias=bias)
    nn.init.normal_(layer.weight, std=INIT_STD)
    if bias:
        nn.init.zeros_(layer.bias)
    return layer


def effective_weight(layer: nn.Module) -> torch.Tensor:
    """The matrix a BitLinear or nn.Linear really multiplies with (for weight absorption)."""
    if isinstance(layer, BitLinear):
        return layer.quantized_weight()
    if isinstance(layer, nn.Linear):
        return layer.weight
    raise TypeError(f"effective_weight expects BitLinear or nn.Linear, got {type(layer).__name__}")
