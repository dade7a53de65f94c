"""A tiny served avatar for the server and browser tests: a generated clip, an untrained fused head and
``instag serve`` on a free port of 127.0.0.1 in a subprocess."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

from badinputs import cli_env, fused_model, synthetic_dataset
from synthetic_clip import speech

from instag.io.wav import write_wav

SIZE = 64


# run before `python -m instag serve` when the renderer is to be slower than real time: each frame it renders
# costs 1/INSTAG_RENDER_FPS seconds more
SLOW_RENDER = """
import os, time
import instag.serve.app as app
_encode = app.encode_jpeg
def _slow(frame, quality):
    time.sleep(1 / float(os.environ["INSTAG_RENDER_FPS"]))
    return _encode(frame, quality)
app.encode_jpeg = _slow
"""


class Served:
    def __init__(self, root: Path, *extra: str, render_fps: float | None = None):
        self.data = root / "data" / "person"
        self.model = root / "output" / "person"
        synthetic_dataset(self.data, size=SIZE, n_train=12, n_val=4)
        fused_model(self.model)
        self.wav = root / "speech 1.wav"  # a space on purpose
        write_wav(self.wav, speech(50, seed=3)[0], 16000)  # 2.0 s = 50 frames
        args = ["serve", "-S", str(self.data), "-M", str(self.model), "--port", "0", "--device", "cpu", *extra]
        env = cli_env()
        command = [sys.executable, "-m", "instag", *args]
        if render_fps is not None:
            env["INSTAG_RENDER_FPS"] = str(render_fps)
            command = [sys.executable, "-c", SLOW_RENDER + "import runpy, sys\n"
                       f"sys.argv = {['instag', *args]!r}\nrunpy.run_module('instag', run_name='__main__')"]
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        line = self.proc.stdout.readline()
        found = re.search(r"http://127\.0\.0\.1:\d+/", line)
        if not found:
            self.proc.kill()
            raise RuntimeError(f"server did not start: {line}{self.proc.stderr.read()}")
        self.url = found.group(0)

    def stop(self) -> tuple[int, str]:
        self.proc.terminate()
        try:
            _, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return self.proc.returncode, err

    def log_records(self, kind: str = "session", timeout: float = 10.0) -> list[dict]:
        from instag.infer.sessionlog import read_records

        deadline = time.time() + timeout
        while True:
            records = [r for r in read_records(self.model)[0] if r["type"] == kind]
            if records or time.time() > deadline:
                return records
            time.sleep(0.1)
