"""`vococli chat` in a terminal (a pseudo-terminal): Ctrl-C stops an answer and returns to the
prompt, the arrow keys edit the line and recall earlier ones, /help lists the commands."""

import os
import select
import sys
import time

import pytest

pty = pytest.importorskip("pty")


class Terminal:
    def __init__(self, *args):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: vococli on the terminal's other side
            os.environ["VOCOCLI_MODEL"] = ""
            os.environ["COLUMNS"] = "200"
            os.execv(sys.executable, [sys.executable, "-m", "vococli", *map(str, args)])
        self.seen = b""

    def read_until(self, marker: bytes, timeout: float = 60.0) -> bytes:
        end = time.monotonic() + timeout
        while marker not in self.seen:
            left = end - time.monotonic()
            assert left > 0, f"{marker!r} not seen in time; got {self.seen[-500:]!r}"
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                try:
                    self.seen += os.read(self.fd, 4096)
                except OSError:  # the child ended
                    break
        assert marker in self.seen, self.seen[-500:]
        at = self.seen.index(marker) + len(marker)
        before, self.seen = self.seen[:at], self.seen[at:]
        return before

    def read_more(self, count: int, timeout: float = 30.0) -> None:
        """Wait until `count` more bytes have come."""
        end, want = time.monotonic() + timeout, len(self.seen) + count
        while len(self.seen) < want:
            left = end - time.monotonic()
            assert left > 0, f"output stopped; got {self.seen[-200:]!r}"
            if select.select([self.fd], [], [], left)[0]:
                self.seen += os.read(self.fd, 4096)

    def type(self, keys: bytes) -> None:
        os.write(self.fd, keys)

    def exit_code(self, timeout: float = 30.0) -> int:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
            try:
                os.read(self.fd, 4096)
            except OSError:
                pass
            time.sleep(0.05)
        os.kill(self.pid, 9)
        raise AssertionError("chat did not end")


def test_ctrl_c_stops_the_answer_and_the_chat_goes_on(compressed, tiny_ckpt):
    cache, _ = compressed
    # the random tiny model never says end-of-sequence: a 3000-token answer takes seconds
    t = Terminal("chat", cache, "--model", tiny_ckpt, "--max-new-tokens", "3000")
    assert b"/help" in t.read_until(b"you> ", 120)  # the commands are listed at the start
    t.type(b"what is here?\r")
    t.read_until(b"vococli> ")
    t.read_more(20)  # the answer is streaming (3000 tokens: seconds more to go)
    t.type(b"\x03")  # Ctrl-C, as the terminal sends it: SIGINT to the chat
    t.read_until(b"[stopped]", 30)
    t.read_until(b"you> ", 30)
    t.type(b"/hlp\x1b[D\x1b[De\r")  # a typo mended with the left arrow: the line read is /help
    assert b"unknown command" not in t.read_until(b"Ctrl-C stops an answer.", 30)
    t.read_until(b"you> ", 30)
    t.type(b"\x1b[A\r")  # the up arrow recalls /help
    t.read_until(b"Ctrl-C stops an answer.", 30)
    t.read_until(b"you> ", 30)
    time.sleep(0.5)  # readline is waiting for keys (a signal just before that waits for the next key)
    t.type(b"\x03")  # Ctrl-C at the prompt drops the line and keeps the chat
    t.read_until(b"you> ", 30)
    t.type(b"/quit\r")
    assert t.exit_code() == 0
    assert b"^[[D" not in t.seen
