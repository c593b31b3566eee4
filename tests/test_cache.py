"""The .voco cache: bit-exact round trip, resume without recomputation, refusals."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import vococli.compress.pipeline as compress_mod
from vococli.cache.chunks import chunk_path, load_cache, read_info
from vococli.cache.meta import CacheMeta
from vococli.cache.writer import CacheWriter, ChunkQueue
from vococli.compress.pipeline import compress_video
from vococli.errors import UserError
from vococli.compress.pixels import to_pixels
from vococli.compress.stage1 import compress_pixels
from vococli.video.reader import VideoReader
from vococli.video.sampling import Sampling, plan_frames
from helpers import CLIP, SAMPLING



def cache_meta(k: int = 1) -> CacheMeta:
    """The metadata of a made-up cache, for writing chunks by hand."""
    return CacheMeta(model_fingerprint="f", model_path="m", k=k, c0=3, n_image=1, dtype="float32",
                     video={"size": 1}, sampling={}, planned_frames=4, backend="pyav", video_duration_s=1.0)


def test_round_trip_is_bit_exact(tiny_model, tmp_path):
    res = compress_video(tiny_model, CLIP, tmp_path / "a.voco", SAMPLING, batch_size=4, chunk_frames=8,
                         notice=lambda s: None)
    assert (res.frames, res.planned, res.lost, res.computed) == (21, 21, 0, 21)
    video = load_cache(res.path, fingerprint=tiny_model.fingerprint)
    # independent recomputation: all planned frames in one batch (decoded as compress decodes them:
    # at twice the tiny model's input size, see tests/test_memory.py)
    r = VideoReader(CLIP, fit=tiny_model.image.size)
    idx = plan_frames(r.timestamps, SAMPLING)
    frames = np.concatenate([b.frames for b in r.read(idx, 64)])
    keys, values = compress_pixels(tiny_model, to_pixels(frames, tiny_model.image, tiny_model.device,
                                                         tiny_model.dtype))
    torch.testing.assert_close(video.keys, keys, atol=1e-5, rtol=1e-5)  # batch size may change the sums
    torch.testing.assert_close(video.values, values, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(video.timestamps, r.timestamps[idx])
    # the stored tensors come back exactly
    from safetensors.torch import load_file

    first = load_file(str(chunk_path(res.path, 0)))
    assert torch.equal(first["keys"], video.keys[:, :8])
    import os
    import stat

    mask = os.umask(0o022)
    os.umask(mask)
    assert stat.S_IMODE(chunk_path(res.path, 0).stat().st_mode) == 0o666 & ~mask  # readable as umask allows
    info = read_info(res.path)
    assert info.frames == 21 and info.chunks == 3 and info.meta.k == tiny_model.layout.k


def test_compress_with_stage1_compiled_stores_the_same_cache(tiny_model, tmp_path):
    """--compile: batches of 4 and a last one of 1 (two compiled shapes); the layers are restored.
    Four layers, so that two run in full and are compiled."""
    import copy

    import torch._dynamo
    from torch._dynamo.utils import counters

    from helpers import with_layers

    tiny_model = with_layers(copy.deepcopy(tiny_model), 4)
    torch._dynamo.reset()
    graphs = counters["stats"]["unique_graphs"]
    plain = compress_video(tiny_model, CLIP, tmp_path / "p.voco", SAMPLING, batch_size=4, chunk_frames=8,
                           notice=lambda s: None)
    compiled = compress_video(tiny_model, CLIP, tmp_path / "c.voco", SAMPLING, batch_size=4, chunk_frames=8,
                              notice=lambda s: None, compile=True)
    a, b = (load_cache(r.path, fingerprint=tiny_model.fingerprint) for r in (plain, compiled))
    assert compiled.computed == 21 and counters["stats"]["unique_graphs"] - graphs >= 1
    torch.testing.assert_close(b.keys, a.keys, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b.values, a.values, atol=1e-5, rtol=1e-5)
    assert all("forward" not in vars(layer) for layer in tiny_model.language_model.layers)


class Interrupt(Exception):
    pass


def test_resume_computes_no_frame_twice(tiny_model, tmp_path, monkeypatch):
    calls = []
    real = compress_mod.compress_pixels

    def counting(model, pixels):
        calls.append(pixels.shape[0])
        return real(model, pixels)

    monkeypatch.setattr(compress_mod, "compress_pixels", counting)
    out = tmp_path / "b.voco"

    def stop_after_two_chunks(done, total):
        if done >= 17:
            raise Interrupt

    with pytest.raises(Interrupt):
        compress_video(tiny_model, CLIP, out, SAMPLING, batch_size=4, chunk_frames=8,
                       progress=stop_after_two_chunks, notice=lambda s: None)
    first_run = sum(calls)
    assert len(list(out.glob("chunk-*.safetensors"))) == 2  # 16 frames safely on disk
    with pytest.raises(UserError, match="unfinished"):
        load_cache(out)
    calls.clear()
    res = compress_video(tiny_model, CLIP, out, SAMPLING, batch_size=4, chunk_frames=8, notice=lambda s: None)
    assert sum(calls) == 21 - 16 and res.computed == 5 and first_run == 20
    resumed = load_cache(out)
    whole = load_cache(compress_video(tiny_model, CLIP, tmp_path / "c.voco", SAMPLING, batch_size=4,
                                      chunk_frames=8, notice=lambda s: None).path)
    torch.testing.assert_close(resumed.keys, whole.keys, atol=0, rtol=0)
    torch.testing.assert_close(resumed.values, whole.values, atol=0, rtol=0)
    # a finished cache is not redone
    calls.clear()
    again = compress_video(tiny_model, CLIP, out, SAMPLING, batch_size=4, chunk_frames=8, notice=lambda s: None)
    assert calls == [] and again.computed == 0 and again.frames == 21


def test_a_failed_chunk_write_stops_compress_and_keeps_the_chunks_before(tiny_model, tmp_path, monkeypatch):
    """A write error (a full disk, leaving a partial temporary file) reaches the caller, and a rerun
    cleans up and resumes after the last good chunk."""
    real = CacheWriter.write

    def disk_full_at_chunk_1(self, *args):
        if self.next_chunk == 1:
            chunk_path(self.root, 1).with_suffix(".tmp").write_bytes(b"partial")
            raise OSError(28, "No space left on device")
        return real(self, *args)

    monkeypatch.setattr(CacheWriter, "write", disk_full_at_chunk_1)
    out = tmp_path / "full.voco"
    with pytest.raises(OSError, match="No space"):
        compress_video(tiny_model, CLIP, out, SAMPLING, batch_size=4, chunk_frames=4, notice=lambda s: None)
    assert [p.name for p in sorted(out.glob("chunk-*"))] == ["chunk-00000.safetensors", "chunk-00001.tmp"]
    monkeypatch.setattr(CacheWriter, "write", real)
    res = compress_video(tiny_model, CLIP, out, SAMPLING, batch_size=4, chunk_frames=4, notice=lambda s: None)
    assert res.computed == 21 - 4 and load_cache(out).n_frames == 21
    assert not list(out.glob("*.tmp"))


def test_a_full_disk_is_a_user_error_naming_the_chunk(tiny_model, tmp_path, monkeypatch):
    """safetensors reports a failed write as its own exception type: it becomes one line naming
    the chunk, and no partial file is left."""
    import safetensors.torch

    class SafetensorError(Exception):
        pass

    def no_space(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, message: \"No space left on device\" })")

    monkeypatch.setattr(safetensors.torch, "save_file", no_space)
    out = tmp_path / "full.voco"
    with pytest.raises(UserError, match="chunk-00000.safetensors: cannot be written .*No space left"):
        compress_video(tiny_model, CLIP, out, SAMPLING, batch_size=4, chunk_frames=8, notice=lambda s: None)
    assert not list(out.glob("chunk-*"))


def test_two_writers_never_share_a_cache(tiny_model, tmp_path):
    """While one compress writes a cache, another (here: in the same process) is refused, and the
    folder is free again once the first is done."""
    with CacheWriter(tmp_path / "c.voco", cache_meta(k=2)):
        with pytest.raises(UserError, match="c.voco: another vococli process is writing this cache"):
            compress_video(tiny_model, CLIP, tmp_path / "c.voco", SAMPLING, notice=lambda s: None)
    assert compress_video(tiny_model, CLIP, tmp_path / "c.voco", SAMPLING, notice=lambda s: None).frames == 21


def test_no_chunk_is_written_after_a_failed_one(tmp_path, monkeypatch):
    """Chunk 1's write fails while chunk 2 is already queued: chunk 2 must not be written (it would
    take chunk 1's place), and the error reaches the caller when the block ends."""
    import threading

    real = CacheWriter.write
    queued = threading.Event()
    calls = []

    def fail_once_after_the_next_is_queued(self, *args):
        calls.append(self.next_chunk)
        if len(calls) == 2:
            assert queued.wait(10)
            raise OSError(5, "I/O error")
        return real(self, *args)

    monkeypatch.setattr(CacheWriter, "write", fail_once_after_the_next_is_queued)
    writer = CacheWriter(tmp_path / "gap.voco", cache_meta())
    chunk = torch.zeros(2, 3, 1, 1, 4)
    with pytest.raises(OSError, match="I/O error"), ChunkQueue(writer, depth=2) as chunk_queue:
        for i in range(3):
            chunk_queue.submit(chunk + i, chunk - i, [float(i)] * 3, 3 * (i + 1), 0, final=False)
        queued.set()
    assert calls == [0, 1] and [p.name for p in sorted(writer.root.iterdir())] == ["chunk-00000.safetensors"]


def test_a_caller_error_keeps_the_write_error_as_a_note(tmp_path, monkeypatch):
    def broken(self, *args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(CacheWriter, "write", broken)
    with pytest.raises(Interrupt) as caught, ChunkQueue(CacheWriter(tmp_path / "n.voco", cache_meta())) as chunk_queue:
        chunk_queue.submit(torch.zeros(1, 1, 1, 1, 2), torch.zeros(1, 1, 1, 1, 2), [0.0], 1, 0, final=False)
        raise Interrupt
    assert "No space" in " ".join(caught.value.__notes__)


def test_chunk_queue_writes_in_order_and_drains_when_the_caller_fails(tmp_path):
    """Chunks submitted before an error in the caller are all on disk, in order, when the block ends."""
    writer = CacheWriter(tmp_path / "q.voco", cache_meta())
    shape = (2, 3, 1, 1, 4)
    chunks = [torch.full(shape, float(i)) for i in range(4)]
    with pytest.raises(Interrupt), ChunkQueue(writer) as chunk_queue:
        for i, c in enumerate(chunks):
            chunk_queue.submit(c, -c, [float(i)] * 3, 3 * (i + 1), 0, final=False)
        raise Interrupt
    from safetensors.torch import load_file

    got = [load_file(str(chunk_path(writer.root, i))) for i in range(4)]
    assert [float(g["keys"][0, 0, 0, 0, 0]) for g in got] == [0.0, 1.0, 2.0, 3.0]
    assert writer.frames_done == 12 and writer.targets_done == 12 and not writer.finished


def test_resume_refuses_other_settings(tiny_model, tmp_path):
    out = tmp_path / "d.voco"
    compress_video(tiny_model, CLIP, out, SAMPLING, notice=lambda s: None)
    with pytest.raises(UserError, match="different sampling"):
        compress_video(tiny_model, CLIP, out, Sampling(fps=1), notice=lambda s: None)
    res = compress_video(tiny_model, CLIP, out, Sampling(fps=1), overwrite=True, notice=lambda s: None)
    assert res.frames == 11


def test_refuses_truncated_chunk(cache):
    p = chunk_path(cache, 1)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="chunk-00001"):
        load_cache(cache)


def test_refuses_damaged_data_by_its_checksum(cache):
    """Bytes changed inside a chunk's data (its header intact) are caught when it is loaded."""
    load_cache(cache)
    p = chunk_path(cache, 1)
    data = bytearray(p.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")  # safetensors: header length, header, data
    data[start + 40:start + 48] = b"\xff" * 8
    p.write_bytes(bytes(data))
    with pytest.raises(UserError, match="chunk-00001.*checksum"):
        load_cache(cache)


def test_refuses_a_chunk_whose_metadata_is_damaged(cache):
    from safetensors.torch import load_file, save_file

    p = chunk_path(cache, 0)
    save_file(load_file(str(p)), str(p), metadata={"vococli": '{"format": "vococli-cache", "chunk": 0'})
    with pytest.raises(UserError, match="chunk-00000.*damaged cache chunk.*not valid JSON"):
        read_info(cache)


def test_refuses_a_chunk_from_another_cache(tiny_model, tmp_path, cache):
    other = compress_video(tiny_model, CLIP, tmp_path / "o.voco", Sampling(fps=1.0, max_frames=16),
                           chunk_frames=8, notice=lambda s: None).path
    chunk_path(cache, 1).write_bytes(chunk_path(other, 0).read_bytes())
    with pytest.raises(UserError, match="chunk-00001.*holds chunk 0.*another cache"):
        load_cache(cache)
    chunk_path(cache, 1).write_bytes(chunk_path(other, 1).read_bytes())
    with pytest.raises(UserError, match="chunk-00001.*belongs to another cache"):
        read_info(cache)


def test_refuses_missing_chunk(cache):
    chunk_path(cache, 1).unlink()
    with pytest.raises(UserError, match="missing"):
        load_cache(cache)


def test_refuses_foreign_model_and_other_format_version(cache):
    with pytest.raises(UserError, match="another model"):
        load_cache(cache, fingerprint="0123456789abcdef")
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    p = chunk_path(cache, 0)
    with safe_open(str(p), framework="pt") as f:
        meta = json.loads(f.metadata()["vococli"])
    meta["format_version"] = 99
    save_file(load_file(str(p)), str(p), metadata={"vococli": json.dumps(meta)})
    with pytest.raises(UserError, match="format version 99"):
        load_cache(cache)


def test_refuses_non_cache(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_cache(tmp_path / "none.voco")
    (tmp_path / "f.voco").write_text("hello")
    with pytest.raises(UserError, match="not a vococli cache"):
        load_cache(tmp_path / "f.voco")


def test_never_writes_into_or_removes_a_foreign_folder(tiny_model, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "important.safetensors").write_bytes(b"keep me")
    for overwrite in (False, True):
        with pytest.raises(UserError, match="not a vococli cache"):
            compress_video(tiny_model, CLIP, folder, SAMPLING, overwrite=overwrite, notice=lambda s: None)
    assert [p.name for p in folder.iterdir()] == ["important.safetensors"]


@pytest.mark.parametrize("k", [0, 3, 100000])
def test_voco_tokens_stay_within_what_the_checkpoint_was_trained_with(tiny_ckpt, k):
    from vococli.families.loading import load_model

    with pytest.raises(UserError, match=f"^voco_tokens must be between 1 and 2 .the checkpoint was trained with K=2., got {k}"):
        load_model(tiny_ckpt, device="cpu", voco_tokens=k)
    assert load_model(tiny_ckpt, device="cpu", voco_tokens=1).layout.k == 1


def test_chunk_queue_gpu_branch_waits_for_the_copy_on_the_keys_gpu(tmp_path, monkeypatch):
    """The CUDA branch of submit, with the CUDA calls stubbed (no GPU here): the event is recorded
    on the stream of the GPU the keys live on, and the writer waits for it before writing."""
    import vococli.cache.writer as cache_writer

    log = []

    class OnGpu:  # stands for a CUDA tensor on the second GPU
        is_cuda, device = True, torch.device("cuda", 1)

        def __init__(self, host):
            self.host = host

    class Event:
        def record(self, stream):
            log.append(("record", stream))

        def synchronize(self):
            log.append(("wait",))

    def current_stream(device):
        assert device.type == "cuda", device  # a host tensor's device is refused by torch too
        return f"stream of {device}"

    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "current_stream", current_stream)
    monkeypatch.setattr(cache_writer, "_to_pinned", lambda t: log.append(("copy",)) or t.host)
    writer = CacheWriter(tmp_path / "g.voco", cache_meta())
    keys = torch.arange(8.0).view(1, 2, 1, 1, 4)
    with ChunkQueue(writer) as chunk_queue:
        chunk_queue.submit(OnGpu(keys), OnGpu(-keys), [0.0, 1.0], 2, 0, final=True)
    assert log == [("copy",), ("copy",), ("record", "stream of cuda:1"), ("wait",)]
    from safetensors.torch import load_file

    assert torch.equal(load_file(str(chunk_path(writer.root, 0)))["values"], -keys)


def test_a_chunk_missing_a_metadata_field_is_one_line(cache):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    p = chunk_path(cache, 0)
    with safe_open(str(p), framework="pt") as f:
        meta = json.loads(f.metadata()["vococli"])
    del meta["targets_done"]
    save_file(load_file(str(p)), str(p), metadata={"vococli": json.dumps(meta)})
    with pytest.raises(UserError, match="chunk-00000.*damaged cache chunk.*no 'targets_done'"):
        read_info(cache)
    meta["targets_done"] = "eight"
    save_file(load_file(str(p)), str(p), metadata={"vococli": json.dumps(meta)})
    with pytest.raises(UserError, match="chunk-00000.*field 'targets_done' is 'eight'"):
        load_cache(cache)


def test_new_caches_record_family_and_compressor(cache):
    info = read_info(cache)
    assert (info.meta.family, info.meta.compressor) == ("llava_llama", "voco")
    assert info.to_dict()["family"] == "llava_llama" and info.to_dict()["frames"] == 21
