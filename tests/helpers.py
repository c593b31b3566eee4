"""Helpers the test files share: running the CLI, test clips, random caches, reference forwards."""

import copy
import os
import subprocess
import sys

import numpy as np
import torch

from conftest import ROOT
from vococli.answer.buffers import forward_tokens
from vococli.answer.paths import open_session
from vococli.answer.session import Session
from vococli.families.quantize import int4_group_size
from vococli.cache.kv import VideoCache
from vococli.compress.stage1 import compress_pixels, frame_embeddings, image_features
from vococli.layout import text_start, voco_mask, voco_positions
from vococli.video.sampling import Sampling

CLIP = ROOT / "video" / "pancake.mkv"
SAMPLING = Sampling(fps=2)  # 21 frames
TEXT = "\nYou answer questions about a video. USER: what is the man holding? ASSISTANT: a red ball"


def run(*args, **kw):
    env = dict(os.environ, VOCOCLI_MODEL="")
    return subprocess.run([sys.executable, "-m", "vococli", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=300, **kw)


def random_video(model, n_frames, seed=0):
    cfg = model.text_config
    g = torch.Generator().manual_seed(seed)
    d = cfg.hidden_size // cfg.num_attention_heads
    shape = (cfg.num_hidden_layers, n_frames, cfg.num_key_value_heads, model.layout.k, d)
    return VideoCache(keys=torch.randn(shape, generator=g), values=torch.randn(shape, generator=g),
                      timestamps=np.arange(n_frames, dtype=float))


def pixels_for(model, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = model.image.size
    return torch.randn(n, 3, s, s, generator=g)


def text_ids(model):
    return torch.tensor([model.tokenizer(TEXT, add_special_tokens=False)["input_ids"]])


def one_forward_logits(model, pixels, ids):
    """Reference: all frames and the text in ONE forward with the block VoCo mask."""
    embeds = frame_embeddings(model, image_features(model, pixels))  # (T, frame_len, H)
    t = embeds.shape[0]
    text = model.language_model.get_input_embeddings()(ids)  # (1, N, H)
    seq = torch.cat([embeds.reshape(1, -1, embeds.shape[-1]), text], dim=1)
    mask = voco_mask(model.layout, t, ids.shape[1], model.dtype).to(model.device)
    pos = voco_positions(model.layout, t, ids.shape[1]).view(1, -1).to(model.device)
    with torch.inference_mode():
        logits = model.llava(inputs_embeds=seq, attention_mask=mask, position_ids=pos).logits
    return logits[0, -ids.shape[1]:].float()


def two_stage_logits(model, pixels, ids):
    keys, values = compress_pixels(model, pixels)
    video = VideoCache(keys=keys, values=values, timestamps=np.arange(pixels.shape[0], dtype=float))
    cache = video.past_key_values(model)
    return forward_tokens(model, ids, cache, text_start(model.layout, video.n_frames), all_logits=True)[0]


def with_layers(m, n: int, seed: int = 0):
    """`m` with its decoder cut to, or grown to, `n` layers (added layers: layer 0 plus noise)."""
    g = torch.Generator().manual_seed(seed)
    layers = m.language_model.layers
    del layers[n:]
    while len(layers) < n:
        layers.append(copy.deepcopy(layers[0]))
        layers[-1].self_attn.layer_idx = len(layers) - 1
        for p in layers[-1].parameters():
            p.data += 0.05 * torch.randn(p.shape, generator=g)
    m.language_model.config.num_hidden_layers = n
    return m


def teacher_forced_logits(session, ids: list[int], tokens: list[int]) -> torch.Tensor:
    """(1 + len(tokens), V) float32 logits after the prompt and after each of `tokens` fed in turn."""
    out = [session.prefill(ids, len(tokens) + 1).float().cpu().clone()]
    out += [session.decode_step(t).float().cpu().clone() for t in tokens]
    return torch.cat(out)


def greedy_tokens(session, ids: list[int], steps: int) -> list[int]:
    """`steps` greedy tokens after the prompt (end-of-sequence not treated specially)."""
    tokens = [int(session.prefill(ids, steps + 1).argmax())]
    while len(tokens) < steps:
        tokens.append(int(session.decode_step(tokens[-1]).argmax()))
    return tokens


def check_within_rounding(ckpt, tiny_model, device: str, weights: str = "full", steps: int = 32) -> None:
    """The compiled decode against the plain one in bf16, judged by what bf16 itself costs.

    Tokens: the float32 plain path's greedy answer, fed to every path. Rounding scale `r`: the
    largest distance of the plain bf16 logits from the float32 ones. The compiled path must stay
    within 2r (+ 1e-3) of the plain path on the same weights (bf16, nf4 or int4), and pick the same
    greedy token at every step where the plain top two logits are more than 4r apart (closer ties
    may flip under any change of summation order, fused kernels included).
    """
    from vococli.families.loading import load_model

    f32 = load_model(ckpt, device=device, dtype="float32", vision=False)
    bf16 = load_model(ckpt, device=device, dtype="bfloat16", vision=False)
    model = load_model(ckpt, device=device, dtype="bfloat16", vision=False, weights=weights) if weights != "full" else bf16
    video = random_video(tiny_model, 6, seed=2)
    ids = Session(f32, video).prompt_ids("what is here?")
    tokens = greedy_tokens(Session(f32, video), ids, steps)
    r = (teacher_forced_logits(Session(bf16, video), ids, tokens)
         - teacher_forced_logits(Session(f32, video), ids, tokens)).abs().max().item()
    plain = teacher_forced_logits(Session(model, video), ids, tokens)
    compiled = teacher_forced_logits(open_session(model, video, "compiled"), ids, tokens)
    assert (compiled - plain).abs().max().item() <= 2 * r + 1e-3
    top = plain.topk(2, dim=-1).values
    clear = (top[:, 0] - top[:, 1]) > 4 * r
    assert clear.sum() >= steps // 4, (r, top[:, 0] - top[:, 1])  # enough steps to judge
    assert torch.equal(compiled.argmax(-1)[clear], plain.argmax(-1)[clear])


def group_quantised(w: torch.Tensor, group: int) -> torch.Tensor:
    """Asymmetric 4-bit per group of `group` inputs, written out here: w ~ min + q * (max - min) / 15."""
    g = w.float().reshape(w.shape[0], -1, group)
    lo, hi = g.amin(-1, keepdim=True), g.amax(-1, keepdim=True)
    step = (hi - lo).clamp(min=1e-6) / 15
    return (((g - lo) / step).round().clamp(0, 15) * step + lo).reshape(w.shape)


def tinygemm_reference(w: torch.Tensor, group: int):
    """The weights tinygemm multiplies by, and each group's step, computed in the weight's own dtype
    (scale and zero point are stored in it): zero = min + 8 step, w ~ (q - 8) step + zero."""
    g = w.reshape(w.shape[0], -1, group)
    lo, hi = g.amin(-1, keepdim=True), g.amax(-1, keepdim=True)
    step = ((hi - lo) / 15).clamp(min=torch.finfo(w.dtype).smallest_normal)
    zero = lo + step * 8
    q = ((g - (zero - step * 8)) / step).round().clamp(0, 15)
    return ((q - 8) * step + zero).float(), step.float()


def check_int4_linears(q4, full, tol: float = 0.25) -> int:
    """Every quantised Linear of `q4`, read back through its own kernel (fed the identity matrix),
    holds the reference weights of the matching Linear of `full` to within `tol` of a step; a wrong
    group size, zero point or rounding, or unquantised weights, are off by up to half a step."""
    pairs = [(a, b) for a, b in zip(q4.lm.model.layers.modules(), full.lm.model.layers.modules())
             if isinstance(a, torch.nn.Linear)]
    for lin, ref in pairs:
        k = lin.in_features
        eye = torch.eye(k, dtype=full.dtype, device=full.device)
        got = (lin(eye) - lin(torch.zeros_like(eye))).float().T  # (out, in), bias removed
        group = int4_group_size(k)
        want, step = tinygemm_reference(ref.weight.data, group)
        err = (got.reshape(want.shape) - want).abs()
        assert (err <= tol * step + 1e-6).all(), (err / step).max().item()
    return len(pairs)


def dequantised_copy(q4, full):
    """`full` with every decoder Linear's weight replaced by the weight `q4`'s matching Linear
    actually multiplies by (read back through its own kernel, fed the identity matrix): the same
    weights as the 4-bit model, computed by plain matmuls."""
    ref = copy.deepcopy(full)
    pairs = [(a, b) for a, b in zip(q4.lm.model.layers.modules(), ref.lm.model.layers.modules())
             if isinstance(a, torch.nn.Linear)]
    with torch.inference_mode():
        for lin, dst in pairs:
            eye = torch.eye(lin.in_features, dtype=full.dtype, device=full.device)
            dst.weight.data.copy_((lin(eye) - lin(torch.zeros_like(eye))).T)
    return ref


def check_four_bit_against_full_precision(q4, full, video, steps: int = 16) -> None:
    """Teacher-forced on the full-precision greedy answer: the 4-bit logits equal those of its own
    weights dequantised (rounding only, within 2% of the logit range) and stay close to the
    full-precision logits (cosine > 0.9 at every step), without being them."""
    ids = Session(full, video).prompt_ids("what is here?")
    tokens = greedy_tokens(Session(full, video), ids, steps)
    got = teacher_forced_logits(Session(q4, video), ids, tokens)
    same_weights = teacher_forced_logits(Session(dequantised_copy(q4, full), video), ids, tokens)
    fp = teacher_forced_logits(Session(full, video), ids, tokens)
    assert (got - same_weights).abs().max() <= 0.02 * same_weights.abs().max()
    assert torch.nn.functional.cosine_similarity(got, fp, dim=-1).min() > 0.9
    assert (got - fp).abs().max() > (got - same_weights).abs().max()  # the 4-bit error is really there


def chunk_metadata(path) -> dict:
    """A cache chunk's metadata, as written."""
    import json

    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["vococli"])


def rewrite_chunk(path, meta: dict | None = None, tensors: dict | None = None) -> None:
    """Write a chunk again with other metadata and/or tensors (what tampering or a buggy writer does)."""
    import json

    from safetensors.torch import load_file, save_file

    save_file(tensors if tensors is not None else load_file(str(path)), str(path),
              metadata={"vococli": json.dumps(meta if meta is not None else chunk_metadata(path))})


def make_clip(path, width, height, seconds, fps=10):
    """An H.264 clip of a red block moving over a gradient (PyAV)."""
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        s.options = {"preset": "ultrafast"}
        yy, xx = np.mgrid[0:height, 0:width]
        base = np.stack([xx * 255 // width, yy * 255 // height, np.full_like(xx, 128)], -1).astype(np.uint8)
        for i in range(int(seconds * fps)):
            img = base.copy()
            x0 = (i * 37) % (width - width // 5)
            img[height // 3: height // 3 + height // 5, x0: x0 + width // 5] = (255, 40, 40)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
