"""KARST's layers: a multi-kernel Kronecker update of a frozen Linear, and the re-scaling.

For a frozen ``Linear`` with weight W0 (out x in), ``KarstLinear`` adds

    dW = s * sum_i  C_i (x) (A_i B_i),      C_i: f x f,  A_i: (out/f) x r,  B_i: r x (in/f)

(Kronecker product; s = alpha / r). For the fused qkv (``splits=3``) the output is three blocks
of width d; C_i and B_i are shared by them and each has its own A_i^{q,k,v} (the official layout,
``Lucenova/KARST:modules/kronecker_adaption.py``), i.e. dW_qkv = [C (x) A^q B; C (x) A^k B; C (x) A^v B].

Index convention: input column (b, e) = b * (in/f) + e, output row (split, a, c) =
split * (f * k) + a * k + c with k = out / (splits * f), and dW[(a, c), (b, e)] = C[a, b] (AB)[c, e].

Two ways to compute the same function, chosen by ``mode``:

* ``structured`` (training default): two GEMMs per layer, never a W0-sized weight gradient in
  backward. Either B on each of the f input blocks then G = C (x) A, or K = C (x) B then A,
  whichever costs fewer multiply-adds for the layer's shape (:meth:`KarstLinear.choose_route`);
  the second GEMM adds into the base output (``addmm``) where the memory layout allows;
* ``materialize``: build W0 + dW and run one matmul (cheap forward, but backward computes a full
  out x in gradient for dW; kept for measurement and as a cross-check).

After training, :func:`merge_linear` folds everything into a plain ``nn.Linear``.
"""

from __future__ import annotations

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
        mode: str = "structured",
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
        """dW (out x in), scaled, as the sum of the kernels' Kronecker products."""
        ab = torch.einsum("iskr,irn->iskn", self.karst_A, self.karst_B)  # (N, splits, k, n)
        # dW[s, a, c, b, e] = sum_i C[i, a, b] * AB[i, s, c, e]
        dw = torch.einsum("iab,iscn->sacbn", self.karst_C, ab)
        return self.scaling * dw.reshape(self.out_features, self.in_features)

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
    """A plain ``nn.Linear`` computing exactly what ``layer`` computes (adapter and re-scaling folded).

    With W = W0 + dW, a pre-rescale (1 + p1) * x + p2 and a post-rescale (1 + q1) * y + q2:
    W' = diag(1 + q1) W diag(1 + p1),  b' = (1 + q1) * (W p2 + b) + q2.
    """
    base = layer.base
    weight = base.weight.float() + layer.delta_weight().float()
    bias = base.bias.float() if base.bias is not None else None
    if layer.pre is not None:
        p1, p2 = layer.pre.scale.float(), layer.pre.shift.float()
        shift = weight @ p2.expand(weight.shape[1])  # the shift before the layer becomes a bias
        weight = weight * (1.0 + p1)  # scales the columns
        bias = shift if bias is None else bias + shift
    if layer.post is not None:
        q1, q2 = layer.post.scale.float(), layer.post.shift.float()
        weight = weight * (1.0 + q1).unsqueeze(-1)  # scales the rows
        bias = q2.expand(weight.shape[0]).clone() if bias is None else bias * (1.0 + q1) + q2
    merged = nn.Linear(layer.in_features, layer.out_features, bias=bias is not None)
    merged.to(device=base.weight.device, dtype=base.weight.dtype)
    merged.weight.copy_(weight)
    if bias is not None:
        merged.bias.copy_(bias)
    merged.requires_grad_(False)
    return merged
