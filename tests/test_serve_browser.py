"""The served page in a real headless Chromium (Debian's ``chromium`` and ``chromium-driver``, driven by Selenium):
upload a WAV, receive frames and sound in sync, a second browser at the same time, the microphone (Chromium's fake
capture device playing a WAV), feedback, and the dashboard of what was logged.

Skipped when Chromium, its driver or Selenium is missing (``.ci/run`` installs them). ``INSTAG_SCREENSHOT=path.png``
keeps a screenshot of the page after an answer.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("aiohttp")
webdriver = pytest.importorskip("selenium.webdriver")

from serving import Served  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="needs Debian's chromium and chromium-driver")

ANSWER_STATE = """const a = window.instag.answers[arguments[0]];
return a ? {done: a.done, shown: a.shown, received: a.received, skipped: a.skipped, late: a.late, lag: a.lagMs,
            in_time_lag: a.inTimeLagMs, mouth: a.mouth,
            first: a.firstFrameMs, end: a.end, id: a.id, feedback: a.feedback || null} : null;"""


def browser(fake_capture: Path):
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=800,1000",
                "--autoplay-policy=no-user-gesture-required", "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={fake_capture}"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_script_timeout(30)
    return driver


def wait_for(driver, script: str, *args, timeout: float = 60.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = driver.execute_script(script, *args)
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {script!r}; page error: {driver.execute_script('return window.instag.error')}")


def upload_and_answer(driver, url: str, wav: Path) -> None:
    from selenium.webdriver.common.by import By

    driver.get(url)
    driver.find_element(By.ID, "file").send_keys(str(wav))
    wait_for(driver, "return !document.getElementById('answer').disabled")
    driver.find_element(By.ID, "answer").click()


def check_answer(state: dict, frames: int) -> None:
    """Every frame arrives; each is shown in its own 40-ms moment of the sound, never early and never behind it, or
    left out (a machine that renders slower than real time, e.g. two viewers on two cores, leaves many out); a
    renderer with room to spare shows most; the lower face changes with the speech."""
    assert state["end"]["frames"] == frames and state["received"] == frames
    assert state["shown"] + state["skipped"] == frames and state["shown"] >= 2
    lag = np.array(state["lag"])
    assert lag.min() >= 0 and lag.max() < 40, lag
    if state["end"]["render_fps"] >= 40:
        assert state["shown"] >= 0.5 * frames
    assert np.ptp(state["mouth"]) > 0


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    srv = Served(tmp_path_factory.mktemp("browser"))
    yield srv
    srv.stop()


def test_page_answers_two_browsers_in_sync_and_takes_feedback(served):
    from selenium.webdriver.common.by import By

    drivers = [browser(served.wav), browser(served.wav)]
    try:
        for d in drivers:  # both answer at the same time
            upload_and_answer(d, served.url, served.wav)
        states = [wait_for(d, ANSWER_STATE.replace("return a ?", "return a && a.done ?"), 0) for d in drivers]
        for state in states:
            check_answer(state, 50)
            assert state["first"] < 5000
        assert states[0]["id"] != states[1]["id"]
        shot = os.environ.get("INSTAG_SCREENSHOT")
        if shot:
            drivers[0].save_screenshot(shot)
        d = drivers[0]
        d.find_element(By.ID, "up").click()
        d.find_element(By.ID, "note").send_keys("clear and in time")
        d.find_element(By.ID, "send").click()
        wait_for(d, "return document.getElementById('thanks').textContent")
        feedback = served.log_records("feedback")
        assert any(f["session"] == states[0]["id"] and f["rating"] == "up" and f["note"] == "clear and in time"
                   for f in feedback)
        sessions = {r["id"]: r for r in served.log_records()}
        assert states[0]["id"] in sessions and states[1]["id"] in sessions
    finally:
        for d in drivers:
            d.quit()


def test_page_answers_the_microphone(served):
    from selenium.webdriver.common.by import By

    d = browser(served.wav)  # Chromium's fake microphone plays this WAV in a loop
    try:
        d.get(served.url)
        wait_for(d, "return window.instag.info")
        d.find_element(By.ID, "mic").click()
        wait_for(d, "const a = window.instag.answers[0]; return a && a.received >= 25")  # a second of answer
        d.find_element(By.ID, "mic").click()  # stop
        state = wait_for(d, ANSWER_STATE.replace("return a ?", "return a && a.done ?"), 0)
        assert state["end"]["frames"] >= 25 and state["received"] == state["end"]["frames"]
        assert min(state["lag"]) >= 0 and np.median(state["in_time_lag"]) < 50
        rec = next(r for r in served.log_records() if r["id"] == state["id"])
        assert rec["audio"]["name"] == "microphone" and rec["frames"] == state["end"]["frames"]
    finally:
        d.quit()


def test_dashboard_opens_in_the_browser(served, tmp_path):
    from badinputs import run_cli
    from selenium.webdriver.common.by import By

    from instag.infer.synthesize import SynthesizeConfig, synthesize

    synthesize(SynthesizeConfig(source_path=str(served.data), model_path=str(served.model), audio=str(served.wav),
                                output=str(tmp_path / "s.mp4"), device="cpu", quiet=True), log=lambda *_: None)
    proc = run_cli("report", str(served.model), "--out", str(tmp_path / "report.html"))
    assert proc.returncode == 0, proc.stderr
    d = browser(served.wav)
    try:
        d.get((tmp_path / "report.html").as_uri())
        images = d.find_elements(By.CSS_SELECTOR, "img.plot")
        assert len(images) >= 4
        assert all(d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", img) for img in images)
        assert "sessions" in d.find_element(By.TAG_NAME, "h1").text.lower()
    finally:
        d.quit()


@pytest.fixture(scope="module")
def slow(tmp_path_factory):
    srv = Served(tmp_path_factory.mktemp("slow"), render_fps=8.0)  # a third of real time, like a big head on a CPU
    yield srv
    srv.stop()


def test_page_stays_honest_on_a_renderer_slower_than_real_time(slow, tmp_path):
    """Frames that come after their moment are left out (none is drawn behind the sound or after it ended), the status
    counts the frames shown, the feedback row waits for an answer, and an MP3 is refused in words."""
    from selenium.webdriver.common.by import By

    d = browser(slow.wav)
    try:
        d.get(slow.url)
        wait_for(d, "return window.instag.info")
        assert not d.find_element(By.ID, "feedback").is_displayed()  # no answer yet, nothing to rate
        mp3 = tmp_path / "speech.mp3"
        mp3.write_bytes(b"ID3\x04\x00\x00\x00\x00\x00\x00" + bytes(range(256)) * 8)
        d.find_element(By.ID, "file").send_keys(str(mp3))
        status = wait_for(d, "return window.instag.error")
        assert status.startswith("speech.mp3 is not a WAV file (it is an MP3 file)") and "b'" not in status, status
        assert "ffmpeg -i speech.mp3 -ar 16000 speech.wav" in status

        upload_and_answer(d, slow.url, slow.wav)
        assert not d.find_element(By.ID, "feedback").is_displayed()
        state = wait_for(d, """const a = window.instag.answers[0];
            return a && a.done ? {shown: a.shown, skipped: a.skipped, dropped: a.dropped, received: a.received,
                                  lag: a.lagMs, times: a.shownTimes, end: a.end} : null;""", timeout=120)
        status = d.find_element(By.ID, "status").text
    finally:
        d.quit()
    frames, slot_ms = 50, 40
    assert state["received"] == frames and state["end"]["render_fps"] < 12  # slower than real time indeed
    assert state["shown"] + state["skipped"] == frames and 0 < state["shown"] < frames and state["dropped"] > 0
    assert max(state["lag"]) < slot_ms  # every frame shown was shown in its own 40 ms
    assert max(t["at"] for t in state["times"]) < frames / 25  # none after the sound ended
    assert status.startswith(f"Answered 2.0 s of speech: {state['shown']} of {frames} frames shown; "
                             f"{frames - state['shown']} came too late for their moment"), status
    assert "real time needs 25" in status
