"""KARST: Multi-Kernel Kronecker Adaptation with Re-Scaling Transmission (arXiv 2502.06779).

Every block's four linears (``attn.qkv``, ``attn.proj``, ``mlp.fc1``, ``mlp.fc2``) get

    dW = s * sum_{i=1..N} C_i (x) (A_i B_i),   C_i: f x f,  A_i: (out/f) x r,  B_i: r x (in/f),

with N = 2 kernels, f = 8, r = 8 and s = alpha / r = 1/8 by default. On the fused qkv, C_i and
B_i are shared by q, k and v and each has its own A_i (the official layout). C_i and A_i are
Kaiming-uniform (a = sqrt(5)) and B_i is zero, so the model equals the backbone at step 0.
Re-scaling transmission y = (1 + s1) * z + s2 (s1 = s2 = 0 at init) sits at the official code's
three places: before ``proj``, after ``proj`` and after ``fc2``.

Where this follows the paper and where the official code (``Lucenova/KARST@494e351``):

* re-scaling: channel-wise s1, s2 by default (the paper); ``rescale="scalar"`` is the code's
  six scalars per block; ``rescale="none"`` the paper's ablation;
* init: Kaiming-uniform C and A (the code), not the paper's Gaussian;
* N = 2 (the paper and the module; the ViT-VTAB script's CLI default is 8);
* scale: alpha / r with alpha = 1, the code's effective 1/8. The code applies its ``multiplier``
  twice (multiplier^2 * alpha / r); with multiplier 1 that is the same value, so the knob is alpha;
* placement: the code monkey-patches the attention and MLP forwards; here the linears are wrapped
  in place, which computes the same function and keeps timm's fused attention.

The official code's bugs not reproduced: the module does not construct (undefined attributes),
the backbone checkpoint path is empty (a random backbone), the test split is scored every 10
epochs and the best is kept (here: test once after the last epoch), weight decay is lr/10
(here: the preset's), the few-shot script's epochs grow with the split seed (110/120/130), and
its schedule runs 100 + 10 epochs with the last 10 at lr/10 (here: the preset's schedule).

Training builds each layer's effective weight (W0 + dW, re-scaling folded in) every step and runs
one matmul (``mode="fold"``, the fastest on a GPU); ``mode="structured"`` computes the update in
structured form instead (B, then C across the f blocks, then A: rank-r work per token, no
W0-sized weight gradient). Evaluation uses the merged model, a plain timm ViT.
"""

from .config import KarstConfig
from .layer import KarstLinear, Rescale, merge_linear
from .model import Karst, karst_count

__all__ = ["Karst", "KarstConfig", "KarstLinear", "Rescale", "karst_count", "merge_linear"]
