"""The host checkpoint's own tensors as the architecture mergekit's planner merges.

mergekit 0.1.5 plans every merge from its architecture definition's templates, which can
disagree with what transformers writes: Llama's optional biases are not listed (a merge
drops them), Mixtral's and Qwen3-MoE's templates name fused expert tensors that
`save_pretrained` writes per expert, GPT-NeoX's lists buffers transformers no longer saves.
A swap needs only each tensor's place, which the checkpoint tells (`layout`), so the planner
gets the host's tensors, grouped by place, instead: the output holds the host's tensors
under the host's names. Where a name is one the template lists, that weight's attributes
(vocabulary axis, aliases, forced dtype) are kept.
"""

from __future__ import annotations

from mergekit.architecture import ModelArchitecture, ModuleArchitecture, WeightInfo
from transformers import PretrainedConfig

from mergekit_layerswap.layout import Layout


class CheckpointModule(ModuleArchitecture):
    """One stack of layers as a checkpoint holds it; the layer count and its config key
    are the template's."""

    def __init__(self, template: ModuleArchitecture, found: Layout, config: PretrainedConfig):
        self.template = template
        listed = {weight.name: weight for weight in template.all_weights(config)}

        def weights(names: tuple[str, ...]) -> list[WeightInfo]:
            return [listed.get(name, WeightInfo(name=name)) for name in names]

        self._pre, self._post = weights(found.pre), weights(found.post)
        self._layers = [weights(names) for names in found.layers]

    def pre_weights(self, config: PretrainedConfig) -> list[WeightInfo]:
        return self._pre

    def post_weights(self, config: PretrainedConfig) -> list[WeightInfo]:
        return self._post

    def layer_weights(self, index: int, config: PretrainedConfig) -> list[WeightInfo]:
        return self._layers[index]

    def num_layers_config_key(self) -> str:
        return self.template.num_layers_config_key()

    def num_layers(self, config: PretrainedConfig) -> int:
        return self.template.num_layers(config)


def from_checkpoint(
    arch: ModelArchitecture, found: Layout, config: PretrainedConfig
) -> ModelArchitecture:
    """`arch` (a single-stack definition) with its stack replaced by the checkpoint's."""
    ((name, module),) = arch.modules.items()
    stack = CheckpointModule(module.architecture, found, config)
    return arch.model_copy(
        update={"modules": {name: module.model_copy(update={"architecture": stack})}}
    )
