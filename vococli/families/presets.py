"""Named model architectures with random weights, built in memory: what `vococli bench` measures.

A benchmark needs the shapes of a real model, not its weights, so no download is involved:
`vicuna-7b` is LLaVA-1.5-7B's shape (CLIP ViT-L/14-336, 2-layer GELU projector, a 32-layer
LLaMA with hidden size 4096), `tiny` is the test model's shape for CPU runs. The tokenizer is the
small built-in one (its ids fit any vocabulary), so answers are random tokens: only the time and
memory they take mean something.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from vococli.errors import UserError
from vococli.families import family_for_config
from vococli.families.base import IMAGE_TOKEN, ImageSpec, VocoModel, read_layout
from vococli.families.llava_llama import CLIP_MEAN, CLIP_STD
from vococli.families.tiny import PRESETS as TINY_PRESETS
from vococli.families.tiny import build_tokenizer, tiny_llava_config


@dataclass(frozen=True)
class Arch:
    """Sizes of a LLaVA-style model: CLIP vision tower, projector, LLaMA."""

    image_size: int
    patch_size: int
    vision_hidden: int
    vision_layers: int
    vision_heads: int
    vision_intermediate: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab_size: int
    max_positions: int
    voco_tokens: int = 2


# vicuna-7b: the positions are raised from Vicuna-1.5's 4096 so an hour of video (7,200 VoCo
# tokens at K=2) fits; a real checkpoint needs RoPE scaling or fewer frames for that.
ARCHS = {
    "vicuna-7b": Arch(image_size=336, patch_size=14, vision_hidden=1024, vision_layers=24, vision_heads=16,
                      vision_intermediate=4096, hidden=4096, layers=32, heads=32, kv_heads=32,
                      intermediate=11008, vocab_size=32000, max_positions=16384),
}
TINY_ARCH = "tiny"
ARCH_NAMES = (TINY_ARCH, *ARCHS)


def arch_config(arch: Arch, tokenizer) -> LlavaConfig:
    vision = CLIPVisionConfig(hidden_size=arch.vision_hidden, intermediate_size=arch.vision_intermediate,
                              num_hidden_layers=arch.vision_layers, num_attention_heads=arch.vision_heads,
                              image_size=arch.image_size, patch_size=arch.patch_size,
                              projection_dim=768, hidden_act="quick_gelu")
    text = LlamaConfig(vocab_size=arch.vocab_size, hidden_size=arch.hidden, intermediate_size=arch.intermediate,
                       num_hidden_layers=arch.layers, num_attention_heads=arch.heads,
                       num_key_value_heads=arch.kv_heads, max_position_embeddings=arch.max_positions,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False, rms_norm_eps=1e-5)
    config = LlavaConfig(vision_config=vision, text_config=text,
                         image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
                         image_seq_length=(arch.image_size // arch.patch_size) ** 2,
                         vision_feature_layer=-2, vision_feature_select_strategy="default",
                         projector_hidden_act="gelu")
    config.voco_num_tokens = arch.voco_tokens
    config.voco_separator = "\n"
    config._attn_implementation = "sdpa"
    return config


def preset_config(name: str):
    """The tokenizer and LlavaConfig of architecture `name`."""
    if name not in ARCH_NAMES:
        raise UserError(f"--preset {name!r}: choose one of {', '.join(ARCH_NAMES)}")
    if name == TINY_ARCH:
        tokenizer = build_tokenizer(TINY_PRESETS["tiny"].vocab_size)
        return tokenizer, tiny_llava_config(TINY_PRESETS["tiny"], tokenizer)
    tokenizer = build_tokenizer(384)
    return tokenizer, arch_config(ARCHS[name], tokenizer)


def weights_bytes(config: LlavaConfig, dtype: torch.dtype) -> int:
    """Bytes of a model's weights in `dtype` (counted on the meta device: nothing is allocated)."""
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    return sum(p.numel() for p in model.parameters()) * torch.finfo(dtype).bits // 8


def free_bytes(device: torch.device) -> int | None:
    """Free memory on a GPU, or available memory on a Linux host; None where it cannot be read."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def random_model(name: str, device: torch.device, dtype: torch.dtype, voco_tokens: int | None = None,
                 seed: int = 0) -> VocoModel:
    """A VocoModel of architecture `name` with random weights, created directly on `device`. Refused
    at once when its weights alone would not fit the device's free memory."""
    tokenizer, config = preset_config(name)
    need, free = weights_bytes(config, dtype), free_bytes(torch.device(device))
    if free is not None and need > free:
        raise UserError(f"--preset {name}: its weights alone take {need / 2**30:.1f} GiB in {str(dtype)[6:]}, "
                        f"more than the {free / 2**30:.1f} GiB free on {device}; use a GPU or --preset {TINY_ARCH}")
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            llava = LlavaForConditionalGeneration(config).eval()
    finally:
        torch.set_default_dtype(previous)
    layout = read_layout(config, tokenizer, voco_tokens)
    family = family_for_config(config, f"--preset {name}")
    image = ImageSpec(size=int(config.vision_config.image_size), mean=CLIP_MEAN, std=CLIP_STD)
    return VocoModel(lm=llava, llava=llava, tokenizer=tokenizer, layout=layout, image=image,
                     fingerprint=f"random-{name}-{seed}", path=f"<random {name}>", device=torch.device(device),
                     dtype=dtype, family=family)
