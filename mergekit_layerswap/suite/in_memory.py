"""Sweep variants built in memory from the two loaded experts, never written to disk.

For K layer-swap variants of one host and one donor, writing K checkpoints and loading each
back costs far more than the swap itself. Here both experts are loaded once; each variant
is merged with the very same kernel as on disk (`merge_state_dicts` with `layer_swap`), so
copied layers are the experts' own tensors (shared, not copied) and only transition layers
are computed; the variant's tensors are then assigned into one reusable model object and
scored through lm-eval's HF backend. Scores equal those of the written checkpoint (tested).
"""

from __future__ import annotations

from typing import Any

from mergekit_layerswap import checkpoint, swap, validate
from mergekit_layerswap.evaluate.columns import TaskSet
from mergekit_layerswap.evaluate.quiet import hf_bars_off, quiet
from mergekit_layerswap.evaluate.run import ColumnRun, evaluate_lm
from mergekit_layerswap.evaluate.settings import EvalSettings


class InMemorySweep:
    """Loads a host and a donor once; `score(config)` builds and scores one variant (on the
    settings' columns: `task_set` as `columns.resolve` found them, else resolved per score)."""

    def __init__(
        self, host: str, donor: str, settings: EvalSettings, task_set: TaskSet | None = None
    ):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.host, self.donor, self.settings, self.task_set = host, donor, settings, task_set
        device = settings.device or ("cuda" if torch.cuda.is_available() else "cpu")

        def load(reference: str):
            path = checkpoint.split_reference(reference)[0]
            with hf_bars_off():
                model = AutoModelForCausalLM.from_pretrained(path, dtype="auto")
            return model.to(device).eval()

        self.tokenizer = AutoTokenizer.from_pretrained(checkpoint.split_reference(host)[0])
        self.model, donor_model = load(host), load(donor)
        # references to the experts' own tensors: variants share them instead of copying
        self.state = {
            host: dict(self.model.state_dict()),
            donor: dict(donor_model.state_dict()),
        }
        self.num_layers = checkpoint.model_info(host).num_layers
        self.dtype = self.model.dtype  # the host config's: what loading a written variant gives

    def build(self, config: dict) -> Any:
        """Assign the variant of `config` (a layer_swap sweep config) into the model, in the
        dtype the written checkpoint would load in (`out_dtype`, else `dtype`, else the host
        config's), so that experts of other dtypes compute as they would from disk."""
        import torch
        from mergekit.common import dtype_from_name
        from mergekit.merge_methods import merge_state_dicts

        from mergekit_layerswap import plugin

        plugin.install()  # registers layer_swap
        with torch.no_grad():
            merged = merge_state_dicts(
                self.state,
                validate.METHOD,
                base=self.host,
                parameters={
                    **swap.SwapConfig.from_mergekit(config).to_parameters(),
                    "num_layers": self.num_layers,
                },
                dtype=dtype_from_name(config.get("dtype")),
            )
        name = config.get("out_dtype") or config.get("dtype")
        dtype = dtype_from_name(name) if name else self.dtype
        merged = {k: v.to(dtype) if v.is_floating_point() else v for k, v in merged.items()}
        self.model.load_state_dict(merged, assign=True, strict=True)
        return self.model

    def score(self, config: dict) -> dict[str, ColumnRun]:
        """Build the variant and score it on the settings' columns."""
        from lm_eval.models.huggingface import HFLM

        with quiet():
            lm = HFLM(
                pretrained=self.build(config),
                tokenizer=self.tokenizer,
                batch_size=self.settings.batch_size,
            )
        return evaluate_lm(lm, self.settings, task_set=self.task_set)
