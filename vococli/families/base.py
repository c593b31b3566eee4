"""What every model family provides: the loaded model, its VoCo token layout, and the family's
capabilities (how to load it, compute image features, shift cached keys, answer without vision).

A family is one way of building a LLaVA-style model out of transformers classes (llava_llama.py:
`LlavaForConditionalGeneration` with a LLaMA decoder). The rest of vococli asks the model's family
for what differs between architectures and never looks at class names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vococli.errors import UserError

if TYPE_CHECKING:  # torch loads with the first model, not when the CLI starts
    import torch

IMAGE_TOKEN = "<image>"
VOCO_TOKEN = "<voco>"


@dataclass(frozen=True)
class VocoLayout:
    """Token layout of one compressed frame: `BOS | image | separator | <voco> x K`.

    For the compressors that need no VoCo training (`pool`, `full`: compressors/pool.py) a frame
    is `BOS | slot x K`: no image tokens or separator in the sequence (`n_image` 0), the slots
    hold the frame's image features (pooled or not), and the text also sees the first frame's
    BOS (`bos_visible`), as a stock model always sees the start of its sequence.
    """

    bos_id: int
    n_image: int
    separator_ids: tuple[int, ...]
    voco_id: int
    k: int
    bos_visible: bool = False

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


class ModelFamily:
    """The operations that differ between model architectures. Subclasses fill them in for one
    family and are registered by name in `vococli.families` (one file and one registry line each).

    Capabilities are explicit attributes, so callers never test class names:
    - `stage1_fast_path`: the decoder's layers expose `input_layernorm`, `self_attn.k_proj/v_proj`
      and `head_dim`, and apply RoPE to keys only, so stage 1 may recompute the VoCo slots'
      keys/values from each layer's input (compress/stage1.py);
    - `shiftable_rope`: the RoPE types whose cached keys can be moved to other positions by a
      rotation (their frequencies do not depend on the sequence length).
    """

    name: str = ""
    stage1_fast_path: bool = False
    shiftable_rope: frozenset[str] = frozenset()

    def matches(self, config) -> bool:
        """Whether a checkpoint's transformers config is of this family."""
        raise NotImplementedError

    def load(self, path: Path, config, device, dtype, vision: bool, weights: str, attn: str | None):
        """(lm, full): `lm` a causal LM with a head; `full` the whole model with its vision tower,
        or None when `vision` is False (then `lm` is the language model alone)."""
        raise NotImplementedError

    def language_model(self, model: VocoModel) -> torch.nn.Module:
        """The decoder stack without the head."""
        raise NotImplementedError

    def image_features(self, model: VocoModel, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) pixels -> (B, n_image, hidden) features in the language model's space."""
        raise NotImplementedError

    def shift_keys(self, model: VocoModel, keys: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        """Cached keys (..., T, H, K, D) moved by `shift[t]` positions per frame t."""
        raise NotImplementedError

    def answering_model(self, model: VocoModel, weights: str) -> VocoModel:
        """The language-model-only view of a loaded model (shares its weights), 4-bit with
        `weights` "nf4"/"int4"."""
        raise NotImplementedError

    def vision_tower(self, model: VocoModel) -> torch.nn.Module:
        """The vision tower module (what `--freeze-vision` freezes)."""
        raise NotImplementedError

    def vision_config(self, model: VocoModel):
        """The vision tower's config, or None when the model was loaded without it."""
        return None

    def image_spec(self, path: Path, config) -> ImageSpec:
        """Preprocessing constants from the checkpoint folder."""
        raise NotImplementedError


@dataclass
class VocoModel:
    """A loaded checkpoint. `llava` is None when only the language model was loaded."""

    lm: torch.nn.Module  # causal LM with a head: the full model, or the language model alone
    llava: torch.nn.Module | None  # the full model with its vision tower
    tokenizer: object
    layout: VocoLayout
    image: ImageSpec
    fingerprint: str
    path: str
    device: torch.device
    dtype: torch.dtype
    weights: str = "full"  # the decoder's Linear weights: "full" (dtype), "nf4" or "int4" (choices.Weights)
    family: ModelFamily | None = None  # None: the LLaVA + LLaMA family
    earlier_fingerprints: tuple[str, ...] = ()  # what earlier vococli versions called the same checkpoint
    compressor: str = "voco"  # what compress keeps per frame (vococli.compressors; the layout follows it)

    @property
    def fingerprints(self) -> tuple[str, ...]:
        """Every fingerprint a cache made by this checkpoint may carry, the current one first."""
        return (self.fingerprint, *self.earlier_fingerprints)

    def __post_init__(self):
        if self.family is None:
            from vococli.families import get_family

            self.family = get_family("llava_llama")

    @property
    def text_config(self):
        return self.lm.config.get_text_config(decoder=True)

    @property
    def language_model(self) -> torch.nn.Module:
        """The decoder stack without the head."""
        return self.family.language_model(self)

    @property
    def max_positions(self) -> int:
        return int(self.text_config.max_position_embeddings)


def is_voco_checkpoint(config, tokenizer) -> bool:
    """Whether a checkpoint was made for VoCo: `<voco>` in its tokenizer and K in its config."""
    voco_id = tokenizer.convert_tokens_to_ids(VOCO_TOKEN)
    return (voco_id is not None and voco_id != tokenizer.unk_token_id
            and getattr(config, "voco_num_tokens", None) is not None)


def image_grid(config) -> int:
    """Side of a frame's square grid of image tokens (`image_seq_length` = side^2)."""
    n_image = getattr(config, "image_seq_length", None)
    side = int(round(n_image ** 0.5)) if isinstance(n_image, int) and n_image > 0 else 0
    if side * side != n_image:
        raise UserError(f"the checkpoint's config has image_seq_length {n_image!r}: pooling needs a square grid "
                        "of image tokens")
    return side


def stock_layout(config, tokenizer, k: int) -> VocoLayout:
    """The `BOS | slot x k` layout of the pool and full compressors (any checkpoint of the family)."""
    bos = tokenizer.bos_token_id
    image_id = getattr(config, "image_token_index", None)
    if not isinstance(bos, int) or not isinstance(image_id, int):
        raise UserError("the checkpoint's tokenizer has no BOS token or its config no image_token_index")
    return VocoLayout(bos_id=bos, n_image=0, separator_ids=(), voco_id=image_id, k=k, bos_visible=True)


def read_layout(config, tokenizer, k: int | None = None) -> VocoLayout:
    """The VoCo layout from the checkpoint's config and tokenizer (tokens looked up by name)."""
    voco_id = tokenizer.convert_tokens_to_ids(VOCO_TOKEN)
    if voco_id is None or voco_id == tokenizer.unk_token_id:
        raise UserError(f"the checkpoint's tokenizer has no {VOCO_TOKEN} token: it is not a VoCo checkpoint "
                        "(fine-tune one with `vococli train`)")
    trained_k = getattr(config, "voco_num_tokens", None)
    if trained_k is None and k is None:
        raise UserError("the checkpoint's config has no voco_num_tokens; pass --voco-tokens")
    n_image = getattr(config, "image_seq_length", None)
    if type(n_image) is not int or n_image < 1 or (trained_k is not None and type(trained_k) is not int):
        raise UserError(f"the checkpoint's config has image_seq_length {n_image!r} and voco_num_tokens "
                        f"{trained_k!r}: both must be whole numbers")
    # more slots than the model was trained with (or than a frame has image tokens) hold nothing new
    most = min(trained_k, n_image) if trained_k is not None else n_image
    if trained_k is not None and not 1 <= trained_k <= n_image:
        raise UserError(f"voco_num_tokens must be between 1 and the {n_image} image tokens of a frame, got {trained_k}",
                        option="voco_tokens")
    if k is not None and (type(k) is not int or not 1 <= k <= most):
        why = f"the checkpoint was trained with K={trained_k}" if trained_k is not None else f"a frame has {n_image} image tokens"
        raise UserError(f"voco_tokens must be between 1 and {most} ({why}), got {k}", option="voco_tokens")
    sep = tokenizer(getattr(config, "voco_separator", "\n"), add_special_tokens=False)["input_ids"]
    rows = getattr(getattr(config, "text_config", config), "vocab_size", None)
    if isinstance(rows, int):
        named = {VOCO_TOKEN: voco_id, "BOS": tokenizer.bos_token_id, "separator": max(sep, default=None),
                 IMAGE_TOKEN: getattr(config, "image_token_index", None)}
        for what, token_id in named.items():
            if isinstance(token_id, int) and not 0 <= token_id < rows:
                raise UserError(f"the tokenizer's {what} id {token_id} is outside the model's embedding ({rows} rows): "
                                "the tokenizer and the weights do not belong together")
    return VocoLayout(
        bos_id=tokenizer.bos_token_id,
        n_image=n_image,
        separator_ids=tuple(sep),
        voco_id=voco_id,
        k=int(k if k is not None else trained_k),
    )
