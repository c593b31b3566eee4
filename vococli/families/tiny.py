"""Build a tiny random checkpoint folder in exactly the format real checkpoints use.

The folder holds a transformers `LlavaForConditionalGeneration` (CLIP vision tower, 2-layer GELU
projector, LLaMA language model) saved with `save_pretrained`, a fast tokenizer with `<image>` and
`<voco>` registered as special tokens and a chat template, and a LLaVA image-processor config.
Its weights are random: it runs every code path but does not answer meaningfully.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    PreTrainedTokenizerFast,
)

from vococli.families.base import IMAGE_TOKEN, VOCO_TOKEN
from vococli.quiet import no_progress_bars

# Vicuna-style turn markers; the text follows the VoCo block, so it starts with a newline.
CHAT_TEMPLATE = (
    "{{ '\\n' }}"
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}"
    "{% set turns = messages[1:] %}"
    "{% else %}{{ 'You answer questions about a video.' }}{% set turns = messages %}{% endif %}"
    "{% for m in turns %}"
    "{% if m['role'] == 'user' %}{{ ' USER: ' + m['content'] }}"
    "{% else %}{{ ' ASSISTANT: ' + m['content'] + eos_token }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ ' ASSISTANT:' }}{% endif %}"
)

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", IMAGE_TOKEN, VOCO_TOKEN]

# A small corpus that gives the byte-level BPE some whole-word merges.
_CORPUS = """
what is the man holding in his hand? who enters the room after the dog? a person is cooking
a pancake in a pan and flips it. how many people are there in the video? what colour is the car
the woman is walking on the street. is there a cat? yes no red green blue yellow black white
what happens at the end of the video? the boy throws a ball to the girl. where are they
USER: ASSISTANT: You answer questions about a video. left right top bottom first last
""".strip()


@dataclass(frozen=True)
class TinyConfig:
    """Sizes of the tiny model; every Linear input is a multiple of 64 so nf4 works on it."""

    image_size: int = 64
    patch_size: int = 16  # (64 / 16)^2 = 16 image tokens per frame
    vision_hidden: int = 64
    vision_layers: int = 2
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 128
    vocab_size: int = 384
    max_positions: int = 4096
    voco_tokens: int = 2  # 0: a stock LLaVA checkpoint (no <voco> token, no voco_num_tokens)
    vision_heads: int = 4
    corpus: str = "default"  # "default", or "synth": also learn whole-word merges for `vococli synth` text
    attention_bias: bool = False  # biases on the LLaMA q/k/v/o and MLP projections
    init_std: float = 0.02  # LLaMA weight init (LlamaConfig.initializer_range)
    seed: int = 0


# Named starting points for `vococli train --init`; "synth-small" is the bundled default's shape.
PRESETS = {
    "tiny": TinyConfig(),
    # synth-small: 96 px frames cut into a 3x3 grid of 32 px patches, so one image token sees a
    # whole shape; one vision layer, whose input (the patch embeddings, layer -2) is the feature.
    "synth-small": TinyConfig(image_size=96, patch_size=32, vision_hidden=256, vision_layers=1, hidden=128,
                              layers=4, heads=4, kv_heads=2, intermediate=384, vocab_size=448,
                              max_positions=32768, corpus="synth"),
    # synth-v2: synth-small with biases in the LLaMA projections and a wider init (std ~ 1/sqrt(hidden)).
    # Measured on the synthetic data: a 4-layer LLaMA learns to name the shape of the object of a
    # given colour (a key/value lookup from the question to one image token) much sooner with both.
    "synth-v2": TinyConfig(image_size=96, patch_size=32, vision_hidden=256, vision_layers=1, hidden=128,
                           layers=4, heads=4, kv_heads=2, intermediate=384, vocab_size=448,
                           max_positions=32768, corpus="synth", attention_bias=True, init_std=0.088),
}


def corpus_text(name: str) -> list[str]:
    if name == "default":
        return [_CORPUS]
    if name == "synth":
        from vococli.synth.clips import vocabulary_text

        return [_CORPUS, vocabulary_text()]
    raise ValueError(f"unknown tokenizer corpus {name!r}")


def build_tokenizer(vocab_size: int, corpus: str = "default", voco: bool = True) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on a built-in corpus: any text encodes, common words compactly.
    Without `voco` it has no `<voco>` token, as a stock LLaVA tokenizer has none."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS if voco else [t for t in SPECIAL_TOKENS if t != VOCO_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus_text(corpus), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": IMAGE_TOKEN, **({"voco_token": VOCO_TOKEN} if voco else {})},
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_llava_config(cfg: TinyConfig, tokenizer: PreTrainedTokenizerFast, attn: str = "sdpa") -> LlavaConfig:
    vision = CLIPVisionConfig(
        hidden_size=cfg.vision_hidden,
        intermediate_size=cfg.vision_hidden * 2,
        num_hidden_layers=cfg.vision_layers,
        num_attention_heads=cfg.vision_heads,
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        projection_dim=cfg.vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden,
        intermediate_size=cfg.intermediate,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.kv_heads,
        max_position_embeddings=cfg.max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        attention_bias=cfg.attention_bias,
        mlp_bias=cfg.attention_bias,
        initializer_range=cfg.init_std,
    )
    n_image = (cfg.image_size // cfg.patch_size) ** 2
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=n_image,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    if cfg.voco_tokens:  # 0: a stock checkpoint that never learned VoCo
        config.voco_num_tokens = cfg.voco_tokens
        config.voco_separator = "\n"
    config._attn_implementation = attn
    return config


def build_tiny_model(cfg: TinyConfig = TinyConfig(), attn: str = "sdpa"):
    """Return (model, tokenizer) with random weights drawn from `cfg.seed`."""
    tokenizer = build_tokenizer(cfg.vocab_size, cfg.corpus, voco=cfg.voco_tokens > 0)
    config = tiny_llava_config(cfg, tokenizer, attn)
    torch.manual_seed(cfg.seed)
    model = LlavaForConditionalGeneration(config).eval()
    return model, tokenizer


def image_processor_config(image_size: int) -> dict:
    """LLaVA-1.5 preprocessing: pad to square with the CLIP mean colour, resize, centre-crop."""
    return {
        "image_processor_type": "LlavaImageProcessor",
        "do_pad": True,
        "do_resize": True,
        "size": {"shortest_edge": image_size},
        "do_center_crop": True,
        "crop_size": {"height": image_size, "width": image_size},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "resample": 3,
    }


def save_checkpoint(model, tokenizer, out: Path) -> Path:
    """Write model, tokenizer and image-processor config the way a real checkpoint folder is laid out."""
    import json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with no_progress_bars():
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
    proc = image_processor_config(model.config.vision_config.image_size)
    (out / "preprocessor_config.json").write_text(json.dumps(proc, indent=2) + "\n")
    return out


def make_tiny_checkpoint(out: Path, cfg: TinyConfig = TinyConfig()) -> Path:
    """Create a tiny random checkpoint folder at `out` (for tests and smoke runs)."""
    model, tokenizer = build_tiny_model(cfg)
    return save_checkpoint(model, tokenizer, out)
