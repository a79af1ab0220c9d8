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

Swin (the official ``train_swin_vtab.py``): every block's qkv, proj, fc1 and fc2 are adapted at
the block's own width, the patch-merging reductions and the patch embedding are not; N = 2,
f = 8; each layer's rank comes from m = min(in, out)/f through the script's table (m 16 -> 2,
32 -> 2, 64 -> 4, 128 -> 8), i.e. r = 2, 2, 4, 8 for the Swin-B stage widths 128, 256, 512, 1024,
and its scale is alpha / r as in the code (1/2, 1/2, 1/4, 1/8). Here the table is the rule
r = rank * max(m / m_max, 1/4) with ``rank`` = 8 the rank of the widest layers (on a ViT every
layer is the widest, so nothing changes there). Per Swin stage of width d_s and depth n_s a block
costs N (4 f^2 + 16 r_s d_s / f) + R_s (R_s = 6 d_s channel-wise, 6 scalar): on Swin-B
(depths 2, 2, 18, 2) that is **303,616** trainable parameters with channel-wise re-scaling and
231,568 with the code's scalars (head excluded). The script's re-scaling places are the ViT's; the
per-dataset lr and multiplier it reads (``configs/swin_karst/<dataset>.yaml``) were never released.

Training builds each layer's effective weight (W0 + dW, re-scaling folded in) every step and runs
one matmul (``mode="fold"``, the fastest on a GPU); ``mode="structured"`` computes the update in
structured form instead (B, then C across the f blocks, then A: rank-r work per token, no
W0-sized weight gradient). Evaluation uses the merged model, a plain timm ViT.
"""

from .config import KarstConfig
from .layer import KarstLinear, Rescale, merge_linear
from .model import Karst, karst_count

__all__ = ["Karst", "KarstConfig", "KarstLinear", "Rescale", "karst_count", "merge_linear"]
