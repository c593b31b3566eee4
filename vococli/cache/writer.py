"""Writing a .voco cache: chunks written to a temporary name and renamed, so a chunk on disk is
complete or absent; an interrupted compress resumes after the last chunk. `ChunkQueue` writes the
chunks in a background thread, so compress computes the next frames meanwhile.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import threading
import uuid
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from vococli.cache.chunks import chunk_path, crc32, list_chunks
from vococli.cache.meta import CacheMeta, ChunkMeta
from vococli.errors import EnvironmentProblem, UserError, write_failure
from vococli.locks import FolderLock, lock_folder

if TYPE_CHECKING:
    import torch


def _process_umask() -> int:
    mask = os.umask(0o022)  # read once, at import, before any writer thread exists
    os.umask(mask)
    return mask


UMASK = _process_umask()
class CacheWriter:
    """Writes chunks of a cache; on open, finds where an earlier run of the same job stopped.
    While open (a `with` block) it holds a lock on the folder: a second writer is refused."""

    def __init__(self, root: Path, meta: CacheMeta, overwrite: bool = False, wait_s: float = 0.0,
                 on_wait=None):
        self.root = Path(root)
        self._held = FolderLock()  # nothing held yet
        self.meta = meta if meta.cache_id else replace(meta, cache_id=uuid.uuid4().hex)
        self.next_chunk, self.targets_done, self.frames_done, self.lost = 0, 0, 0, 0
        self.finished = False
        self.wait_s, self.on_wait = wait_s, on_wait  # how long to wait for another process writing it
        if self.root.is_dir():
            self._lock()
        if self.root.exists() and overwrite:
            self._remove()
        if self.root.exists():
            self._resume()
        if not self.root.exists():  # new, or removed by --overwrite (whose lock went with it)
            self.release()
            self.root.mkdir(parents=True, exist_ok=True)
            self._lock()

    def _lock(self) -> None:
        self._held = lock_folder(self.root, "another vococli process is writing this cache; wait for it to "
                                 "finish or choose another -o", wait_s=self.wait_s, on_wait=self.on_wait)

    def release(self) -> None:
        """Let another process write this cache (a writer is released when collected, too)."""
        self._held.release()

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
        key = last.cache.first_difference(self.meta)
        if key:
            raise UserError(f"{self.root}: exists with a different {key.replace('_', ' ')}; "
                            "pass --overwrite to replace it or choose another -o")
        self.meta = replace(self.meta, cache_id=last.cache.cache_id)  # the chunks to come belong to this cache
        self.next_chunk = len(chunks)
        self.targets_done = last.targets_done
        self.frames_done = sum(c.meta.frames for c in chunks)
        self.lost = last.frames_lost
        self.finished = last.final

    def write(self, keys: torch.Tensor, values: torch.Tensor, timestamps: list[float],
              targets_done: int, lost: int, final: bool) -> None:
        """Append one chunk: keys/values (L, F, Hkv, K, D) of F frames."""
        import torch
        from safetensors.torch import save_file

        from vococli.cache.int8 import quantize_int8

        tensors = {"keys": keys.cpu(), "values": values.cpu()}
        if self.meta.storage == "int8":
            tensors["keys"], tensors["keys_scale"] = quantize_int8(tensors["keys"])
            tensors["values"], tensors["values_scale"] = quantize_int8(tensors["values"])
        tensors = {n: t.contiguous() for n, t in tensors.items()}
        tensors["timestamps"] = torch.tensor(timestamps, dtype=torch.float64)
        meta = ChunkMeta(self.meta, chunk=self.next_chunk, frame_start=self.frames_done, frames=int(keys.shape[1]),
                         targets_done=int(targets_done), frames_lost=int(lost), final=bool(final),
                         crc32={n: crc32(t) for n, t in tensors.items()})
        path = chunk_path(self.root, self.next_chunk)
        tmp = path.with_suffix(".tmp")
        try:
            try:
                save_file(tensors, str(tmp), metadata={"vococli": json.dumps(meta.to_dict())})
            except Exception as e:
                reason = write_failure(e)
                if reason is not None:
                    raise EnvironmentProblem(f"{path}: cannot be written ({reason}); the chunks before it are kept: "
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

