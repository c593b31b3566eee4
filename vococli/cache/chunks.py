"""The .voco cache: a folder of numbered safetensors chunks (format in docs/cache-format.md).

Each chunk holds `keys` and `values` shaped (layers, frames, kv_heads, K, head_dim) in the model
dtype (or int8 with `keys_scale`/`values_scale` when stored in 8 bits), `timestamps` (frames,)
float64, and the whole metadata as a JSON string under the safetensors metadata key "vococli",
including a CRC-32 of each tensor's bytes, checked when the chunk is loaded. Chunks are written to a temporary name and renamed, so a chunk on disk is complete or absent; an
interrupted compress resumes after the last chunk. The last chunk carries `"final": true`.
`ChunkQueue` writes chunks in a background thread, so compress computes the next frames meanwhile.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import shutil
import threading
import weakref
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from typing import TYPE_CHECKING

import numpy as np
from safetensors import safe_open

from vococli.errors import UserError

if TYPE_CHECKING:  # torch and the model code load only when tensors are read or written, so that
    import torch  # `vococli info` on a cache answers at once

    from vococli.cache.kv import VideoCache

FORMAT = "vococli-cache"
FORMAT_VERSION = 1
CHUNK_GLOB = "chunk-*.safetensors"


def _process_umask() -> int:
    mask = os.umask(0o022)  # read once, at import, before any writer thread exists
    os.umask(mask)
    return mask


UMASK = _process_umask()
# metadata fields that must agree for a resume to continue an existing cache
RESUME_KEYS = ("format", "format_version", "model_fingerprint", "k", "c0", "dtype", "storage", "video",
               "sampling", "planned_frames")


def video_identity(path: Path) -> dict:
    """Size, mtime and a hash of the first and last MiB: cheap and enough to tell videos apart."""
    st = path.stat()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(0, st.st_size - (1 << 20)))
        h.update(f.read(1 << 20))
    return {"name": path.name, "size": st.st_size, "mtime": int(st.st_mtime), "sha256_ends": h.hexdigest()[:32]}


def same_video(a: dict, b: dict) -> bool:
    return a.get("size") == b.get("size") and a.get("sha256_ends") == b.get("sha256_ends")


def chunk_path(root: Path, i: int) -> Path:
    return root / f"chunk-{i:05d}.safetensors"


@dataclass
class Chunk:
    path: Path
    meta: dict


def _read_meta(path: Path) -> dict:
    try:
        with safe_open(str(path), framework="numpy") as f:  # the header only
            raw = (f.metadata() or {}).get("vococli")
    except Exception as e:
        raise UserError(f"{path}: unreadable cache chunk, truncated or not a safetensors file ({e})") from None
    if raw is None:
        raise UserError(f"{path}: not a vococli cache chunk (no vococli metadata)")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: damaged cache chunk (its metadata is not valid JSON: {e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UserError(f"{path}: not a vococli cache chunk")
    if meta.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{path}: cache format version {meta.get('format_version')}, this vococli reads "
                        f"version {FORMAT_VERSION}; compress the video again")
    return meta


def list_chunks(root: Path) -> list[Chunk]:
    """All chunks in order, each validated; refuses gaps and unreadable chunks."""
    root = Path(root)
    if not root.exists():
        raise UserError(f"{root}: cache not found")
    if not root.is_dir():
        raise UserError(f"{root}: not a vococli cache (expected a .voco folder; `vococli compress` makes one)")
    chunks = [Chunk(p, _read_meta(p)) for p in sorted(root.glob(CHUNK_GLOB))]
    for i, c in enumerate(chunks):
        if c.path.name != chunk_path(root, i).name:
            raise UserError(f"{root}: chunk {i} is missing; the cache is incomplete")
        if c.meta["chunk"] != i:
            raise UserError(f"{c.path}: holds chunk {c.meta['chunk']} of a cache, not chunk {i}: it was copied "
                            "from another cache")
        differs = [k for k in RESUME_KEYS if not _same_field(k, c.meta, chunks[0].meta)]
        if differs:
            raise UserError(f"{c.path}: belongs to another cache (its {differs[0].replace('_', ' ')} differs "
                            "from the first chunk's)")
    return chunks


def read_info(root: Path) -> dict:
    """Metadata of a cache (from its last chunk) with totals over all chunks."""
    chunks = list_chunks(root)
    if not chunks:
        raise UserError(f"{root}: not a vococli cache (no chunk files)")
    meta = dict(chunks[-1].meta)
    meta["frames"] = sum(c.meta["frames"] for c in chunks)
    meta["chunks"] = len(chunks)
    meta["bytes"] = sum(c.path.stat().st_size for c in chunks)
    return meta


def load_cache(root: Path, fingerprint: str | None = None, allow_partial: bool = False) -> VideoCache:
    """Load every chunk into one VideoCache; refuses unfinished caches and foreign models."""
    import torch

    from vococli.cache.kv import VideoCache

    root = Path(root)
    chunks = list_chunks(root)
    if not chunks or not (chunks[-1].meta.get("final") or allow_partial):
        raise UserError(f"{root}: the cache is unfinished; run `vococli compress` again to complete it")
    meta = chunks[-1].meta
    if fingerprint is not None and meta["model_fingerprint"] != fingerprint:
        raise UserError(f"{root}: made by another model ({meta.get('model_path', '?')}, fingerprint "
                        f"{meta['model_fingerprint']}; this model is {fingerprint}); compress the video with "
                        "this model")
    names = ["keys", "values"] + (["keys_scale", "values_scale"] if storage(meta) == "int8" else [])
    # chunks are read and checked in threads (zlib's CRC and safetensors' reads release the GIL)
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        read = list(pool.map(lambda c: _read_chunk(c, names), chunks))
    parts = {n: [r[n] for r in read] for n in names}
    stamps = [r["timestamps"].numpy() for r in read]
    full = {n: torch.cat(p, dim=1) for n, p in parts.items()}
    if full["keys"].shape[1] == 0:
        raise UserError(f"{root}: the cache holds no frames")
    return VideoCache(keys=full["keys"], values=full["values"], timestamps=np.concatenate(stamps), meta=dict(meta),
                      key_scales=full.get("keys_scale"), value_scales=full.get("values_scale"))


def _read_chunk(c: Chunk, names: list[str]) -> dict:
    """The tensors `names` and the timestamps of one chunk, checked against the chunk's CRC-32s
    (chunks written before the checksums were added have none and are read as they are)."""
    try:
        with safe_open(str(c.path), framework="pt") as f:
            tensors = {n: f.get_tensor(n) for n in [*names, "timestamps"]}
    except Exception as e:
        raise UserError(f"{c.path}: damaged cache chunk ({e})") from None
    for n, expected in c.meta.get("crc32", {}).items():
        if n in tensors and crc32(tensors[n]) != expected:
            raise UserError(f"{c.path}: damaged cache chunk (its {n} do not match their checksum); "
                            "compress the video again with --overwrite")
    return tensors


def crc32(t: torch.Tensor) -> int:
    """CRC-32 of a CPU tensor's bytes."""
    import torch

    return zlib.crc32(t.contiguous().view(-1).view(torch.uint8).numpy())


def _same_field(key: str, a: dict, b: dict) -> bool:
    """Whether two chunks' (or a chunk's and a new job's) metadata agree on one of RESUME_KEYS."""
    if key == "storage":
        return storage(a) == storage(b)
    return same_video(a[key], b[key]) if key == "video" else a[key] == b[key]


def storage(meta: dict) -> str:
    """How keys/values are stored: "int8", or the dtype itself (caches without the field)."""
    return meta.get("storage") or meta.get("dtype")


class CacheWriter:
    """Writes chunks of a cache; on open, finds where an earlier run of the same job stopped.
    While open (a `with` block) it holds a lock on the folder: a second writer is refused."""

    def __init__(self, root: Path, meta: dict, overwrite: bool = False):
        self.root = Path(root)
        self.meta = {"format": FORMAT, "format_version": FORMAT_VERSION, **meta}
        self.next_chunk, self.targets_done, self.frames_done, self.lost = 0, 0, 0, 0
        self.finished = False
        if self.root.is_dir():
            _lock_folder(self, self.root)
        if self.root.exists() and overwrite:
            self._remove()
        if self.root.exists():
            self._resume()
        if not self.root.exists():  # new, or removed by --overwrite (whose lock went with it)
            self.release()
            self.root.mkdir(parents=True, exist_ok=True)
            _lock_folder(self, self.root)

    def release(self) -> None:
        """Let another process write this cache (a writer is released when collected, too)."""
        unlock = getattr(self, "_unlock", None)
        if unlock is not None:
            unlock()

    def __enter__(self) -> CacheWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _remove(self) -> None:
        if self.root.is_dir() and all(p.is_file() and p.name.startswith("chunk-") and p.suffix in (".safetensors", ".tmp")
                                      for p in self.root.iterdir()):
            shutil.rmtree(self.root)
        else:
            raise UserError(f"{self.root}: exists and is not a vococli cache; not removing it")

    def _resume(self) -> None:
        if not self.root.is_dir():
            raise UserError(f"{self.root}: exists and is not a cache folder; choose another output")
        for tmp in self.root.glob("chunk-*.tmp"):  # a write cut short (the process was killed)
            tmp.unlink()
        try:
            chunks = list_chunks(self.root)
        except UserError as e:  # a damaged chunk
            raise UserError(f"{e}; delete the folder or run `vococli compress --overwrite` to start over") from None
        if not chunks:
            if any(self.root.iterdir()):
                raise UserError(f"{self.root}: exists and is not a vococli cache; choose another -o")
            return
        last = chunks[-1].meta
        for key in RESUME_KEYS:
            if not _same_field(key, last, self.meta):
                raise UserError(f"{self.root}: exists with a different {key.replace('_', ' ')}; "
                                "pass --overwrite to replace it or choose another -o")
        self.next_chunk = len(chunks)
        self.targets_done = last["targets_done"]
        self.frames_done = sum(c.meta["frames"] for c in chunks)
        self.lost = last["frames_lost"]
        self.finished = bool(last.get("final"))

    def write(self, keys: torch.Tensor, values: torch.Tensor, timestamps: list[float],
              targets_done: int, lost: int, final: bool) -> None:
        """Append one chunk: keys/values (L, F, Hkv, K, D) of F frames."""
        import torch
        from safetensors.torch import save_file

        from vococli.cache.int8 import quantize_int8

        meta = dict(self.meta, chunk=self.next_chunk, frame_start=self.frames_done, frames=int(keys.shape[1]),
                    targets_done=int(targets_done), frames_lost=int(lost), final=bool(final))
        tensors = {"keys": keys.cpu(), "values": values.cpu()}
        if storage(self.meta) == "int8":
            tensors["keys"], tensors["keys_scale"] = quantize_int8(tensors["keys"])
            tensors["values"], tensors["values_scale"] = quantize_int8(tensors["values"])
        tensors = {n: t.contiguous() for n, t in tensors.items()}
        tensors["timestamps"] = torch.tensor(timestamps, dtype=torch.float64)
        meta["crc32"] = {n: crc32(t) for n, t in tensors.items()}
        path = chunk_path(self.root, self.next_chunk)
        tmp = path.with_suffix(".tmp")
        try:
            try:
                save_file(tensors, str(tmp), metadata={"vococli": json.dumps(meta)})
            except Exception as e:  # safetensors reports a failed write (a full disk) as its own error
                if isinstance(e, OSError) or type(e).__name__ == "SafetensorError":
                    reason = getattr(e, "strerror", None) or str(e).strip().splitlines()[0]
                    raise UserError(f"{path}: cannot be written ({reason}); the chunks before it are kept: "
                                    "make room and run the same command to resume") from None
                raise
            try:
                os.chmod(tmp, 0o666 & ~UMASK)  # safetensors creates 0600: let a shared cache be read
            except OSError:  # file systems without permissions
                pass
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)  # a partial file would block every rerun
            raise
        self.next_chunk += 1
        self.frames_done += int(keys.shape[1])
        self.targets_done, self.lost, self.finished = int(targets_done), int(lost), bool(final)


def _lock_folder(owner, folder: Path) -> None:
    """Hold an exclusive lock on `folder` while `owner` lives, so that two processes never write
    one cache (where the platform has flock; it is released when the process ends)."""
    try:
        import fcntl
    except ImportError:
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise UserError(f"{folder}: another vococli process is writing this cache; wait for it to finish "
                        "or choose another -o") from None
    owner._unlock = weakref.finalize(owner, os.close, fd)  # runs once: at release() or when owner is collected


class ChunkQueue:
    """Writes a CacheWriter's chunks in order in a background thread, at most `depth` waiting.

    `submit` takes the same arguments as `CacheWriter.write`. Tensors on a GPU are copied at
    once into pinned host memory, asynchronously on the caller's stream, so their GPU memory is
    free again for the next batches; the thread waits for that copy before it writes. Leaving the
    `with` block waits until every submitted chunk is on disk, also when the block raises, so
    nothing computed is lost. After a failed write no later chunk is written (there would be a
    gap) and the error is raised in the caller: at the next `submit`, or when the block ends (as
    a note on the caller's own exception if it raised too).
    """

    def __init__(self, writer: CacheWriter, depth: int = 1):
        self.writer = writer
        self._jobs: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._work, daemon=True)
        self._thread.start()

    def _next_job(self):
        """The next submitted chunk, or None once the queue is closed and empty. Closing is an
        event, not an item put in the queue: a Ctrl-C in the caller cannot lose it."""
        while True:
            try:
                return self._jobs.get(timeout=0.05)
            except queue.Empty:
                if self._closed.is_set():
                    return None

    def _work(self) -> None:
        while (job := self._next_job()) is not None:
            copied, args = job
            if self._error is None:
                try:
                    if copied is not None:
                        copied.synchronize()
                    self.writer.write(*args)
                except BaseException as e:  # handed to the caller
                    self._error = e
            del job, args  # do not hold this chunk while waiting for the next

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def submit(self, keys: torch.Tensor, values: torch.Tensor, timestamps: list[float], targets_done: int,
               lost: int, final: bool) -> None:
        import torch

        self._raise()
        copied = None
        if keys.is_cuda:
            stream = torch.cuda.current_stream(keys.device)  # the copies run on the keys' own GPU
            keys, values = _to_pinned(keys), _to_pinned(values)
            copied = torch.cuda.Event()
            copied.record(stream)  # after both copies
        self._jobs.put((copied, (keys, values, timestamps, targets_done, lost, final)))

    def __enter__(self) -> ChunkQueue:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._closed.set()
        self._thread.join()
        if exc_type is None:
            self._raise()
        elif self._error is not None:
            exc.add_note(f"also, writing a chunk failed: {type(self._error).__name__}: {self._error}")


def _to_pinned(t: torch.Tensor) -> torch.Tensor:
    import torch

    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    return host.copy_(t, non_blocking=True)
