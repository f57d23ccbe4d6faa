"""Reduced-precision weights for CPU inference: `HybridLM.quantize(mode)` swaps every `nn.Linear` (the LM head
included) for one of the modules below, in place. Only the linear weights change: embeddings, norms, convs, gates'
vectors and every recurrent state stay in the activations' dtype (fp32 on CPU), and each product accumulates in
fp32 (int32 for int8) and returns the activations' dtype, so `state_bytes` and the caches are those of the fp32
model.

Decode streams every weight once per token, so its speed is bounded by weight bytes: `int8` reads a quarter of
fp32's, `bf16` / `fp16` half (whether the CPU turns that into speed is what `zoo-bench bench.quantize=...`
measures). A quantized model is for inference only: it does not train, and it is not saved (quantize the fp32
checkpoint again after loading it).

`quantize(kv_cache="bf16")` also keeps attention's KV cache in bf16 (`KV_CACHE_DTYPES`), and `fuse_linears` is
how `optimize_for_decode()` runs a mixer's q/k/v as one product, quantized or not.

    model = zoo.from_pretrained("runs/RUN").eval().quantize("int8", kv_cache="bf16").optimize_for_decode()
"""

from __future__ import annotations

import abc
import warnings

import torch
import torch.nn.functional as F
from torch import nn


class QuantizedLinear(nn.Module, abc.ABC):
    """What the quantized linears share: the shape, the activations' dtype they take and return, and the weight
    storage's size (for `num_params` and the decode bandwidth bound)."""

    mode: str

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.act_dtype = linear.weight.dtype

    def num_weights(self) -> int:
        return self.in_features * self.out_features + (self.out_features if self.bias is not None else 0)

    @abc.abstractmethod
    def weight_bytes(self) -> int:
        """Bytes of the weight storage a decode step streams."""

    @abc.abstractmethod
    def dequantized(self) -> nn.Linear:
        """A float linear layer with this one's weights as they are used (for fusing several into one)."""

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, mode={self.mode}"


class HalfLinear(QuantizedLinear):
    """bf16 / fp16 weight storage; the product runs in that dtype (fp32 accumulation in oneDNN / MKL) and the
    result is cast back to the activations' dtype."""

    def __init__(self, linear: nn.Linear, dtype: torch.dtype):
        super().__init__(linear)
        self.mode = {torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
        self.register_buffer("weight", linear.weight.detach().to(dtype).contiguous())
        bias = linear.bias
        self.register_buffer("bias", None if bias is None else bias.detach().to(dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(self.weight.dtype), self.weight, self.bias).to(x.dtype)

    def weight_bytes(self) -> int:
        return self.num_weights() * self.weight.element_size()

    def dequantized(self) -> nn.Linear:
        return float_linear(self.weight.to(self.act_dtype), None if self.bias is None else self.bias.to(self.act_dtype))


class Int8Linear(QuantizedLinear):
    """int8 weights with one fp32 scale per output row (symmetric), CPU only. A decode step (one position per
    sequence) runs PyTorch's `quantized::linear_dynamic` (FBGEMM / oneDNN): the activations are quantized to int8
    from their range per call, the product accumulates in int32, and the weight streamed is a quarter of fp32's.
    A prompt (many positions) is compute-bound, not bandwidth-bound: there the weight is dequantized once per call
    and multiplied in fp32, so the activations keep their precision and a prompt's logits do not depend on how it
    was cut into chunks."""

    mode = "int8"

    def __init__(self, linear: nn.Linear):
        super().__init__(linear)
        if linear.weight.device.type != "cpu":
            raise ValueError(
                f"int8 weights run on CPU only (PyTorch's quantized::linear_dynamic), this layer is on "
                f"{linear.weight.device}; use quantize('bf16') on a GPU"
            )
        w = linear.weight.detach().float()
        scales = (w.abs().amax(dim=1) / 127).clamp_min(1e-12)
        self.register_buffer("qweight", torch.round(w / scales[:, None]).to(torch.int8))
        self.register_buffer("scales", scales)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float())
        zeros = torch.zeros(w.shape[0], dtype=torch.int64)
        with warnings.catch_warnings():  # quantized dtypes are deprecated in PyTorch; the pinned 2.13 has them
            warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
            packed = torch._make_per_channel_quantized_tensor(self.qweight, scales.double(), zeros, 0)
        self.packed = torch.ops.quantized.linear_prepack(packed, self.bias)
        # x86 / FBGEMM multiply uint8 by int8 in 16-bit pairs, which can saturate: activations keep 7 bits there
        # (as torch.ao's default dynamic qconfig does); oneDNN / QNNPACK keep 8
        self.reduce_range = torch.backends.quantized.engine in ("x86", "fbgemm")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.float().reshape(-1, self.in_features)
        one_position = x.shape[-2] == 1 if x.dim() >= 3 else flat.shape[0] == 1  # a decode step: [B, 1, d]
        if one_position:
            out = torch.ops.quantized.linear_dynamic(flat, self.packed, self.reduce_range)
        else:
            out = F.linear(flat, self.qweight.float() * self.scales[:, None], self.bias)
        return out.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def dequantized(self) -> nn.Linear:
        return float_linear(self.qweight.float() * self.scales[:, None], self.bias)

    def weight_bytes(self) -> int:
        # what decode streams: int8 weights, one fp32 scale per row, the fp32 bias
        return self.in_features * self.out_features + 4 * self.out_features * (2 if self.bias is not None else 1)


# kv_cache -> the dtype attention layers keep keys and values in (HybridLM.quantize(kv_cache=...)); bf16 only: CPUs
# with AVX-512 BF16 run PyTorch's attention kernel fast in it, fp16 attention ran 14x slower there (torch 2.13)
KV_CACHE_DTYPES = {"bf16": torch.bfloat16}

# mode -> the module that replaces an nn.Linear
MODES = {
    "bf16": lambda linear: HalfLinear(linear, torch.bfloat16),
    "fp16": lambda linear: HalfLinear(linear, torch.float16),
    "int8": Int8Linear,
}


def float_linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    linear.weight = nn.Parameter(weight, requires_grad=False)
    if bias is not None:
        linear.bias = nn.Parameter(bias, requires_grad=False)
    return linear


def fuse_linears(members: list[nn.Module]) -> nn.Module:
    """One linear layer computing `members` (same input width) side by side, outputs concatenated in order.
    Float `nn.Linear`s share their storage with it: the fused weight is stored column-major (as
    `optimize_for_decode` stores weights) and each member's weight and bias become views of its rows, so nothing
    is stored twice and the members' tensors, what a checkpoint holds, keep their values. Quantized members (one
    mode) are dequantized, concatenated and quantized again in that mode: with a scale per output row that gives
    the same integers and scales."""
    if all(type(m) is nn.Linear for m in members):
        weight = torch.cat([m.weight.detach() for m in members]).t().contiguous().t()
        has_bias = [m.bias is not None for m in members]
        if any(has_bias) and not all(has_bias):
            raise ValueError("cannot fuse linear layers of which only some have a bias")
        bias = torch.cat([m.bias.detach() for m in members]) if all(has_bias) else None
        start = 0
        for m in members:  # the members read the fused storage from now on
            rows = slice(start, start + m.out_features)
            m.weight.data = weight[rows]
            if bias is not None:
                m.bias.data = bias[rows]
            start += m.out_features
        return float_linear(weight, bias)
    modes = {getattr(m, "mode", None) for m in members}
    if len(modes) != 1 or None in modes or not all(isinstance(m, QuantizedLinear) for m in members):
        kinds = [type(m).__name__ for m in members]
        raise ValueError(f"cannot fuse {kinds}: they must all be plain nn.Linear, or quantized in one mode")
    parts = [m.dequantized() for m in members]
    weight = torch.cat([p.weight for p in parts])
    bias = None if parts[0].bias is None else torch.cat([p.bias for p in parts])
    return MODES[modes.pop()](float_linear(weight, bias))


def quantize_linears(model: nn.Module, mode: str) -> list[str]:
    """Replace every `nn.Linear` below `model` by its `mode` module (`MODES`); returns the replaced names. A weight
    shared by two linears (a tied LM head) is quantized for each."""
    if mode not in MODES:
        raise ValueError(f"unknown quantization mode {mode!r}; valid: {', '.join(MODES)}")
    make, replaced = MODES[mode], []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if type(child) is nn.Linear:
                setattr(module, child_name, make(child))
                replaced.append(f"{name}.{child_name}" if name else child_name)
    return replaced


def activation_dtype(module: nn.Module) -> torch.dtype:
    """The dtype a layer's activations run in: its parameters', or, when quantization left it none (every weight
    of the layer a linear's), the dtype its quantized linears take and return."""
    for p in module.parameters():
        return p.dtype
    for m in module.modules():
        if isinstance(m, QuantizedLinear):
            return m.act_dtype
    raise ValueError(f"{type(module).__name__} has no parameters and no quantized linear to take a dtype from")


def activation_device(module: nn.Module) -> torch.device:
    """The device a layer runs on: its parameters' or buffers', else CPU (int8 linears hold neither, and run only
    there)."""
    for t in (*module.parameters(), *module.buffers()):
        return t.device
    return torch.device("cpu")
