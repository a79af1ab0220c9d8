"""GLoRA (Chavan et al., *One-for-All: Generalized LoRA for Parameter-Efficient Fine-tuning*,
arXiv 2306.07967; official code ``Arnav0400/ViT-Slim``, folder ``GLoRA``) through Hugging Face
``peft``'s ``GloraConfig``.

Each targeted linear (W₀, b₀) becomes, with five support tensors A–E,

    W = W₀ + W₀ ⊙ A + B,    b = b₀ + b₀ ⊙ D + E + W₀ C,

A and B of W's shape (weight scale and shift), C a column of the input width (a prompt that
enters through W₀), D and E of the bias' shape (bias scale and shift). Each tensor takes one of
the paper's forms: ``lora`` (a rank-r product X_d X_u), ``vector`` (one value per output row,
broadcast; for C one per input), ``constant`` (one scalar) or ``none`` (absent). peft zeroes
X_d and every vector and scalar, so the model equals the backbone at step 0; X_u is drawn
Kaiming-uniform (a = √5).

Count per targeted linear (in, out, with a bias; without one C, D and E are absent):
A and B: 2 r (in + out) for ``lora``, 2 out for ``vector``, 2 for ``constant``;
C: r (in + 1) for ``lora``, in for ``vector``; D and E: 2 out for ``vector``, 2 for ``constant``.
On ViT-B/16 at the defaults (rank 4; A, B, C ``lora``; D, E ``constant``; all four linears of
every block): 12 · [8 · (3072 + 1536 + 3840 + 3840) + 4 · (769 · 3 + 3073) + 4 · 2] = 1,437,984.
Swin-B: 1,877,568 (the same rule per block at each stage's width).

What bench runs, and how it departs from the paper and its code:

* **One fixed configuration, no search.** The paper trains a supernet in which every layer
  samples each of A–E from its forms at every step (500 epochs in the official code), then
  runs an evolutionary search for one form per tensor and layer under a parameter limit, and
  retrains nothing: the searched subnet keeps the supernet's weights. bench trains one fixed
  configuration, the same in every layer, as an ordinary run of the harness, because a per-task
  supernet and search cannot be matched in tuning effort with the other methods. The default
  is peft's (A, B, C ``lora``; D, E ``constant``) at the official code's rank 4 on every linear
  of every block, which is where the official code places GLoRA (every ``nn.Linear`` but the
  head). bench's numbers are therefore those of a hand-chosen GLoRA subnet, not of the paper's
  searched ones.
* peft ties the forms of A and B (``path_ab``) and of D and E (``path_de``); the paper samples
  all five independently.
* peft draws X_u Kaiming-uniform (a = √5); the official code draws it Xavier-uniform. Both start
  at the backbone (X_d = 0).
* A bias scale D (and ``constant``/``vector`` D) receives no gradient on a layer whose bias is
  0, as in the paper: W₀'s bias is what it scales.

Size: the rank r, fitted to a budget (the count is affine in r) at the default forms and
placement; it is at most min(in, out) of the adapted layers. One rank step is coarse (about
360 k on ViT-B/16), so where no rank meets a budget within 5 % at the default placement, the
fit tries the other subsets of the four linears, larger first, and takes the first placement
where a rank meets it (at the default forms). Merge: GLoRA is re-parameterisable
and peft folds A–E into each linear's weight and bias; what remains is a plain timm model.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from peft import inject_adapter_in_model
from peft.tuners.glora import GloraConfig
from torch import nn

from .backbones import BackboneSpec, LinearSpec, describe_backbone
from .base import Method, MethodError, make_config, register_method
from .peft_tuners import fit_first_group, freeze_to_adapters, linears_of, merge_tuner_layers, parse_roles, placements


@dataclass
class GloraSettings:
    rank: int = 4  # r of every ``lora`` form; the official code's default
    path_ab: Literal["lora", "vector", "constant", "none"] = "lora"  # form of A and B (weight scale, shift)
    path_c: Literal["lora", "vector", "none"] = "lora"  # form of C (the prompt through W0)
    path_de: Literal["vector", "constant", "none"] = "constant"  # form of D and E (bias scale, shift)
    targets: str = "qkv,proj,fc1,fc2"  # comma-separated subset of qkv, proj, fc1, fc2


def linear_count(lin: LinearSpec, config: GloraSettings) -> int:
    """Trainable parameters GLoRA adds to one linear."""
    r, i, o = config.rank, lin.in_features, lin.out_features
    ab = {"lora": 2 * r * (i + o), "vector": 2 * o, "constant": 2, "none": 0}[config.path_ab]
    if not lin.bias:  # peft gives C, D and E no parameters on a bias-free linear
        return ab
    c = {"lora": r * (i + 1), "vector": i, "none": 0}[config.path_c]
    de = {"vector": 2 * o, "constant": 2, "none": 0}[config.path_de]
    return ab + c + de


@register_method
class Glora(Method):
    name = "glora"
    Config = GloraSettings
    description = "GLoRA through peft: weight and bias scale/shift plus a prompt through W0, one fixed form (mergeable)"
    identity_at_init = True
    mergeable = True
    families = ("vit", "swin")
    category = "reparameterisable"
    paper = "Chavan et al., arXiv 2023 (arXiv 2306.07967)"
    published_params = ""  # the paper's counts are of searched subnets, not of a fixed configuration

    def validate(self, config: GloraSettings) -> None:
        if config.rank < 1:
            raise MethodError(f"glora rank={config.rank} must be a positive integer")
        parse_roles(self.name, config.targets)
        if "none" == config.path_ab == config.path_c == config.path_de:
            raise MethodError("glora path_ab, path_c and path_de are all none: nothing would train; choose a form")

    def apply(self, model: nn.Module, config: GloraSettings) -> nn.Module:
        spec = describe_backbone(model)
        self.check_backbone(spec)
        peft_config = GloraConfig(
            r=config.rank,
            config_A_B=config.path_ab,
            config_C=config.path_c,
            config_D_E=config.path_de,
            target_modules=[lin.path for lin in linears_of(spec, self.name, config.targets)],
        )
        return freeze_to_adapters(inject_adapter_in_model(peft_config, model))

    def count(self, spec: BackboneSpec, config: GloraSettings) -> int:
        return sum(linear_count(lin, config) for lin in linears_of(spec, self.name, config.targets))

    def size_limits(self, spec: BackboneSpec, config: GloraSettings) -> dict[str, tuple[int, str]]:
        cap = min(min(lin.in_features, lin.out_features) for lin in linears_of(spec, self.name, config.targets))
        return {"rank": (cap, f"min(in, out) of the adapted layers {config.targets}")}

    def for_budget(self, spec: BackboneSpec, budget: int) -> GloraSettings:
        """The rank at the default placement; where one rank step overshoots 5 % (ViT-B/16: about
        360 k per rank on all four linears), the first other placement (``placements``) where
        a rank meets the budget."""
        groups = []
        for targets in placements(make_config(self).targets):
            config = make_config(self, {"targets": targets})
            cap = self.size_limits(spec, config)["rank"][0]
            groups.append([replace(config, rank=r) for r in range(1, cap + 1)])
        return fit_first_group(self.name, groups, lambda c: self.count(spec, c), budget)

    def merge(self, model: nn.Module) -> nn.Module:
        return merge_tuner_layers(model)
