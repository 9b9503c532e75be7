"""Does a donor compute what the host computes? Checks on config.json and safetensors
headers, no tensor read: every problem is a line naming the field and the fix.

The merged model keeps the host's config.json, so a donor layer trained under another
activation, norm epsilon, rope setting, bias flag, window or routing would run wrong
without any error. Fields are compared where both configs set them (an absent field means
the architecture's default, which only transformers knows); rope settings are compared
after folding transformers 4's top-level `rope_theta` / `rope_scaling` into transformers
5's `rope_parameters`. Fields that do not change a layer's output are notes, not problems.
Integer or quantised weights are refused.
"""

from __future__ import annotations

from mergekit_layerswap import checkpoint

#: config.json fields that change what a layer computes or how positions are encoded.
COMPUTE_FIELDS = (
    "hidden_act",
    "hidden_activation",
    "activation_function",
    "rms_norm_eps",
    "layer_norm_eps",
    "layer_norm_epsilon",
    "norm_eps",
    "rope",  # rope_theta, rope_scaling, rope_parameters, rotary_emb_base, folded
    "partial_rotary_factor",
    "rotary_pct",
    "rotary_dim",
    "attention_bias",
    "mlp_bias",
    "qkv_bias",
    "use_qkv_bias",
    "use_bias",
    "bias",
    "sliding_window",
    "use_sliding_window",
    "max_window_layers",
    "layer_types",
    "sliding_window_pattern",
    "query_pre_attn_scalar",
    "attn_logit_softcapping",
    "final_logit_softcapping",
    "logit_scale",
    "attention_multiplier",
    "embedding_multiplier",
    "residual_multiplier",
    "logits_scaling",
    "use_qk_norm",
    "qk_layernorm",
    "clip_qkv",
    "use_parallel_residual",
    "parallel_attn",
    "num_experts_per_tok",
    "norm_topk_prob",
    "decoder_sparse_step",
    "mlp_only_layers",
    "routed_scaling_factor",
    "n_group",
    "topk_group",
)
#: Fields a donor may differ in without changing what its layers compute: reported as notes.
NOTE_FIELDS = (
    "max_position_embeddings",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
)
_ROPE_KEYS = ("rope_theta", "rope_scaling", "rotary_emb_base")


def _rope(config: dict) -> dict | None:
    """Rope settings in transformers 5's shape, whichever version wrote the config."""
    found = dict(config.get("rope_parameters") or {})
    if config.get("rope_theta") is not None or config.get("rotary_emb_base") is not None:
        found.setdefault("rope_theta", config.get("rope_theta", config.get("rotary_emb_base")))
    found |= {k: v for k, v in (config.get("rope_scaling") or {}).items() if k != "type"}
    if "type" in (config.get("rope_scaling") or {}):
        found.setdefault("rope_type", config["rope_scaling"]["type"])
    if found.get("rope_type") == "default":
        del found["rope_type"]
    return found or None


def _value(config: dict, field: str):
    return _rope(config) if field == "rope" else config.get(field)


def config_differences(host: dict, donor: dict) -> tuple[list[str], list[str]]:
    """(problems, notes): each field set in both configs whose values differ, as `field
    value differs from the host's value`."""
    host, donor = checkpoint.text_config(host), checkpoint.text_config(donor)

    def differ(fields: tuple[str, ...]) -> list[str]:
        lines = []
        for field in fields:
            mine, theirs = _value(donor, field), _value(host, field)
            if mine is not None and theirs is not None and mine != theirs:
                lines.append(f"{field} {mine!r} differs from the host's {theirs!r}")
        return lines

    return differ(COMPUTE_FIELDS), differ(NOTE_FIELDS)


def weight_problems(config: dict, tensors: dict[str, checkpoint.Stored] | None) -> list[str]:
    """Quantised or integer weights: a `quantization_config`, or a tensor whose dtype is not
    one of the float dtypes a merge reads."""
    quantized = checkpoint.text_config(config).get("quantization_config") or config.get(
        "quantization_config"
    )
    if quantized:
        method = quantized.get("quant_method", "?") if isinstance(quantized, dict) else "?"
        return [
            f"config.json has a quantization_config (quant_method {method}); layer_swap "
            "copies raw weights: dequantise the model to bfloat16 or float16 first"
        ]
    odd = sorted(
        n for n, item in (tensors or {}).items() if item.dtype not in checkpoint.FLOAT_DTYPES
    )
    if not odd:
        return []
    more = f" ({len(odd) - 1} more)" if len(odd) > 1 else ""
    return [
        f"tensor {odd[0]} is {tensors[odd[0]].dtype}{more}, not a float dtype (integer or "
        "quantised weights would be cast as numbers); dequantise the model to bfloat16 first"
    ]


def problems(where: dict[str, str], infos: dict, tensors: dict) -> tuple[list[str], list[str]]:
    """(problems, notes) of the readable models (`where`: reference -> its field, host first;
    `infos` / `tensors`: what `checkpoint` read of each): quantised weights and donors whose
    config computes otherwise than the host's."""
    found, notes = [], []
    host = next(iter(where))
    configs = {ref: checkpoint.read_config(ref) for ref in infos}
    for ref, config in configs.items():
        found += [
            f"{where[ref]}: {ref}: {line}" for line in weight_problems(config, tensors.get(ref))
        ]
        if ref == host or host not in infos:
            continue
        wrong, noted = config_differences(configs[host], config)
        found += [
            f"{where[ref]}: {line} (config.json); the merged model runs every layer with the "
            "host's settings: swap between fine-tunes trained with the same ones"
            for line in wrong
        ]
        notes += [
            f"{where[ref]}: {line} (config.json); the output keeps the host's" for line in noted
        ]
    return found, notes
