"""Tiny local models and tokenizers: the tests' and benchmarks' stand-ins for real checkpoints.

Nothing here downloads anything: tokenizers are trained with the `tokenizers` library on a
small built-in corpus (byte-level, so every script and digit is representable) and models
are randomly initialised with transformers.
"""

from __future__ import annotations

from pathlib import Path

#: Architectures we build tiny instances of; each is one mergekit 0.1.5 knows.
ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3", "gemma2")

_CORPUS = [
    "Question: Roger has 5 tennis balls. He buys 2 more cans of 3 balls each. How many now?",
    "Step-by-Step Answer: 5 + 6 = 11. The answer is 11.",
    "Swali: Janet ana mayai 16 kila siku. Jibu ni 18.",
    "প্রশ্ন: রজারের 5টি টেনিস বল আছে। উত্তর হল 11।",
    "問題：ロジャーは5個のテニスボールを持っています。答えは11です。",
    "The quick brown fox jumps over the lazy dog 0 1 2 3 4 5 6 7 8 9.",
]


def train_tokenizer(out_dir: str | Path, vocab_size: int = 320) -> Path:
    """Train a byte-level BPE tokenizer locally and save it as a transformers tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    out = Path(out_dir)
    fast.save_pretrained(out)
    return out


def tiny_config(
    arch: str, num_layers: int, vocab_size: int, *, tie: bool = False, hidden_size: int = 64
):
    """A transformers config for a few-layer model of `arch`."""
    import transformers

    common = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=tie,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
    )
    classes = {
        "llama": transformers.LlamaConfig,
        "mistral": transformers.MistralConfig,
        "qwen2": transformers.Qwen2Config,
        "qwen3": transformers.Qwen3Config,
        "gemma2": transformers.Gemma2Config,
    }
    if arch not in classes:
        raise ValueError(f"unknown tiny architecture {arch!r}; choose one of {ARCHITECTURES}")
    extra = {"head_dim": 16} if arch in ("qwen3", "gemma2") else {}
    return classes[arch](**common, **extra)


def build_model(
    out_dir: str | Path,
    *,
    arch: str = "llama",
    num_layers: int = 8,
    seed: int = 0,
    dtype: str = "bfloat16",
    tie: bool = False,
    hidden_size: int = 64,
    tokenizer_dir: str | Path | None = None,
) -> Path:
    """Write a randomly initialised tiny causal LM (safetensors + tokenizer) to `out_dir`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = Path(out_dir)
    if tokenizer_dir is None:
        tokenizer_dir = train_tokenizer(out)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = tiny_config(arch, num_layers, len(tokenizer), tie=tie, hidden_size=hidden_size)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
