"""BOFT (Liu et al., *Parameter-Efficient Orthogonal Finetuning via Butterfly Factorization*,
ICLR 2024, arXiv 2311.06243; official code ``wy1iu/butterfly-oft``, and the authors' own port
in peft) through Hugging Face ``peft``'s ``BOFTConfig``.

Each targeted linear's input is rotated by an orthogonal matrix built from m butterfly factors,
and each output channel gets a trainable scale s:

    W = diag(s) W₀ R,  R = B_m ⋯ B_1,  B_k = P_kᵀ diag(R_k1, …, R_k,in/b) P_k,

each R_kj a b × b Cayley transform (I + S)(I − S)⁻¹ of a skew-symmetric S, and P_k the k-th
butterfly permutation (P_1 = I, so m = 1 is OFT with block size b). peft stores each S as a full
b × b matrix and uses its skew part, as the authors' code does, and starts every S at 0 and s
at 1, so R = I and the model equals the backbone at step 0.

Count per targeted linear (what peft stores as trainable): m · (in / b) · b² + out = m · in · b + out.
Of each b × b block only the b (b − 1) / 2 skew-symmetric entries are free (peft keeps the full
blocks and uses their skew part), so a budget charges the free count (``budget_count``):
m · in · (b − 1) / 2 + out. On ViT-B/16 at the defaults (b = 4, m = 1 on every block's fused qkv):
stored 12 · (768 · 4 + 2304) = 64,512, free 12 · (768 · 3 / 2 + 2304) = 41,472. Swin-B stored:
Σ over its 24 blocks of (4 · C + 3 · C) at each stage's width C = 7 · 12,032 = 84,224.

Defaults are peft's (block size 4, one butterfly factor); the paper tunes b and m per
experiment and its VTAB-1K runs fine-tune DINOv2-L, not ViT-B/16, so it prints no ViT-B/16
count. Size: ``block_size`` is fitted to a budget over the divisors of the adapted layers'
input widths (it must divide each; with m > 1, b · 2^(m−1) must). Block sizes alone are
coarse (ViT-B/16's qkv: 9,216 per unit of b, and b must divide 768), so where no block size
meets the budget within 5 % at the default targets, the fit tries all four linears of every
block, then the other subsets, larger first, and takes the first placement that meets it;
``butterfly_factors`` stays as set.

Deviation from peft's behaviour, made explicit: peft runs m > 1 only through its CUDA extension
``fbd_cuda`` (built at first use; it needs a CUDA GPU, nvcc and ninja). Where the extension
cannot be built peft silently replaces m by 1, which changes the method and its count. bench
refuses ``butterfly_factors > 1`` there instead, in one line; such a model runs on CUDA only
(peft's kernel). With m = 1 bench keeps peft's ``torch.block_diag`` path even where the
extension loads, so the model runs on any device, and tells peft not to build the extension at
all (peft would otherwise start nvcc at every layer it creates, printing the compiler's output:
planning a sweep that names ``boft`` builds nothing). With m > 1, whether the extension builds is
probed once per machine and software versions, in a child process, and remembered. peft's multiplicative block
dropout (``boft_dropout``) is not exposed (0, as peft's default). Merge: peft folds R and s into
each weight; what remains is a plain timm model.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, replace

import torch
from peft import BOFTConfig, inject_adapter_in_model
from torch import nn

from .backbones import BackboneSpec, describe_backbone
from .base import Method, MethodError, make_config, register_method
from .peft_tuners import fit_first_group, freeze_to_adapters, linears_of, merge_tuner_layers, parse_roles, placements


@dataclass
class BOFTSettings:
    block_size: int = 4  # b: size of each orthogonal block (peft's default); b * 2^(m-1) must divide every input width
    butterfly_factors: int = 1  # m: 1 is OFT; more needs peft's CUDA extension
    targets: str = "qkv"  # comma-separated subset of qkv, proj, fc1, fc2


def input_gcd(spec: BackboneSpec, targets: str) -> int:
    return math.gcd(*(lin.in_features for lin in linears_of(spec, "boft", targets)))


def butterfly_span(config: BOFTSettings) -> int:
    """The width one butterfly of m factors over b-blocks spans: b · 2^(m−1)."""
    return config.block_size * 2 ** (config.butterfly_factors - 1)


def _skip_kernel_build() -> None:
    """Tell peft its ``fbd_cuda`` kernel is not wanted in this process, so creating a BOFT layer
    never starts nvcc. peft tries the build at every layer it creates while the kernel is missing
    (``get_fbd_cuda`` caches only a success), printing the compiler's output each time; a
    cached ``False`` makes it take its plain PyTorch path at once. Only for one factor, which
    needs no kernel (see :class:`BOFT`); more factors go through :func:`peft_runs_butterflies`."""
    import peft.tuners.boft.layer as boft_layer

    if boft_layer._FBD_CUDA is None:
        boft_layer._FBD_CUDA = False


_PROBE_SCRIPT = "from peft.tuners.boft.layer import get_fbd_cuda; raise SystemExit(0 if get_fbd_cuda() else 1)"


def peft_runs_butterflies() -> bool:
    """Whether peft's ``fbd_cuda`` extension builds and loads here; without it peft drops to one factor.

    Probed once per machine and software versions, in a child process whose compiler output is
    kept out of the terminal; the answer is remembered in ``probes.json`` of bench's cache folder
    (``$XDG_CACHE_HOME/bench`` or ``~/.cache/bench``). No CUDA device: no, without a build."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    import peft
    import peft.tuners.boft.layer as boft_layer

    if boft_layer._FBD_CUDA:  # loaded in this process already
        return True
    if not torch.cuda.is_available():
        return False
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bench" / "probes.json"
    key = f"fbd_cuda torch={torch.__version__} peft={peft.__version__} python={sys.version.split()[0]}"
    try:
        answers = json.loads(cache.read_text())
    except (OSError, ValueError):
        answers = {}
    if key not in answers:
        try:
            probe = subprocess.run([sys.executable, "-c", _PROBE_SCRIPT], capture_output=True, timeout=900)
            answers[key] = probe.returncode == 0
        except subprocess.TimeoutExpired:
            answers[key] = False
        with contextlib.suppress(OSError):  # a read-only home: the probe runs again next time
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(answers, indent=1))
    if not answers[key]:
        boft_layer._FBD_CUDA = False  # no build attempt at each layer either
        return False
    return boft_layer.get_fbd_cuda() is not None  # built by the probe: this loads it


@register_method
class BOFT(Method):
    name = "boft"
    Config = BOFTSettings
    description = "BOFT through peft: butterfly-factorised orthogonal rotation of each linear's input (mergeable)"
    identity_at_init = True
    mergeable = True
    families = ("vit", "swin")
    category = "reparameterisable"
    paper = "Liu et al., ICLR 2024 (arXiv 2311.06243)"
    published_params = ""  # the paper's VTAB-1K runs fine-tune DINOv2-L
    cuda_graphs = False  # the Cayley transform's linear solve cannot be captured in a CUDA graph

    def validate(self, config: BOFTSettings) -> None:
        if config.block_size < 2:
            raise MethodError(f"boft block_size={config.block_size} must be an integer of at least 2")
        if config.butterfly_factors < 1:
            raise MethodError(f"boft butterfly_factors={config.butterfly_factors} must be a positive integer")
        if config.butterfly_factors > 1 and config.block_size % 2:
            raise MethodError(
                f"boft block_size={config.block_size} must be even with butterfly_factors={config.butterfly_factors}; "
                "choose an even block size or butterfly_factors=1"
            )
        parse_roles(self.name, config.targets)

    def _check_structure(self, spec: BackboneSpec, config: BOFTSettings) -> None:
        g = input_gcd(spec, config.targets)
        span = butterfly_span(config)
        if g % span or (config.butterfly_factors > 1 and (g // config.block_size) % 2):
            what = f"block_size={config.block_size}" + (
                f" with butterfly_factors={config.butterfly_factors} (span {span})"
                if config.butterfly_factors > 1
                else ""
            )
            raise MethodError(
                f"boft {what} does not divide the input widths of the adapted layers of {spec.name}; "
                f"choose a block size whose span divides {g}"
            )
        if config.butterfly_factors > 1 and not peft_runs_butterflies():
            raise MethodError(
                f"boft butterfly_factors={config.butterfly_factors} needs peft's CUDA extension fbd_cuda, which "
                "cannot be built here (it needs a CUDA GPU, nvcc and ninja) and without which peft would silently "
                "use one factor; use butterfly_factors=1 here"
            )

    def apply(self, model: nn.Module, config: BOFTSettings) -> nn.Module:
        spec = describe_backbone(model)
        self.check_backbone(spec)
        self._check_structure(spec, config)
        peft_config = BOFTConfig(
            boft_block_size=config.block_size,
            boft_n_butterfly_factor=config.butterfly_factors,
            target_modules=[lin.path for lin in linears_of(spec, self.name, config.targets)],
        )
        # peft builds its butterfly permutations element by element, which a meta tensor cannot do:
        # on a model built on meta (a count without weights), they are built on the CPU
        if config.butterfly_factors == 1:
            _skip_kernel_build()
        on_meta = next(model.parameters()).device.type == "meta"
        with torch.device("cpu") if on_meta else contextlib.nullcontext():
            model = inject_adapter_in_model(peft_config, model)
        if config.butterfly_factors == 1:
            # Where fbd_cuda builds, peft routes every layer through that CUDA-only kernel, so a model
            # applied there could not run on the CPU (exports, checks). One factor needs no kernel:
            # peft's own torch.block_diag path computes the same matrix on any device.
            for module in model.modules():
                if hasattr(module, "fbd_cuda_available"):
                    module.fbd_cuda_available = False
        return freeze_to_adapters(model)

    def count(self, spec: BackboneSpec, config: BOFTSettings) -> int:
        m, b = config.butterfly_factors, config.block_size
        return sum(m * lin.in_features * b + lin.out_features for lin in linears_of(spec, self.name, config.targets))

    def budget_count(self, spec: BackboneSpec, config: BOFTSettings) -> int:
        """Free parameters: each b x b block's b (b - 1) / 2 skew-symmetric entries, and the scales."""
        m, b = config.butterfly_factors, config.block_size
        return sum(
            m * lin.in_features * (b - 1) // 2 + lin.out_features for lin in linears_of(spec, self.name, config.targets)
        )

    def size_limits(self, spec: BackboneSpec, config: BOFTSettings) -> dict[str, tuple[int, str]]:
        cap = input_gcd(spec, config.targets) // 2 ** (config.butterfly_factors - 1)
        return {"block_size": (cap, "b * 2^(m-1) must divide the adapted layers' input widths")}

    def _candidates(self, spec: BackboneSpec) -> list[list[BOFTSettings]]:
        """The block sizes a budget fit may use at each placement (in the order tried), at the set
        butterfly factors."""
        groups = []
        for targets in placements(make_config(self).targets):
            config = make_config(self, {"targets": targets})
            cap = self.size_limits(spec, config)["block_size"][0]
            group = []
            for b in range(2, cap + 1):
                candidate = replace(config, block_size=b)
                try:
                    self.validate(candidate)
                    self._check_structure(spec, candidate)
                except MethodError:
                    continue
                group.append(candidate)
            groups.append(group)
        return groups

    def largest_config(self, spec: BackboneSpec) -> BOFTSettings:
        return max((c for group in self._candidates(spec) for c in group), key=lambda c: self.budget_count(spec, c))

    def for_budget(self, spec: BackboneSpec, budget: int) -> BOFTSettings:
        return fit_first_group(self.name, self._candidates(spec), lambda c: self.budget_count(spec, c), budget)

    def merge(self, model: nn.Module) -> nn.Module:
        return merge_tuner_layers(model)
