"""KARST's layers: a multi-kernel Kronecker update of a frozen Linear, and the re-scaling.

For a frozen ``Linear`` with weight W0 (out x in), ``KarstLinear`` adds

    dW = s * sum_i  C_i (x) (A_i B_i),      C_i: f x f,  A_i: (out/f) x r,  B_i: r x (in/f)

(Kronecker product; s = alpha / r). For the fused qkv (``splits=3``) the output is three blocks
of width d; C_i and B_i are shared by them and each has its own A_i^{q,k,v} (the official layout,
``Lucenova/KARST:modules/kronecker_adaption.py``), i.e. dW_qkv = [C (x) A^q B; C (x) A^k B; C (x) A^v B].

Index convention: input column (b, e) = b * (in/f) + e, output row (split, a, c) =
split * (f * k) + a * k + c with k = out / (splits * f), and dW[(a, c), (b, e)] = C[a, b] (AB)[c, e].

Three ways to compute the same function, chosen by ``mode``:

* ``fold`` (the default): build the layer's whole effective weight and bias every step, the
  re-scaling folded in exactly as :func:`merge_linear` does it, and run one matmul. Backward
  computes an out x in weight gradient (the FLOPs of full fine-tuning's weight gradient: a
  frozen linear's training FLOPs times 1.5), but the activations pass through each linear once,
  with no second tokens x out tensor for the update and no separate re-scaling passes. The
  usual premise is the opposite (avoid the weight gradient at any cost); measured on an H100,
  ViT-B/16 at batch 64, ``fold`` trains at 0.86x LoRA and ``structured`` at 0.67x, because the
  structured path's cost is memory traffic over activations, not arithmetic (docs/methods/karst.md);
* ``structured``: two GEMMs per layer, never a W0-sized weight gradient in backward. Either B on each of the f input blocks then G = C (x) A, or K = C (x) B then A,
  whichever costs fewer multiply-adds for the layer's shape (:meth:`KarstLinear.choose_route`);
  the second GEMM adds into the base output (``addmm``) where the memory layout allows. It does
  less arithmetic than ``fold`` and wins where few tokens share one weight (on a CPU, a small
  batch of small images);
* ``materialize``: build W0 + dW and run one matmul, the re-scaling applied to the activations
  (kept for measurement and as a cross-check).

After training, :func:`merge_linear` folds everything into a plain ``nn.Linear``: the same
arithmetic as ``fold``, once, in fp32.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from ..base import MethodError


def split_width(width: int, factor: int, where: str) -> int:
    """``width / factor``, or a clear error where ``factor`` does not divide ``width``."""
    if factor < 1 or width % factor:
        divisors = [d for d in range(2, min(width, 64) + 1) if width % d == 0][:8]
        raise MethodError(
            f"karst factor={factor} does not divide the width {width} of {where}; "
            f"choose a factor that divides it (e.g. {', '.join(map(str, divisors))})"
        )
    return width // factor


def _without_autocast(device_type: str) -> contextlib.AbstractContextManager:
    """Autocast switched off for ``device_type`` where it is on (meta tensors have no autocast)."""
    if device_type in ("cuda", "cpu") and torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


class Rescale(nn.Module):
    """y = (1 + s1) * z + s2 with s1 = s2 = 0 at init: channel-wise (``dim``) or scalar (``dim=1``)."""

    def __init__(self, dim: int):
        super().__init__()
        self.scale = nn.Parameter(torch.zeros(dim))  # s1, stored as the offset from 1 (zero init)
        self.shift = nn.Parameter(torch.zeros(dim))  # s2

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        # In z's dtype: under bf16 autocast, fp32 factors would promote the residual stream to fp32
        # (and every later elementwise op with it); the factors themselves stay fp32 for the optimiser.
        return torch.addcmul(self.shift.to(z.dtype), z, (1.0 + self.scale).to(z.dtype))


class KarstLinear(nn.Module):
    """A frozen ``nn.Linear`` plus KARST's multi-kernel Kronecker update and optional re-scaling."""

    def __init__(
        self,
        base: nn.Linear,
        *,
        kernels: int,
        factor: int,
        rank: int,
        alpha: float,
        splits: int = 1,
        pre: Rescale | None = None,
        post: Rescale | None = None,
        mode: str = "fold",
        where: str = "linear",
    ):
        super().__init__()
        out_features, in_features = base.weight.shape
        if out_features % splits:
            raise MethodError(f"karst cannot split the {out_features} outputs of {where} into {splits} parts")
        self.base = base
        self.kernels, self.factor, self.rank, self.splits = kernels, factor, rank, splits
        self.n = split_width(in_features, factor, where)  # columns of B
        self.k = split_width(out_features // splits, factor, where)  # rows of each A
        self.scaling = alpha / rank
        self.mode = mode
        # Published init (official code): C and A Kaiming-uniform with a = sqrt(5) on the stored
        # tensors, B zero, so dW = 0 and the model is the backbone at step 0.
        self.karst_C = nn.Parameter(torch.empty(kernels, factor, factor))
        self.karst_A = nn.Parameter(torch.empty(kernels, splits, self.k, rank))
        self.karst_B = nn.Parameter(torch.zeros(kernels, rank, self.n))
        for i in range(kernels):
            nn.init.kaiming_uniform_(self.karst_C[i], a=math.sqrt(5))
            for s in range(splits):
                # the official code stores A as r x k, so its fan-in is k
                bound = 1.0 / math.sqrt(self.k)
                nn.init.uniform_(self.karst_A[i, s], -bound, bound)
        self.pre, self.post = pre, post
        self.route = self.choose_route()

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def delta_weight(self) -> torch.Tensor:
        """dW (out x in), scaled, as the sum of the kernels' Kronecker products; fp32 even under autocast.

        Under autocast these products would run in bf16, and a bf16 dW loses what training adds to
        W0: ``fold`` and ``materialize`` cast the finished weight once, in the matmul that uses it.
        """
        f = self.factor
        with _without_autocast(self.karst_C.device.type):
            ab = self.karst_A.reshape(self.kernels, -1, self.rank).float() @ self.karst_B.float()  # (N, s*k, n)
            # dW[s, a, c, b, e] = sum_i C[i, a, b] AB[i, s, c, e], written as a broadcast product
            # summed over the N kernels, so Inductor can emit elementwise work and reductions; as a
            # GEMM over N (K = N = 2), its backward for dC would be a GEMM with an N-wide output.
            ab = ab.reshape(self.kernels, self.splits, 1, self.k, 1, self.n)
            dw = (self.karst_C.float().reshape(self.kernels, 1, f, 1, f, 1) * ab).sum(0)
        return self.scaling * dw.reshape(self.out_features, self.in_features)

    def folded_weight_and_bias(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The weight and bias of one plain linear computing this layer, re-scaling included (fp32).

        Differentiable, so ``fold`` trains through it; :func:`merge_linear` calls it once. With
        W = W0 + dW, a pre-rescale (1 + p1) * x + p2 and a post-rescale (1 + q1) * y + q2:
        W' = diag(1 + q1) W diag(1 + p1),  b' = (1 + q1) * (W p2 + b) + q2.
        """
        with _without_autocast(self.karst_C.device.type):
            weight = self.base.weight.float() + self.delta_weight()
            bias = self.base.bias.float() if self.base.bias is not None else None
            if self.pre is not None:
                shift = weight @ self.pre.shift.float().expand(self.in_features)  # before the layer: a bias
                weight = weight * (1.0 + self.pre.scale.float())  # scales the columns
                bias = shift if bias is None else bias + shift
            if self.post is not None:
                q1, q2 = self.post.scale.float(), self.post.shift.float()
                weight = weight * (1.0 + q1).unsqueeze(-1)  # scales the rows
                bias = q2.expand(self.out_features) if bias is None else bias * (1.0 + q1) + q2
        return weight, bias

    def choose_route(self) -> str:
        """The cheaper order of the structured product for this layer's shape (multiply-adds per token).

        ``g``: B on each f-block (in * N * r), then G = C (x) A (f * N * r * out): cheaper when out < in.
        ``k``: K = C (x) B (f * N * r * in), then A (N * r * out): cheaper when out > in.
        """
        nr = self.kernels * self.rank
        g_cost = self.in_features * nr + self.factor * nr * self.out_features
        k_cost = self.factor * nr * self.in_features + nr * self.out_features
        return "g" if g_cost < k_cost else "k"

    def _structured(self, x: torch.Tensor) -> torch.Tensor:
        """base(x) + dW x without forming dW: two GEMMs, the second adding into the base output."""
        lead, f, nr = x.shape[:-1], self.factor, self.kernels * self.rank
        x2 = x.reshape(-1, self.in_features)
        base = torch.nn.functional.linear(x2, self.base.weight, self.base.bias)
        if self.route == "g":
            # u[t, (b, i, j)] = sum_e x[t, (b, e)] B_i[j, e];  G[(b, i, j), (s, a, c)] = s C_i[a, b] A_i^s[c, j]
            u = (x2.reshape(-1, self.n) @ self.karst_B.reshape(nr, self.n).t()).reshape(-1, f * nr)
            g = torch.einsum("iab,iscj->bijsac", self.karst_C, self.karst_A).reshape(f * nr, self.out_features)
            y = torch.addmm(base, u, (self.scaling * g).to(u.dtype))
        else:
            # u[t, (a, i, j)] = sum_(b, e) C_i[a, b] B_i[j, e] x[t, (b, e)];  then A maps (i, j) -> (s, c)
            kmat = torch.einsum("iab,ije->aijbe", self.karst_C, self.karst_B).reshape(f * nr, self.in_features)
            u = (x2 @ kmat.t().to(x2.dtype)).reshape(-1, nr)  # (T * f, N * r)
            a = (self.scaling * self.karst_A.permute(0, 3, 1, 2)).reshape(nr, self.splits * self.k).to(u.dtype)
            if self.splits == 1:  # rows (a, c) of the output are rows (t, a) x columns c: add in the GEMM
                y = torch.addmm(base.reshape(-1, self.k), u, a).reshape(-1, self.out_features)
            else:  # (t, a, s, c) -> (t, s, a, c)
                z = (u @ a).reshape(-1, f, self.splits, self.k).transpose(1, 2)
                y = base + z.reshape(-1, self.out_features)
        return y.reshape(*lead, self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "fold":
            weight, bias = self.folded_weight_and_bias()  # fp32; under autocast the matmul casts once
            bias = bias.to(x.dtype) if bias is not None else None
            return nn.functional.linear(x, weight.to(x.dtype), bias)
        if self.pre is not None:
            x = self.pre(x)
        if self.mode == "materialize":
            weight = self.base.weight + self.delta_weight().to(self.base.weight.dtype)
            y = nn.functional.linear(x, weight, self.base.bias)
        else:
            y = self._structured(x)
        if self.post is not None:
            y = self.post(y)
        return y


@torch.no_grad()
def merge_linear(layer: KarstLinear) -> nn.Linear:
    """A plain ``nn.Linear`` computing exactly what ``layer`` computes (adapter and re-scaling folded)."""
    base = layer.base
    weight, bias = layer.folded_weight_and_bias()
    merged = nn.Linear(layer.in_features, layer.out_features, bias=bias is not None)
    merged.to(device=base.weight.device, dtype=base.weight.dtype)
    merged.weight.copy_(weight)
    if bias is not None:
        merged.bias.copy_(bias)
    merged.requires_grad_(False)
    return merged
