"""Loading a VoCo checkpoint: the Llava model, its tokenizer, the VoCo token layout and a fingerprint.

A checkpoint is a transformers `LlavaForConditionalGeneration` folder whose config carries
`voco_num_tokens` (K) and `voco_separator`, and whose tokenizer has `<voco>` registered by name.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from vococli.errors import UserError
from vococli.families.quantize import check_int4_target, check_weights, quantize_decoder

IMAGE_TOKEN = "<image>"
VOCO_TOKEN = "<voco>"
FINGERPRINT_SAMPLE = 1 << 20  # bytes hashed at each end of every weight file


@dataclass(frozen=True)
class VocoLayout:
    """Token layout of one compressed frame: `BOS | image | separator | <voco> x K`."""

    bos_id: int
    n_image: int
    separator_ids: tuple[int, ...]
    voco_id: int
    k: int

    @property
    def c0(self) -> int:
        """Position of the first VoCo token in the single-frame sequence."""
        return 1 + self.n_image + len(self.separator_ids)

    @property
    def frame_len(self) -> int:
        """Length of the whole single-frame stage-1 sequence."""
        return self.c0 + self.k


@dataclass(frozen=True)
class ImageSpec:
    """What the preprocessing needs: target size and normalisation constants."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


@dataclass
class VocoModel:
    """A loaded checkpoint. `llava` is None when only the language model was loaded."""

    lm: torch.nn.Module  # causal LM with a head: LlavaForConditionalGeneration or LlamaForCausalLM
    llava: torch.nn.Module | None
    tokenizer: object
    layout: VocoLayout
    image: ImageSpec
    fingerprint: str
    path: str
    device: torch.device
    dtype: torch.dtype
    weights: str = "full"  # the decoder's Linear weights: "full" (dtype), "nf4" or "int4" (quantize.WEIGHTS)

    @property
    def text_config(self):
        return self.lm.config.get_text_config(decoder=True)

    @property
    def language_model(self) -> torch.nn.Module:
        """The decoder stack without the head (a `LlamaModel`)."""
        return self.llava.model.language_model if self.llava is not None else self.lm.model

    @property
    def max_positions(self) -> int:
        return int(self.text_config.max_position_embeddings)


def fingerprint_checkpoint(path: Path) -> str:
    """Hash of the config and the weight files' identity (sizes, headers, first and last MiB)."""
    path = Path(path)
    h = hashlib.sha256()
    h.update((path / "config.json").read_bytes())
    weights = sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin"))
    for f in weights:
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(FINGERPRINT_SAMPLE))
            fh.seek(max(0, size - FINGERPRINT_SAMPLE))
            h.update(fh.read(FINGERPRINT_SAMPLE))
    return h.hexdigest()[:16]


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise UserError(f"--device: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is available on this machine")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UserError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    try:
        torch.empty(0, device=dev)
    except (RuntimeError, AssertionError) as e:
        raise UserError(f"--device {device}: not usable with this torch build ({str(e).splitlines()[0][:100]})") from None
    return dev


DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def resolve_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    """bf16 on GPU, float32 on CPU, unless the user says otherwise."""
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype!r}: choose one of {', '.join(sorted(DTYPES))}")
    return DTYPES[dtype]


def read_layout(config, tokenizer, k: int | None = None) -> VocoLayout:
    """The VoCo layout from the checkpoint's config and tokenizer (tokens looked up by name)."""
    voco_id = tokenizer.convert_tokens_to_ids(VOCO_TOKEN)
    if voco_id is None or voco_id == tokenizer.unk_token_id:
        raise UserError(f"the checkpoint's tokenizer has no {VOCO_TOKEN} token: it is not a VoCo checkpoint "
                        "(fine-tune one with `vococli train`)")
    trained_k = getattr(config, "voco_num_tokens", None)
    if trained_k is None and k is None:
        raise UserError("the checkpoint's config has no voco_num_tokens; pass --voco-tokens")
    if k is not None and k < 1:
        raise UserError(f"--voco-tokens must be at least 1, got {k}")
    sep = tokenizer(getattr(config, "voco_separator", "\n"), add_special_tokens=False)["input_ids"]
    return VocoLayout(
        bos_id=tokenizer.bos_token_id,
        n_image=int(config.image_seq_length),
        separator_ids=tuple(sep),
        voco_id=voco_id,
        k=int(k if k is not None else trained_k),
    )


def read_image_spec(path: Path, config) -> ImageSpec:
    proc_file = Path(path) / "preprocessor_config.json"
    proc = json.loads(proc_file.read_text()) if proc_file.exists() else {}
    size = int(config.vision_config.image_size)
    mean = tuple(proc.get("image_mean", [0.48145466, 0.4578275, 0.40821073]))
    std = tuple(proc.get("image_std", [0.26862954, 0.26130258, 0.27577711]))
    return ImageSpec(size=size, mean=mean, std=std)


HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def _check_folder(path: str | Path) -> Path:
    """A local checkpoint folder; a hub id ("org/name") is downloaded only when no such folder exists."""
    if not Path(path).exists() and HUB_ID.fullmatch(str(path)):
        from huggingface_hub import snapshot_download

        try:
            path = snapshot_download(str(path))
        except Exception as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"{path}: no such folder, and fetching it from the hub failed ({reason})") from None
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: model folder not found")
    if not (path / "config.json").is_file():
        raise UserError(f"{path}: not a checkpoint folder (no config.json)")
    return path


def _bnb_config(compute_dtype: torch.dtype):
    try:
        import bitsandbytes  # noqa: F401
    except Exception as e:  # ImportError, or a broken native library
        raise UserError(f"--weights nf4 needs bitsandbytes, which cannot be loaded here: {e}") from None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                              bnb_4bit_compute_dtype=compute_dtype,
                              llm_int8_skip_modules=["lm_head"])


def load_model(path: str | Path, device: str | None = None, dtype: str | None = None,
               vision: bool = True, weights: str = "full", voco_tokens: int | None = None,
               attn: str | None = None, allow_baseline: bool = False) -> VocoModel:
    """Load a VoCo checkpoint folder.

    With `vision=False` only the language model and its head are loaded (all that answering
    needs); `weights` "nf4" or "int4" makes that language model's decoder 4-bit (quantize.py). Baseline
    checkpoints of `vococli experiment` (avg-pool) load only with `allow_baseline`.
    """
    import transformers
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM, LlavaForConditionalGeneration

    path = _check_folder(path)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    check_weights(weights)
    if weights != "full" and vision:
        raise UserError(f"--weights {weights} is for answering only; compress with the full-precision model")
    if weights == "int4":
        check_int4_target(dev, dt)
    config = AutoConfig.from_pretrained(path)
    if config.model_type != "llava":
        raise UserError(f"{path}: model type {config.model_type!r}, expected a llava checkpoint")
    if getattr(config, "voco_compressor", "voco") != "voco" and not allow_baseline:
        raise UserError(f"{path}: a {config.voco_compressor!r} baseline made for `vococli experiment`, "
                        "not a VoCo model; compress and ask need a VoCo checkpoint")
    tokenizer = AutoTokenizer.from_pretrained(path)
    layout = read_layout(config, tokenizer, voco_tokens)
    kwargs = {"dtype": dt}
    if attn:
        kwargs["attn_implementation"] = attn
    if vision:
        llava = LlavaForConditionalGeneration.from_pretrained(path, **kwargs).to(dev).eval()
        lm = llava
    else:
        llava = None
        if weights == "nf4":  # quantised while loading: the full weights never sit on the device
            kwargs["quantization_config"] = _bnb_config(dt)
            kwargs["device_map"] = {"": dev}
        # Read only the language model's weights out of the Llava checkpoint.
        # On disk (llava-hf layout): language_model.model.* / language_model.lm_head.*;
        # newer saves use model.language_model.* / lm_head.*.
        mapping = {r"^language_model\.": "", r"^model\.language_model\.": "model."}
        # the vision weights are skipped on purpose: silence the report that lists them as unexpected
        verbosity = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()
        try:
            lm = LlamaForCausalLM.from_pretrained(path, config=config.text_config, key_mapping=mapping, **kwargs)
        finally:
            transformers.logging.set_verbosity(verbosity)
        if weights == "int4":  # read on the CPU, then quantised onto the device one Linear at a time
            lm = quantize_decoder(lm, weights, dt, device=dev)
        if weights != "nf4":
            lm = lm.to(dev)
        lm.eval()
    return VocoModel(lm=lm, llava=llava, tokenizer=tokenizer, layout=layout,
                     image=read_image_spec(path, config), fingerprint=fingerprint_checkpoint(path),
                     path=os.fspath(path), device=dev, dtype=dt, weights=weights)
