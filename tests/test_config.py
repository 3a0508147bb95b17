"""server.config: flags, environment, defaults and --help."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from server.config import Config, build_parser

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_are_the_offline_gevent_server():
    config = Config.from_args([], {})
    assert (config.host, config.port, config.async_mode) == ("127.0.0.1", 8000, "gevent")
    assert config.local.model == "tiny.en" and config.local.device == "auto" and config.local.compute_type == "auto"
    assert config.language == "auto" and config.cloud.api_key is None and config.cloud.failover is True
    assert config.local.nice == 0  # a busy neighbour must not slow transcription (docs/PIPELINE.md)
    assert config.idle_final == 1.0


def test_environment_then_flags():
    env = {
        "LIVESCRIBE_PORT": "9001",
        "LIVESCRIBE_MODEL": "base",
        "LIVESCRIBE_CORS_ORIGINS": "https://a.example, https://b.example",
        "LIVESCRIBE_FAILOVER": "off",
        "SPEECHMATICS_API_KEY": "secret",
        "SPEECHMATICS_RT_URL": "wss://eu2.rt.speechmatics.com/v2",
        "LIVESCRIBE_STEP": "0.75",
        "LIVESCRIBE_INFERENCE_NICE": "0",
        "LIVESCRIBE_IDLE_FINAL": "2.5",
        "LIVESCRIBE_COMMIT_MARGIN": "0.5",
        "LIVESCRIBE_RESUME_GRACE": "0",
    }
    config = Config.from_args([], env)
    assert config.port == 9001 and config.local.model == "base"
    assert config.cors_origins == ("https://a.example", "https://b.example")
    assert config.cloud.failover is False and config.cloud.api_key == "secret"
    assert config.cloud.url == "wss://eu2.rt.speechmatics.com/v2"
    assert config.pipeline.step == 0.75 and config.local.nice == 0 and config.idle_final == 2.5
    assert config.pipeline.commit_margin == 0.5 and config.resume_grace == 0.0
    flagged = Config.from_args(["--port", "9002", "--model", "small", "--failover", "true"], env)
    assert flagged.port == 9002 and flagged.local.model == "small" and flagged.cloud.failover is True


def test_bad_values_are_refused(capsys):
    with pytest.raises(SystemExit):
        Config.from_args(["--async-mode", "asyncio"], {})
    with pytest.raises(SystemExit):
        Config.from_args([], {"LIVESCRIBE_PORT": "eighty"})
    assert "eighty" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        Config.from_args(["--idle-final", "-1"], {})
    # Choices hold for the environment as for flags (argparse checks only the latter).
    for variable, value in (("LIVESCRIBE_LOG_LEVEL", "verbose"), ("LIVESCRIBE_DEVICE", "gpu")):
        with pytest.raises(SystemExit):
            Config.from_args([], {variable: value})
        assert f"{variable}='{value}'" in capsys.readouterr().err


def test_help_documents_every_option_with_its_variable():
    help_text = build_parser({}).format_help()
    for action in build_parser({})._actions:
        if action.dest == "help":
            continue
        assert action.help and "[env " in action.help, action.dest
    for option in (
        "--model",
        "--device",
        "--compute-type",
        "--language",
        "--async-mode",
        "--cors-origins",
        "--max-sessions",
        "--log-level",
        "--host",
        "--port",
        "--speechmatics-api-key",
    ):
        assert option in help_text


def test_python_m_server_help_runs():
    out = subprocess.run(
        [sys.executable, "-m", "server", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and "LIVESCRIBE_MODEL" in out.stdout


def test_a_taken_port_and_a_language_no_backend_has_stop_startup_in_one_line():
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run(
            [sys.executable, "-m", "server", "--port", str(port)], cwd=ROOT, capture_output=True, text=True, timeout=120
        )
    assert out.returncode == 2 and "is not free" in out.stderr and "Traceback" not in out.stderr
    out = subprocess.run(
        [sys.executable, "-m", "server", "--language", "fr", "--port", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and "--language fr" in out.stderr and "Traceback" not in out.stderr


def test_unknown_model_stops_startup_with_the_fix(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "server", "--model", str(tmp_path / "no-such-model"), "--port", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert "no-such-model" in out.stderr and "--model" in out.stderr
