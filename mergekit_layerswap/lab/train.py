"""Tiny Llama models trained from scratch on the lab's two languages, on a CPU in minutes.

A word-level tokenizer over the lab's closed vocabulary (every number 0-200 one token, so
arithmetic is a lookup the tiny model can learn); `pretrain` a base from random weights;
`fine_tune` an expert from it, optionally training only some layers (the modular experts of
Bandarkar & Peng 2025). Runs are deterministic for a seed on one machine.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mergekit_layerswap.lab import language

#: Model sizes: (hidden size, layers, heads, intermediate size).
SIZES = {"tiny": (128, 8, 4, 384), "small": (256, 12, 8, 768)}
MAX_TOKENS = 96
BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"


def build_tokenizer(out_dir: Path):
    """A word-level tokenizer (split on whitespace) over `language.vocabulary()`, saved."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = [BOS, EOS, PAD, UNK, *language.vocabulary()]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK
    )
    fast.save_pretrained(out_dir)
    return fast


def new_model(size: str, vocab_size: int, seed: int):
    """A randomly initialised LlamaForCausalLM of the given size (float32)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, layers, heads, intermediate = SIZES[size]
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


@dataclass(frozen=True)
class Schedule:
    steps: int
    lr: float
    batch: int = 32
    warmup: int = 20


def train(
    model,
    tokenizer,
    sample: Callable[[random.Random], tuple[str, str]],
    schedule: Schedule,
    *,
    seed: int,
    trainable: Callable[[str], bool] | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> None:
    """AdamW on batches of `sample(rng)` = (prompt, completion) texts; the loss covers the
    completion only (the whole text when the prompt is empty). `trainable(name)` picks the
    parameters to update (all when None). Cosine decay after a linear warm-up."""
    import torch

    torch.manual_seed(seed)
    rng = random.Random(seed)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(trainable is None or trainable(name))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=schedule.lr, weight_decay=0.0)

    def rate(step: int) -> float:
        if step < schedule.warmup:
            return (step + 1) / schedule.warmup
        done = (step - schedule.warmup) / max(1, schedule.steps - schedule.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * done))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, rate)
    model.train()
    for step in range(schedule.steps):
        pairs = [sample(rng) for _ in range(schedule.batch)]
        ids, labels = (t.to(model.device) for t in _batch(tokenizer, pairs))
        mask = ids != tokenizer.pad_token_id
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if progress is not None:
            progress(step, loss.item())
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(True)


def _batch(tokenizer, pairs: list[tuple[str, str]]):
    import torch

    rows, masks = [], []
    for prompt, completion in pairs:
        head = tokenizer.encode(prompt, add_special_tokens=False) if prompt else []
        tail = [*tokenizer.encode(completion, add_special_tokens=False), tokenizer.eos_token_id]
        row = [*head, *tail][:MAX_TOKENS]  # no BOS: lm-eval's prompts carry none either
        rows.append(row)
        masks.append(([False] * len(head) + [True] * len(tail))[:MAX_TOKENS])
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    labels = torch.full((len(rows), width), -100)
    for i, (row, mask) in enumerate(zip(rows, masks, strict=True)):
        ids[i, : len(row)] = torch.tensor(row)
        keep = torch.tensor(mask)
        labels[i, : len(row)] = torch.where(keep, torch.tensor(row), torch.tensor(-100))
    return ids, labels


def layer_index(name: str) -> int | None:
    """The decoder layer a parameter belongs to (None for embeddings, final norm, head)."""
    parts = name.split(".")
    return int(parts[parts.index("layers") + 1]) if "layers" in parts else None


def save(model, tokenizer, out_dir: Path) -> Path:
    """Save in float32 (a tiny model's fine-tuning deltas would partly round away in
    bfloat16) as safetensors, with the tokenizer: what merges and evaluations read."""
    from transformers.utils import logging

    logging.disable_progress_bar()  # a "Writing model shards" bar for one tiny file is noise
    try:
        model.save_pretrained(out_dir)
    finally:
        logging.enable_progress_bar()
    tokenizer.save_pretrained(out_dir)
    return out_dir
