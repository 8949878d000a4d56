"""The CPU decode kernels, built on first use and called through ctypes.

- BitLinear's (ternary_linear.c). Decoding multiplies one row per sequence by every weight matrix, so its
  speed is the bytes it reads: the 2-bit codes are 16x fewer than the fp32 matrix the torch path multiplies
  with, and one call replaces the dozen small torch ops of the activation quantizer. It gives the same
  numbers bit for bit as the torch path (integer sums, then the same fp32 scaling).
- MLA's decoding step (latent_attention.c): rope, cache write and absorbed attention in one call instead of
  some forty torch ops per layer, reading the cached bf16 latents once. It agrees with the torch path to float
  rounding, or with AVX512-BF16 to the bf16 rounding of the queries and softmax weights it multiplies.
- Mamba-2's decoding step (mamba2_step.c): conv, state update, readout and gated norm in one call instead of
  some thirty torch ops per layer, reading and writing each state once. It agrees with the torch path to
  float rounding.
- The LM head for a few rows (lm_head.c): the fp32 matrix read once, on all threads, where torch's matmul
  first copies it whole at every call (more than one row) or uses one thread (one row). It agrees with torch
  to float rounding.
- RMSNorm with its scale (rms_norm.c): one call where torch's composite F.rms_norm takes some ten ops, which
  cost more than the arithmetic at a decoding step's sizes. It agrees with torch to float rounding.
- SwiGLU's gate (swiglu.c): silu(gate) * up in one vectorized loop over the two halves of gate_up's output.
  It agrees with torch to float rounding.
- Sampling with temperature alone (sampling.c): one pass over the logits and a walk of one block, where the
  torch path takes a softmax, a cumulative sum and a search over the whole vocabulary. For a given draw it
  picks the torch path's token except within float rounding of a boundary between two tokens.

The library is compiled with the system C compiler (`cc`, or $CC) for this CPU into $NANOPRIME_KERNEL_DIR
(default ~/.cache/nanoprime), with OpenMP where the compiler has it (large products then use torch's threads);
without a compiler, or with NANOPRIME_KERNEL=0, layers use the torch path.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

SOURCES = tuple(
    Path(__file__).with_name(name)
    for name in (
        "ternary_linear.c",
        "latent_attention.c",
        "mamba2_step.c",
        "lm_head.c",
        "sampling.c",
        "rms_norm.c",
        "swiglu.c",
    )
)
HEADERS = tuple(Path(__file__).with_name(name) for name in ("fast_exp.h", "lane_sum.h"))
FLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-shared", "-fPIC"]
OPENMP = "-fopenmp"
TILE_OUTPUTS = 16  # ternary_linear.c's weight layout
CHUNK_INPUTS = 16
# Even on a single thread the kernel beat torch's fp32 matmul of the same integers at every row count on one
# or two threads (pocket 384 -> 2048, 256 rows: 1.7 ms vs 3.7 ms on one thread, 2.0 ms on two). Many threads
# were not measured against torch's matmul, which uses them well on long inputs: past MAX_ROWS rows the
# kernel serves only up to ALL_ROWS_THREADS threads.
MAX_ROWS = 64
ALL_ROWS_THREADS = 2
# The head kernel beat torch's matmul at every row count measured, 64 the most (benchmarks/lm_head.py,
# pocket's 8192 x 384: 4.9 vs 6.0 ms on one thread, 2.4 vs 3.4 on two, warm); prefills and training have more
# rows, and torch's packed matmul then puts its copy to good use.
HEAD_MAX_ROWS = 64


def enabled() -> bool:
    """Whether the kernels are wanted (NANOPRIME_KERNEL=0 turns them off) and could be built here."""
    return os.environ.get("NANOPRIME_KERNEL", "1") != "0" and library() is not None


@functools.cache
def library() -> ctypes.CDLL | None:
    """The kernels compiled for this CPU (with OpenMP if the compiler has it), built the first time; None
    where no C compiler is available."""
    lib = build((*FLAGS, OPENMP)) or build(tuple(FLAGS))
    if lib is None:
        log.warning("no CPU kernels could be built: BitLinear and MLA decode with the torch path")
    return lib


@functools.cache
def build(flags: tuple[str, ...]) -> ctypes.CDLL | None:
    """The kernels compiled with `flags` (cached on disk by sources and flags); None if that fails."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        log.info("no C compiler: BitLinear and MLA decode with the torch path")
        return None
    source = b"".join(path.read_bytes() for path in SOURCES + HEADERS)
    identity = " ".join([compiler, *flags, platform.machine(), _cpu_flags()])
    key = hashlib.sha256(source + identity.encode()).hexdigest()
    directory = Path(os.environ.get("NANOPRIME_KERNEL_DIR", Path.home() / ".cache" / "nanoprime"))
    target = directory / f"nanoprime-kernels-{key[:16]}.so"
    if not target.is_file():
        try:
            directory.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=directory) as scratch:
                built = Path(scratch) / target.name
                subprocess.run(
                    [compiler, *flags, *map(str, SOURCES), "-o", str(built), "-lm"],
                    check=True,
                    capture_output=True,
                    text=True,
                )
                os.replace(built, target)  # atomic: concurrent builders never load a half-written file
        except (OSError, subprocess.CalledProcessError) as error:
            detail = getattr(error, "stderr", "") or str(error)
            log.warning("building the CPU kernels with %s failed: %s", " ".join(flags), detail.strip())
            return None
    lib = ctypes.CDLL(str(target))
    lib.nanoprime_ternary_linear.restype = ctypes.c_int
    lib.nanoprime_ternary_linear.argtypes = [
        ctypes.c_void_p,  # x (rows, in) fp32
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_void_p,  # weight blocks
        ctypes.c_int64,
        ctypes.c_float,  # weight scale
        ctypes.c_void_p,  # bias or NULL
        ctypes.c_double,  # eps
        ctypes.c_int,  # normalize: the layer's input RMSNorm
        ctypes.c_void_p,  # y (rows, out) fp32
    ]
    pointer, size = ctypes.c_void_p, ctypes.c_int64
    lib.nanoprime_latent_attention.restype = ctypes.c_int
    lib.nanoprime_latent_attention.argtypes = [
        *[pointer] * 6,  # q, latent_new, k_rope_new, cos_table, sin_table, positions
        pointer,  # cache latent
        pointer,  # cache k_rope
        size,  # capacity
        pointer,  # w_uk
        pointer,  # w_uv_t
        *[size] * 6,  # B, H, N, V, C, R
        ctypes.c_float,  # scale
        pointer,  # out
    ]
    lib.nanoprime_mamba2_step.restype = None
    lib.nanoprime_mamba2_step.argtypes = [
        pointer,  # proj
        *[size] * 5,  # B, H, P, G, N
        pointer,  # conv window
        size,  # W
        *[pointer] * 6,  # conv weight, conv bias or NULL, dt_bias, A_log, D, norm weight
        ctypes.c_float,  # eps
        pointer,  # ssm state
        pointer,  # out
    ]
    lib.nanoprime_lm_head.restype = None
    lib.nanoprime_lm_head.argtypes = [pointer, size, size, pointer, size, pointer]  # x, rows, D, w, V, out
    lib.nanoprime_rms_norm.restype = None
    lib.nanoprime_rms_norm.argtypes = [
        pointer,
        size,
        size,
        pointer,
        ctypes.c_float,
        pointer,
    ]  # x, rows, n, w, eps, out
    lib.nanoprime_swiglu.restype = None
    lib.nanoprime_swiglu.argtypes = [pointer, size, size, pointer]  # gate_up, rows, hidden, out
    lib.nanoprime_sample.restype = None
    # logits, rows, V, temperatures, draws, out
    lib.nanoprime_sample.argtypes = [pointer, size, size, pointer, pointer, pointer]
    lib.nanoprime_kernel_threads.restype = ctypes.c_int
    lib.nanoprime_kernel_threads.argtypes = []
    return lib


def _loaded(lib: ctypes.CDLL | None) -> ctypes.CDLL:
    """`lib` (a build the tests pick), else the library for this CPU; an error where there is none."""
    lib = lib or library()
    if lib is None:
        raise RuntimeError("the CPU kernels are not available (check enabled() first)")
    return lib


def _cpu_flags() -> str:
    """The CPU's feature list where Linux gives it: a -march=native library is for this CPU only."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return platform.processor()
    return next((line for line in text.splitlines() if line.startswith(("flags", "Features"))), "")


def pack_blocks(values: torch.Tensor) -> torch.Tensor:
    """(out, in) ternary values -> the kernel's layout (see ternary_linear.c): (tiles, chunks, 64) uint8,
    byte 4j + m of a chunk holding the codes t + 1 of tile output j, chunk inputs 4k + m at bits 2k."""
    out_features, in_features = values.shape
    pad_in, pad_out = (-in_features) % CHUNK_INPUTS, (-out_features) % TILE_OUTPUTS
    codes = F.pad(values.round().to(torch.int16) + 1, (0, pad_in, 0, pad_out), value=1).to(torch.uint8)
    tiles, chunks = codes.shape[0] // TILE_OUTPUTS, codes.shape[1] // CHUNK_INPUTS
    codes = codes.view(tiles, TILE_OUTPUTS, chunks, 4, 4)  # [tile, j, chunk, k, m]: input 16 chunk + 4 k + m
    codes = codes.permute(0, 2, 1, 4, 3)  # [tile, chunk, j, m, k]
    packed = codes[..., 0] | codes[..., 1] << 2 | codes[..., 2] << 4 | codes[..., 3] << 6
    return packed.reshape(tiles, chunks, 4 * TILE_OUTPUTS).contiguous()


def ternary_linear(
    x: torch.Tensor,
    blocks: torch.Tensor,
    out_features: int,
    scale: float,
    bias: torch.Tensor | None,
    eps: float,
    normalize: bool = False,
    lib: ctypes.CDLL | None = None,
) -> torch.Tensor:
    """The quantized layer on x (..., in) fp32, as the torch path computes it; see ternary_linear.c.

    `normalize` folds the layer's input RMSNorm into the output factor, as bitnet.output_factor does.

    `lib` picks another build of the kernel (tests compare the portable builds); default: library().
    Decoding calls this a few dozen times per token, so it makes as few torch calls as it can.
    """
    lib = _loaded(lib)
    if not x.is_contiguous():
        x = x.contiguous()
    in_features = x.shape[-1]
    y = torch.empty((*x.shape[:-1], out_features), dtype=torch.float32)
    status = lib.nanoprime_ternary_linear(
        x.data_ptr(),
        x.numel() // in_features if in_features else 0,
        in_features,
        blocks.data_ptr(),
        out_features,
        scale,
        None if bias is None else bias.data_ptr(),
        eps,
        int(normalize),
        y.data_ptr(),
    )
    if status != 0:
        raise MemoryError("the BitLinear kernel could not allocate its activation buffer")
    return y


def latent_attention(
    q: torch.Tensor,
    latent_new: torch.Tensor,
    k_rope_new: torch.Tensor,
    cos_table: torch.Tensor,
    sin_table: torch.Tensor,
    positions: torch.Tensor,
    cache_latent: torch.Tensor,
    cache_k_rope: torch.Tensor,
    w_kv_b: torch.Tensor,
    w_uv_t: torch.Tensor,
    scale: float,
    lib: ctypes.CDLL | None = None,
) -> torch.Tensor:
    """One MLA decoding step for B rows; see latent_attention.c. Writes the new token's latent and rotated key
    at slot positions[b] of the caches (which must hold it) and returns the heads' outputs (B, H * V).

    q (B, H, N + R) (q_nope then q_rope per head), latent_new (B, C), k_rope_new (B, R); w_kv_b (H, N + V, C),
    w_uv_t (H, C, V): every tensor contiguous fp32 on the CPU but the caches, bf16; positions (B) int64.
    """
    lib = _loaded(lib)
    batch, heads = q.shape[:2]
    rope_dim = cos_table.shape[-1]
    latent_dim, v_dim = w_uv_t.shape[1:]
    tensors = (q, latent_new, k_rope_new, cos_table, sin_table, positions, cache_latent)
    tensors += (cache_k_rope, w_kv_b, w_uv_t)
    if not all(t.is_contiguous() for t in tensors):
        raise ValueError("latent_attention needs contiguous tensors")
    if cache_latent.dtype != torch.bfloat16 or cache_k_rope.dtype != torch.bfloat16:
        raise ValueError(
            f"latent_attention needs bf16 caches, got {cache_latent.dtype} and {cache_k_rope.dtype}"
        )
    out = torch.empty(batch, heads * v_dim, dtype=torch.float32)
    status = lib.nanoprime_latent_attention(
        *(t.data_ptr() for t in tensors[:8]),
        cache_latent.shape[1],
        w_kv_b.data_ptr(),
        w_uv_t.data_ptr(),
        batch,
        heads,
        q.shape[-1] - rope_dim,
        v_dim,
        latent_dim,
        rope_dim,
        scale,
        out.data_ptr(),
    )
    if status != 0:
        raise MemoryError("the MLA decoding kernel could not allocate its scratch buffers")
    return out


def mamba2_step(
    proj: torch.Tensor,
    conv_window: torch.Tensor,
    ssm: torch.Tensor,
    conv_weight: torch.Tensor,
    conv_bias: torch.Tensor | None,
    dt_bias: torch.Tensor,
    A_log: torch.Tensor,  # noqa: N803 (the paper's name)
    D: torch.Tensor,  # noqa: N803
    norm_weight: torch.Tensor,
    n_groups: int,
    eps: float,
    lib: ctypes.CDLL | None = None,
) -> torch.Tensor:
    """One Mamba-2 decoding step for B rows; see mamba2_step.c. Moves conv_window (B, channels, W) on and
    updates ssm (B, H, P, N) in place; returns the gated norm's output (B, H * P), out_proj's input.

    proj (B, H * P + channels + H) is in_proj's output; conv_weight (channels, 1, W + 1) is the Conv1d's.
    Every tensor contiguous fp32 on the CPU.
    """
    lib = _loaded(lib)
    batch, heads, head_dim, d_state = ssm.shape
    tensors = [proj, conv_window, ssm, conv_weight, dt_bias, A_log, D, norm_weight]
    tensors += [] if conv_bias is None else [conv_bias]
    if not all(t.is_contiguous() and t.dtype == torch.float32 for t in tensors):
        raise ValueError("mamba2_step needs contiguous fp32 tensors")
    out = torch.empty(batch, heads * head_dim, dtype=torch.float32)
    lib.nanoprime_mamba2_step(
        proj.data_ptr(),
        batch,
        heads,
        head_dim,
        n_groups,
        d_state,
        conv_window.data_ptr(),
        conv_window.shape[-1],
        conv_weight.data_ptr(),
        None if conv_bias is None else conv_bias.data_ptr(),
        dt_bias.data_ptr(),
        A_log.data_ptr(),
        D.data_ptr(),
        norm_weight.data_ptr(),
        eps,
        ssm.data_ptr(),
        out.data_ptr(),
    )
    return out


def lm_head(x: torch.Tensor, weight: torch.Tensor, lib: ctypes.CDLL | None = None) -> torch.Tensor:
    """x (..., D) @ weight (V, D)^T -> (..., V), for a few rows of x; see lm_head.c. fp32 on the CPU."""
    lib = _loaded(lib)
    if x.dtype != torch.float32 or weight.dtype != torch.float32 or not weight.is_contiguous():
        raise ValueError("lm_head needs fp32 rows and a contiguous fp32 matrix")
    vocab, width = weight.shape
    if x.shape[-1] != width:
        raise ValueError(f"lm_head: rows of {x.shape[-1]} values for a matrix of width {width}")
    if not x.is_contiguous():
        x = x.contiguous()
    out = torch.empty((*x.shape[:-1], vocab), dtype=torch.float32)
    lib.nanoprime_lm_head(x.data_ptr(), x.numel() // width, width, weight.data_ptr(), vocab, out.data_ptr())
    return out


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, lib: ctypes.CDLL | None = None
) -> torch.Tensor:
    """weight * RMSNorm(x) over the last dimension, x (..., n) and weight (n) fp32 on the CPU; rms_norm.c."""
    lib = _loaded(lib)
    if x.dtype != torch.float32 or weight.dtype != torch.float32 or not weight.is_contiguous():
        raise ValueError("rms_norm needs fp32 rows and a contiguous fp32 weight")
    width = weight.shape[0]
    if x.shape[-1] != width:
        raise ValueError(f"rms_norm: rows of {x.shape[-1]} values for a weight of {width}")
    if not x.is_contiguous():
        x = x.contiguous()
    out = torch.empty(x.shape, dtype=torch.float32)
    lib.nanoprime_rms_norm(x.data_ptr(), x.numel() // width, width, weight.data_ptr(), eps, out.data_ptr())
    return out


def swiglu(gate_up: torch.Tensor, lib: ctypes.CDLL | None = None) -> torch.Tensor:
    """silu(gate) * up for gate_up (..., 2 * hidden) fp32 on the CPU, gate first; see swiglu.c."""
    lib = _loaded(lib)
    if gate_up.dtype != torch.float32 or gate_up.shape[-1] % 2:
        raise ValueError("swiglu needs fp32 rows of an even width (the gate, then up)")
    if not gate_up.is_contiguous():
        gate_up = gate_up.contiguous()
    hidden = gate_up.shape[-1] // 2
    out = torch.empty((*gate_up.shape[:-1], hidden), dtype=torch.float32)
    lib.nanoprime_swiglu(gate_up.data_ptr(), gate_up.numel() // (2 * hidden), hidden, out.data_ptr())
    return out


def sample(
    logits: torch.Tensor, temperatures: torch.Tensor, draws: torch.Tensor, lib: ctypes.CDLL | None = None
) -> list[int]:
    """One token per row of logits (rows, V) at its temperature (> 0), for its uniform draw in [0, 1): the
    inverse of the softmax's cumulative distribution; see sampling.c. fp32 on the CPU."""
    lib = _loaded(lib)
    tensors = (logits, temperatures, draws)
    if not all(t.dtype == torch.float32 and t.is_contiguous() and t.device.type == "cpu" for t in tensors):
        raise ValueError("sample needs contiguous fp32 CPU tensors")
    rows, vocab = logits.shape
    if temperatures.shape != (rows,) or draws.shape != (rows,):
        raise ValueError(f"sample needs one temperature and one draw per row ({rows} rows)")
    out = torch.empty(rows, dtype=torch.int64)
    lib.nanoprime_sample(
        logits.data_ptr(), rows, vocab, temperatures.data_ptr(), draws.data_ptr(), out.data_ptr()
    )
    return out.tolist()
