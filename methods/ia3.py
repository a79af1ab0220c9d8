"""(IA)³ (Liu et al., *Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context
Learning*, NeurIPS 2022, arXiv 2205.05638; official code ``r-three/t-few``) through Hugging Face
``peft``'s ``IA3Config``.

(IA)³ learns vectors that rescale activations element-wise: keys and values in attention, and the
MLP's intermediate activation. Each vector starts at 1, so the model equals the backbone at step 0.

Placement on timm's blocks (exact paths from the backbone description):

* ``attn.qkv``: one vector on the fused output (3 · d entries);
* ``mlp.fc2`` as peft's *feed-forward* module: the vector scales fc2's input, i.e. the MLP's
  intermediate activation after GELU (h entries), as in the paper.

Count: Σ_blocks (3 d + h); on ViT-B/16 12 · (2304 + 3072) = 64,512. Swin: the same per block at
each stage's width; Swin-B 24 blocks: Σ (3 d_s + 4 d_s) = 7 · (2·128 + 2·256 + 18·512 + 2·1024).

Deviation: timm fuses q, k and v into one linear, so the attention vector also rescales the
queries (the paper rescales keys and values only). Rescaling q's d outputs adds d parameters per
block and an extra degree of freedom the paper does not have; ``targets`` may drop qkv.

Size: (IA)³ has no size field, so it is not fitted to budgets: like ``linear`` and ``full`` it
runs at its one count whatever the budget, and reports say so (``adjustable`` false). Merge: peft folds each vector into its linear's weight.
"""

from __future__ import annotations

from dataclasses import dataclass

from peft import IA3Config, inject_adapter_in_model
from torch import nn

from .backbones import BackboneSpec, describe_backbone
from .base import Method, register_method
from .peft_tuners import freeze_to_adapters, linears_of, merge_tuner_layers, parse_roles

# Linears whose input (not output) the vector scales: peft's feed-forward modules.
INPUT_SCALED = ("fc2",)


@dataclass
class IA3Settings:
    targets: str = "qkv,fc2"  # comma-separated subset of qkv, proj, fc1, fc2; fc2 is scaled on its input


@register_method
class IA3(Method):
    name = "ia3"
    category = "reparameterisable"
    paper = "Liu et al., NeurIPS 2022 (arXiv 2205.05638)"
    Config = IA3Settings
    description = "(IA)3 through peft: learned rescaling of qkv outputs and the MLP activation (mergeable)"
    identity_at_init = True
    mergeable = True
    budget_adjustable = False  # one vector per activation: no size field to fit
    families = ("vit", "swin")

    def validate(self, config: IA3Settings) -> None:
        parse_roles(self.name, config.targets)

    def apply(self, model: nn.Module, config: IA3Settings) -> nn.Module:
        spec = describe_backbone(model)
        self.check_backbone(spec)
        linears = linears_of(spec, self.name, config.targets)
        peft_config = IA3Config(
            target_modules=[lin.path for lin in linears],
            feedforward_modules=[lin.path for lin in linears if lin.role in INPUT_SCALED],
        )
        return freeze_to_adapters(inject_adapter_in_model(peft_config, model))

    def count(self, spec: BackboneSpec, config: IA3Settings) -> int:
        return sum(
            lin.in_features if lin.role in INPUT_SCALED else lin.out_features
            for lin in linears_of(spec, self.name, config.targets)
        )

    def merge(self, model: nn.Module) -> nn.Module:
        return merge_tuner_layers(model)
