"""server.logs: every line logged inside a session carries its id, on any thread."""

from __future__ import annotations

import logging
import threading

from server.logs import FORMAT, SessionFilter, in_session


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.addFilter(SessionFilter())
        self.setFormatter(logging.Formatter(FORMAT))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def test_session_id_reaches_lines_logged_on_native_threads():
    capture = Capture()
    log = logging.getLogger("tests.logs.pipeline")
    log.addHandler(capture)
    log.setLevel(logging.INFO)
    try:
        log.info("outside")
        worker = threading.Thread(target=in_session("abc123", lambda: log.info("decoded a window")))
        worker.start()
        worker.join()
        log.info("outside again")
    finally:
        log.removeHandler(capture)
    assert "session=-: outside" in capture.lines[0]
    assert "session=abc123: decoded a window" in capture.lines[1]
    assert "session=-: outside again" in capture.lines[2]


def test_in_session_returns_the_result_and_restores_context():
    from server.logs import SESSION

    assert in_session("s1", lambda x: x * 2)(21) == 42
    assert SESSION.get() == "-"
