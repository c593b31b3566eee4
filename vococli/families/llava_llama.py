"""The LLaVA family with a LLaMA language model: transformers' `LlavaForConditionalGeneration`
(a CLIP-style vision tower, the multimodal projector, a `LlamaModel` decoder and a head), as
LLaVA-1.5 checkpoints in the `llava-hf` layout and every model vococli trains are saved.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch

from vococli.errors import UserError
from vococli.families.base import ImageSpec, ModelFamily, VocoModel
from vococli.families.quantize import quantize_decoder
from vococli.families.rope import SHIFTABLE_ROPE, rotate_keys

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# Where the language model's weights sit in a Llava checkpoint: `language_model.model.*` /
# `language_model.lm_head.*` in the llava-hf layout, `model.language_model.*` / `lm_head.*` in
# newer saves; mapped onto a plain LlamaForCausalLM.
LM_KEY_MAPPING = {r"^language_model\.": "", r"^model\.language_model\.": "model."}


class LlavaLlama(ModelFamily):
    name = "llava_llama"
    stage1_fast_path = True  # LlamaDecoderLayer: input_layernorm, self_attn.k_proj/v_proj, RoPE on q and k
    shiftable_rope = SHIFTABLE_ROPE

    def matches(self, config) -> bool:
        text = getattr(config, "text_config", None)
        return config.model_type == "llava" and getattr(text, "model_type", None) == "llama"

    def load(self, path, config, device, dtype, vision, weights, attn):
        import transformers
        from transformers import LlamaForCausalLM, LlavaForConditionalGeneration

        kwargs = {"dtype": dtype}
        if attn:
            kwargs["attn_implementation"] = attn
        if vision:
            full = LlavaForConditionalGeneration.from_pretrained(path, **kwargs).to(device).eval()
            return full, full
        if weights == "nf4":  # quantised while loading: the full weights never sit on the device
            kwargs["quantization_config"] = _bnb_config(dtype)
            kwargs["device_map"] = {"": device}
        # the vision weights are skipped on purpose: silence the report that lists them as unexpected
        verbosity = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()
        try:
            lm = LlamaForCausalLM.from_pretrained(path, config=config.text_config, key_mapping=LM_KEY_MAPPING,
                                                  **kwargs)
        finally:
            transformers.logging.set_verbosity(verbosity)
        if weights == "int4":  # read on the CPU, then quantised onto the device one Linear at a time
            lm = quantize_decoder(lm, weights, dtype, device=device)
        if weights != "nf4":
            lm = lm.to(device)
        return lm.eval(), None

    def language_model(self, model: VocoModel) -> torch.nn.Module:
        return model.llava.model.language_model if model.llava is not None else model.lm.model

    def image_features(self, model: VocoModel, pixels: torch.Tensor) -> torch.Tensor:
        """Vision tower (the configured feature layer, patch tokens) + projector."""
        cfg = model.llava.config
        out = model.llava.model.get_image_features(
            pixel_values=pixels,
            vision_feature_layer=cfg.vision_feature_layer,
            vision_feature_select_strategy=cfg.vision_feature_select_strategy,
        )
        feats = out.pooler_output if hasattr(out, "pooler_output") else out
        return torch.stack(list(feats)) if isinstance(feats, (list, tuple)) else feats

    def shift_keys(self, model: VocoModel, keys: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        return rotate_keys(keys, shift, model.language_model.rotary_emb, self.shiftable_rope)

    def answering_model(self, model: VocoModel, weights: str = "full") -> VocoModel:
        from transformers import LlamaForCausalLM

        with torch.device("meta"):
            lm = LlamaForCausalLM(model.text_config)
        lm.model = model.language_model
        lm.lm_head = model.lm.lm_head
        lm.eval()
        lm = quantize_decoder(lm, weights, model.dtype)
        return replace(model, lm=lm, llava=None, weights=weights)

    def vision_tower(self, model: VocoModel) -> torch.nn.Module:
        return model.llava.model.vision_tower

    def vision_config(self, model: VocoModel):
        return model.llava.config.vision_config if model.llava is not None else None

    def image_spec(self, path: Path, config) -> ImageSpec:
        proc_file = Path(path) / "preprocessor_config.json"
        proc = json.loads(proc_file.read_text()) if proc_file.exists() else {}
        return ImageSpec(size=int(config.vision_config.image_size), mean=tuple(proc.get("image_mean", CLIP_MEAN)),
                         std=tuple(proc.get("image_std", CLIP_STD)))


def _bnb_config(compute_dtype: torch.dtype):
    try:
        import bitsandbytes  # noqa: F401
    except Exception as e:  # ImportError, or a broken native library
        raise UserError(f"--weights nf4 needs bitsandbytes, which cannot be loaded here: {e}") from None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                              bnb_4bit_compute_dtype=compute_dtype,
                              llm_int8_skip_modules=["lm_head"])
