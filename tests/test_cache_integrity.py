"""A damaged or foreign cache is refused in one line, never answered from: the chunk sequence is
checked (one cache id, continuous frames, counts that add up, increasing timestamps) and every
chunk of the current format carries checksums that cannot be switched off."""

import numpy as np
import pytest
import torch

from helpers import CLIP, SAMPLING, chunk_metadata, rewrite_chunk, run
from vococli.cache.chunks import chunk_path, crc32, load_cache, read_info
from vococli.compress.pipeline import compress_video
from vococli.errors import UserError


def test_a_chunk_of_another_cache_of_the_same_video_and_settings_is_refused(tiny_model, tmp_path, cache, tiny_ckpt):
    """The same video, model and sampling, another --chunk-frames: every identity field agrees, yet
    its chunk 1 holds other frames (the cache would hold duplicated frames out of order)."""
    other = compress_video(tiny_model, CLIP, tmp_path / "o.voco", SAMPLING, chunk_frames=6,
                           notice=lambda s: None).path
    chunk_path(cache, 1).write_bytes(chunk_path(other, 1).read_bytes())
    with pytest.raises(UserError, match="chunk-00001.*belongs to another cache.*cache id"):
        load_cache(cache)
    for command in (["info", cache], ["ask", cache, "what is here?", "--model", tiny_ckpt]):
        r = run(*command)
        assert r.returncode == 1 and r.stdout == ""
        assert r.stderr.count("\n") == 1 and "belongs to another cache" in r.stderr, r.stderr


def test_the_same_cache_resumed_keeps_its_id(tiny_model, tmp_path):
    out = tmp_path / "r.voco"
    compress_video(tiny_model, CLIP, out, SAMPLING, chunk_frames=8, notice=lambda s: None)
    chunk_path(out, 2).unlink()  # as if compress had been stopped after two chunks
    compress_video(tiny_model, CLIP, out, SAMPLING, chunk_frames=8, notice=lambda s: None)
    ids = {chunk_metadata(chunk_path(out, i))["cache_id"] for i in range(3)}
    assert len(ids) == 1 and len(ids.pop()) == 32
    assert load_cache(out).n_frames == 21


@pytest.mark.parametrize("tamper", ["crc32 renamed", "keys renamed", "crc32 dropped", "checksum not a number"])
def test_checksums_cannot_be_switched_off(cache, tamper):
    """One flipped bit in a metadata name must not make loading skip the checksums."""
    p = chunk_path(cache, 1)
    meta = chunk_metadata(p)
    if tamper == "crc32 renamed":
        meta["crc33"] = meta.pop("crc32")
    elif tamper == "keys renamed":
        meta["crc32"]["kdys"] = meta["crc32"].pop("keys")
    elif tamper == "crc32 dropped":
        del meta["crc32"]
    else:
        meta["crc32"]["keys"] = str(meta["crc32"]["keys"])
    rewrite_chunk(p, meta)
    with pytest.raises(UserError, match="chunk-00001.*damaged cache chunk"):
        load_cache(cache)


@pytest.mark.parametrize("field, change, message", [
    ("frame_start", 1, "starts at frame 9, but the chunks before it hold 8"),
    ("frames_lost", 1, "frame counts do not add up"),
    ("targets_done", -1, "frame counts do not add up"),
    ("final", True, "chunk-00002.*comes after the final chunk"),
])
def test_the_frame_sequence_is_checked(cache, field, change, message):
    p = chunk_path(cache, 1)
    meta = chunk_metadata(p)
    meta[field] = change if isinstance(change, bool) else meta[field] + change
    rewrite_chunk(p, meta)
    with pytest.raises(UserError, match=message):
        read_info(cache)


def test_a_final_chunk_must_account_for_every_planned_frame(cache):
    p = chunk_path(cache, 2)
    meta = chunk_metadata(p)
    meta["planned_frames"] += 1
    for i in range(3):  # the same plan in every chunk, so only the count is wrong
        m = chunk_metadata(chunk_path(cache, i))
        m["planned_frames"] = meta["planned_frames"]
        rewrite_chunk(chunk_path(cache, i), m)
    with pytest.raises(UserError, match="chunk-00002.*marked final after 21 of 22 planned frames"):
        load_cache(cache)


def test_timestamps_must_increase_across_chunks(cache):
    """Tensors rewritten with matching checksums (a faulty writer, not a flipped bit): chunk 1's
    frames are dated before chunk 0's."""
    from safetensors.torch import load_file

    p = chunk_path(cache, 1)
    meta, tensors = chunk_metadata(p), load_file(str(p))
    tensors["timestamps"] = tensors["timestamps"] - 100.0
    meta["crc32"]["timestamps"] = crc32(tensors["timestamps"])
    rewrite_chunk(p, meta, tensors)
    with pytest.raises(UserError, match="damaged cache .frame 8's time .* does not come after frame 7's"):
        load_cache(cache)


def test_tensors_must_match_their_metadata(cache):
    from safetensors.torch import load_file

    p = chunk_path(cache, 2)
    meta, tensors = chunk_metadata(p), load_file(str(p))
    for n in ("keys", "values"):
        tensors[n] = tensors[n][:, :, :, :1].contiguous()  # one slot per frame instead of K
        meta["crc32"][n] = crc32(tensors[n])
    rewrite_chunk(p, meta, tensors)
    with pytest.raises(UserError, match="chunk-00002.*shapes do not match its metadata"):
        load_cache(cache)


def test_every_field_is_required_in_the_current_format(cache):
    p = chunk_path(cache, 0)
    meta = chunk_metadata(p)
    del meta["compressor"]  # a field that version 1 caches may lack
    rewrite_chunk(p, meta)
    with pytest.raises(UserError, match="chunk-00000.*damaged cache chunk.*no 'compressor'"):
        read_info(cache)


def test_a_version_1_cache_is_recognised_by_its_version(cache):
    """Chunks that say format version 1 load without the fields and checksums added since."""
    before = load_cache(cache)
    for i in range(3):
        p = chunk_path(cache, i)
        meta = chunk_metadata(p)
        for name in ("crc32", "cache_id", "compressor", "family", "storage"):
            del meta[name]
        meta["format_version"] = 1
        rewrite_chunk(p, meta)
    after = load_cache(cache)
    assert torch.equal(after.keys, before.keys) and np.array_equal(after.timestamps, before.timestamps)
    assert after.meta.format_version == 1 and after.meta.compressor == "voco"
