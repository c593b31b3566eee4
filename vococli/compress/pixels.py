"""Frames (uint8 RGB) -> normalised pixel batches, the LLaVA-1.5 way, in torch.

Pad each frame to a square with the mean colour (centred), resize to the vision tower's input
size (bicubic, antialiased), rescale to [0, 1] and normalise. Runs on the model's device.

Frames much larger than the model's input (1080p, 4K: longer side over LARGE x the input size, video/backends/base.py)
are decoded at LARGE x the input size where the decoder can scale (video/backends), else brought
to the input size as soon as they are decoded (`shrink_large_frames`, one frame at a time, in 8
bits), so that memory does not grow with the video's resolution. Their pixel values then differ
slightly from padding and resizing the full frame in float (on a 1080p clip and a 64-pixel input:
0.4-0.5 levels of 255 on average; tests/test_memory.py); frames up to LARGE x the input size go
the exact way above.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from vococli.families.base import ImageSpec
from vococli.video.backends.base import decode_size


def pad_to_square(x: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) uint8 -> (B, 3, S, S) with S = max(H, W), image centred on `fill` (3,)."""
    b, c, h, w = x.shape
    s = max(h, w)
    if h == w:
        return x
    out = fill.view(1, c, 1, 1).expand(b, c, s, s).clone()
    top, left = (s - h) // 2, (s - w) // 2
    out[:, :, top:top + h, left:left + w] = x
    return out


def frames_as_tensor(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Decoded frames as a torch tensor (decoders may hand out read-only buffers: those are copied)."""
    if isinstance(frames, np.ndarray) and not frames.flags.writeable:
        frames = frames.copy()
    return torch.as_tensor(frames)


def to_pixels(frames: np.ndarray | torch.Tensor, spec: ImageSpec, device: torch.device,
              dtype: torch.dtype) -> torch.Tensor:
    """(B, H, W, 3) uint8 frames -> (B, 3, size, size) normalised pixel values in `dtype`."""
    x = frames_as_tensor(frames).to(device, non_blocking=True).permute(0, 3, 1, 2)  # (B, 3, H, W)
    # constants copied with non_blocking: a plain copy from host memory would wait for queued GPU work
    fill = torch.tensor([int(m * 255) for m in spec.mean], dtype=torch.uint8).to(device, non_blocking=True)
    x = pad_to_square(x, fill).float()
    if x.shape[-1] != spec.size:
        x = F.interpolate(x, size=(spec.size, spec.size), mode="bicubic", antialias=True, align_corners=False)
        x = x.round().clamp(0, 255)  # the reference resizes in uint8 images
    mean = torch.tensor(spec.mean).to(device, non_blocking=True).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).to(device, non_blocking=True).view(1, 3, 1, 1)
    return ((x / 255.0 - mean) / std).to(dtype)


def shrink_large_frames(frames: np.ndarray, spec: ImageSpec) -> np.ndarray:
    """(B, H, W, 3) uint8 frames -> (B, S, S, 3) uint8, padded to a square and resized one frame
    at a time (an 8-bit padded 4K frame is 44 MB; in float it would be 177 MB). Frames that are
    not large are returned as they are (to_pixels resizes them in float, as before)."""
    b, h, w, _ = frames.shape
    if decode_size(w, h, spec.size) is None:  # not large
        return frames
    fill = torch.tensor([int(m * 255) for m in spec.mean], dtype=torch.uint8)
    out = np.empty((b, spec.size, spec.size, 3), dtype=np.uint8)
    for i in range(b):
        x = pad_to_square(frames_as_tensor(frames[i:i + 1]).permute(0, 3, 1, 2), fill)
        x = F.interpolate(x, size=(spec.size, spec.size), mode="bicubic", antialias=True, align_corners=False)
        out[i] = x[0].permute(1, 2, 0).numpy()
    return out
