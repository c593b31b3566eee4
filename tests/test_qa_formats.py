"""Annotation formats of MSVD-QA, MSRVTT-QA and ActivityNet-QA, from fixtures and real samples."""

import json
from pathlib import Path

import pytest

from conftest import REALDATA
from vococli.errors import UserError
from vococli.eval.formats import find_video, read_questions

DATA = Path(__file__).parent / "data" / "qa"
REAL_QA = REALDATA / "qa"


def test_qa_pair_activitynet_types_and_order():
    items, fmt = read_questions("activitynet", questions=DATA / "anet_test_q.json", answers=DATA / "anet_test_a.json")
    assert fmt == "qa-pair"
    assert [(i.id, i.video, i.answer, i.type) for i in items] == [
        ("v_clipA_0", "clipA", "yes", "yes/no"), ("v_clipA_1", "clipA", "red", "color"),
        ("v_clipB_0", "clipB", "2", "number")]
    assert items[2].question == "how many dogs are there"


def test_qa_pair_that_does_not_pair_is_refused():
    with pytest.raises(UserError, match=r"do not pair by question_id: 2 question\(s\) have no answer .*'v_clipA_1'.*"
                                        r"1 answer\(s\) have no question \(first: 'v_clipB_9'\)"):
        read_questions("activitynet", questions=DATA / "anet_test_q.json", answers=DATA / "anet_test_a_unpaired.json")


def test_llama_vid_and_chatunivi_single_files():
    items, fmt = read_questions("msvd", qa=DATA / "llamavid_test_qa.json")
    assert fmt == "llama-vid"
    assert [(i.id, i.video, i.answer, i.type) for i in items] == [("0", "clipA", "running", "what"),
                                                                  ("1", "clipB", "woman", "who")]
    items, fmt = read_questions("activitynet", qa=DATA / "chatunivi_qa.json")
    assert fmt == "chatunivi"
    assert [(i.id, i.video, i.answer) for i in items] == [("0", "clipA", "dancing"), ("1", "clipB", "beach")]


def test_original_msvd_maps_ids_and_msrvtt_numbers_files(tmp_path):
    items, fmt = read_questions("msvd", qa=DATA / "msvd_original_test_qa.json")  # mapping found beside it
    assert fmt == "original"
    assert [i.video for i in items] == ["xyz-123_10_20", "abcDEF_1_5", "xyz-123_10_20"]
    items, _ = read_questions("msrvtt", qa=DATA / "msrvtt_original_test_qa.json")
    assert [i.video for i in items] == ["video7010", "video7011"]
    lonely = tmp_path / "test_qa.json"
    lonely.write_text((DATA / "msvd_original_test_qa.json").read_text())
    with pytest.raises(UserError, match="youtube_mapping.txt"):
        read_questions("msvd", qa=lonely)
    short = tmp_path / "map.txt"
    short.write_text("abcDEF_1_5 vid1\n")
    with pytest.raises(UserError, match="video_id 2 is not in the MSVD mapping"):
        read_questions("msvd", qa=lonely, mapping=short)


def test_bad_files_get_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="questions file without answers"):
        read_questions("activitynet", qa=DATA / "anet_test_q.json")
    f = tmp_path / "bad.json"
    f.write_text('[{"video_id": "a", "question": "q?", "id": 1}]')
    with pytest.raises(UserError, match=r"bad.json: entry 0 lacks 'answer'"):
        read_questions("msvd", qa=f)
    f.write_text("{not json")
    with pytest.raises(UserError, match="bad.json: not valid JSON"):
        read_questions("msvd", qa=f)
    f.write_text('[{"video_id": "a", "question": "q", "answer": "x", "id": 1},'
                 ' {"video_id": "b", "question": "q", "answer": "y", "id": 1}]')
    with pytest.raises(UserError, match="question id '1' appears more than once"):
        read_questions("msvd", qa=f)
    with pytest.raises(UserError, match="unknown dataset"):
        read_questions("tgif", qa=f)
    with pytest.raises(UserError, match="not found"):
        read_questions("msvd", qa=tmp_path / "missing.json")


def test_forced_format_is_checked():
    with pytest.raises(UserError, match="entry 0 lacks 'video_id'"):
        read_questions("msvd", qa=DATA / "chatunivi_qa.json", fmt="llama-vid")
    with pytest.raises(UserError, match="unknown --format"):
        read_questions("msvd", qa=DATA / "chatunivi_qa.json", fmt="csv")


def test_find_video_extensions_prefix_and_traversal(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "v_abc.mp4").write_bytes(b"x")
    (videos / "clip.webm").write_bytes(b"x")
    (tmp_path / "secret.mp4").write_bytes(b"x")
    assert find_video(videos, "abc", "activitynet") == videos / "v_abc.mp4"
    assert find_video(videos, "clip", "msvd") == videos / "clip.webm"
    assert find_video(videos, "clip.webm", "msvd") == videos / "clip.webm"
    for bad in ("../../etc/passwd", "../secret", "/etc/passwd", "a/../../secret"):
        with pytest.raises(UserError, match="leaves the videos folder"):
            find_video(videos, bad, "msvd")
    with pytest.raises(UserError, match="'nothere' not found"):
        find_video(videos, "nothere", "activitynet")


def test_a_video_name_cannot_leave_the_folder_through_a_symbolic_link(tmp_path):
    videos, outside = tmp_path / "videos", tmp_path / "outside"
    videos.mkdir(), outside.mkdir()
    (outside / "passwd").write_text("root:x:0:0")
    (videos / "evil").symlink_to(outside, target_is_directory=True)
    with pytest.raises(UserError, match="'evil/passwd' leads out of the videos folder through a symbolic link"):
        find_video(videos, "evil/passwd", "msvd")
    (videos / "inside").mkdir()
    (videos / "inside" / "a.mp4").write_bytes(b"x")
    (videos / "alias").symlink_to(videos / "inside", target_is_directory=True)  # a link that stays inside
    assert find_video(videos, "alias/a", "msvd") == videos / "alias" / "a.mp4"
    (videos / "linked.mp4").symlink_to(outside / "passwd")  # a file link put there by the folder's owner
    assert find_video(videos, "linked", "msvd") == videos / "linked.mp4"


# --- the real samples (skipped when ../shared/realdata is absent) ---

needs_real = pytest.mark.skipif(not REAL_QA.is_dir(), reason="real QA samples not present")


@needs_real
@pytest.mark.parametrize("stem", ["first50", "by_type54", "two_videos"])
def test_real_activitynet_official_pairs(stem):
    d = REAL_QA / "activitynet_qa_official"
    items, fmt = read_questions("activitynet", questions=d / f"test_q.{stem}.json", answers=d / f"test_a.{stem}.json")
    raw_a = {a["question_id"]: a for a in json.loads((d / f"test_a.{stem}.json").read_text())}
    assert fmt == "qa-pair" and len(items) == len(raw_a)
    for it in items:
        assert it.answer == raw_a[it.id]["answer"] and it.id.startswith(f"v_{it.video}_")
    if stem == "by_type54":
        from collections import Counter

        assert set(Counter(i.type for i in items).values()) == {6} and len({i.type for i in items}) == 9


@needs_real
def test_real_videollava_msvd_pair():
    d = REAL_QA / "videollava_msvd_zero_shot_qa"
    items, fmt = read_questions("msvd", questions=d / "test_q.first50.json", answers=d / "test_a.first50.json")
    assert fmt == "qa-pair" and len(items) == 50
    assert items[0].video == "jfrrO5K_vKM_55_65" and items[0].type == "who"  # the file's "type: 3" is not a type


@needs_real
@pytest.mark.parametrize("name,dataset", [("msvd_qa", "msvd"), ("msrvtt_qa", "msrvtt"),
                                          ("activitynet_qa", "activitynet")])
def test_real_chatunivi(name, dataset):
    f = REAL_QA / "chatunivi" / f"{name}.first50.json"
    items, fmt = read_questions(dataset, qa=f)
    raw = json.loads(f.read_text())
    assert fmt == "chatunivi" and len(items) == len(raw) == 50
    assert [(i.video, i.question, i.answer) for i in items] == [(r["video_name"], r["question"], r["answer"]) for r in raw]
