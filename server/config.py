"""Server configuration: built once from command-line flags and environment, then passed down.

Every option has a flag and an environment variable (flags win); ``python -m server --help``
lists them all with their defaults.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from backends.local import LocalBackendOptions
from server.pipeline import PipelineOptions
from server.vad import VadOptions

ASYNC_MODES = ("gevent", "eventlet", "threading")
DEVICES = ("auto", "cpu", "cuda")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass(frozen=True)
class CloudOptions:
    """Speechmatics real-time settings (see docs/CLOUD.md)."""

    api_key: str | None = None
    url: str | None = None  # None: the SDK's default endpoint
    max_delay: float = 1.0
    operating_point: str = "enhanced"
    failover: bool = True  # continue on the local model when the cloud fails mid-stream


@dataclass(frozen=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 8000
    async_mode: str = "gevent"
    cors_origins: tuple[str, ...] = ()  # empty: same origin only; ("*",) allows any
    max_sessions: int = 8
    max_payload_bytes: int = 1 << 20  # one ``audio`` message
    max_backlog: float = 60.0  # seconds of audio queued and not yet transcribed, per session
    max_upload_bytes: int = 100 << 20  # one POST /api/transcribe request
    max_file_jobs: int = 4  # uploaded files waiting for their turn (one is transcribed at a time)
    # Audio in one upload: a few compressed megabytes can hold days of silence, decoded to
    # 230 MB of memory per hour.
    max_file_seconds: float = 4 * 3600.0
    language: str = "auto"  # default for sessions that do not name one
    # A client that sends nothing this long has its utterance in progress finalised (0: the
    # words wait for more audio or ``stop``).
    idle_final: float = 1.0
    # A session whose connection drops (not a clean disconnect) waits this long for its client
    # to come back with ``resume`` before it is stopped (0: it is stopped at once).
    resume_grace: float = 30.0
    log_level: str = "INFO"
    local: LocalBackendOptions = field(default_factory=LocalBackendOptions)
    pipeline: PipelineOptions = field(default_factory=PipelineOptions)
    cloud: CloudOptions = field(default_factory=CloudOptions)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Config:
        """Defaults overridden by ``LIVESCRIBE_*`` / ``SPEECHMATICS_*`` environment variables."""
        return cls.from_args([], env)

    @classmethod
    def from_args(cls, argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> Config:
        """Parse command-line flags; unset flags fall back to the environment, then defaults."""
        args = build_parser(os.environ if env is None else env).parse_args(argv)
        pipeline = replace(
            PipelineOptions(),
            step=args.step,
            commit_margin=args.commit_margin,
            max_window=args.max_window,
            final_full_context=args.final_full_context,
            vad=VadOptions(threshold=args.vad_threshold, min_silence=args.min_silence),
        )
        return cls(
            host=args.host,
            port=args.port,
            async_mode=args.async_mode,
            cors_origins=tuple(o.strip() for o in args.cors_origins.split(",") if o.strip()),
            max_sessions=args.max_sessions,
            max_payload_bytes=args.max_payload_bytes,
            max_backlog=args.max_backlog,
            max_upload_bytes=args.max_upload_bytes,
            max_file_jobs=args.max_file_jobs,
            max_file_seconds=args.max_file_seconds,
            language=args.language,
            idle_final=args.idle_final,
            resume_grace=args.resume_grace,
            log_level=args.log_level.upper(),
            local=LocalBackendOptions(
                model=args.model,
                device=args.device,
                compute_type=args.compute_type,
                cpu_threads=args.cpu_threads,
                num_workers=args.num_workers,
                download_root=args.download_root,
                nice=args.inference_nice,
            ),
            pipeline=pipeline,
            cloud=CloudOptions(
                api_key=args.speechmatics_api_key or None,
                url=args.speechmatics_url or None,
                max_delay=args.cloud_max_delay,
                operating_point=args.cloud_operating_point,
                failover=args.failover,
            ),
        )


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {value!r}")


def _seconds(value: str) -> float:
    seconds = float(value)
    if not seconds >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {value!r}")
    return seconds


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    """The ``python -m server`` command line; each default reads its environment variable."""
    parser = argparse.ArgumentParser(
        prog="python -m server",
        description=(
            "Real-time speech transcription server: Socket.IO in, partial and final transcripts out."
            " Every flag can also be set with the environment variable shown."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )

    def option(flag: str, var: str, default, help: str, type=str, **kwargs) -> None:  # noqa: A002
        raw = env.get(var)
        try:
            value = type(raw) if raw not in (None, "") else default
        except (ValueError, argparse.ArgumentTypeError) as exc:
            parser.error(f"environment variable {var}={raw!r} is not valid for {flag}: {exc}")
        # argparse checks choices only for values given on the command line.
        choices = kwargs.get("choices")
        if raw not in (None, "") and choices is not None and value not in choices:
            parser.error(
                f"environment variable {var}={raw!r} is not valid for {flag}: choose from {', '.join(choices)}"
            )
        parser.add_argument(flag, default=value, type=type, help=f"{help} [env {var}]", **kwargs)

    parser.add_argument_group("server")
    option("--host", "LIVESCRIBE_HOST", "127.0.0.1", "interface to listen on (0.0.0.0 for all)")
    option("--port", "LIVESCRIBE_PORT", 8000, "TCP port", type=int)
    option(
        "--async-mode",
        "LIVESCRIBE_ASYNC_MODE",
        "gevent",
        "concurrency model: gevent (default), eventlet, or threading (development)",
        choices=ASYNC_MODES,
    )
    option("--cors-origins", "LIVESCRIBE_CORS_ORIGINS", "", "comma-separated allowed origins ('*' for any)")
    option("--max-sessions", "LIVESCRIBE_MAX_SESSIONS", 8, "concurrent transcription sessions", type=int)
    option("--max-payload-bytes", "LIVESCRIBE_MAX_PAYLOAD_BYTES", 1 << 20, "largest audio message", type=int)
    option(
        "--max-backlog",
        "LIVESCRIBE_MAX_BACKLOG",
        60.0,
        "seconds of untranscribed audio a session may queue before audio is refused",
        type=float,
    )
    option(
        "--max-upload-bytes",
        "LIVESCRIBE_MAX_UPLOAD_BYTES",
        100 << 20,
        "largest file upload to POST /api/transcribe, in bytes (larger ones get 413)",
        type=int,
    )
    option(
        "--max-file-jobs",
        "LIVESCRIBE_MAX_FILE_JOBS",
        4,
        "uploaded files that may wait for the one being transcribed (more get 503)",
        type=int,
    )
    option(
        "--max-file-seconds",
        "LIVESCRIBE_MAX_FILE_SECONDS",
        4 * 3600.0,
        "longest audio in one file upload, in seconds (longer ones get 413; decoded audio takes"
        " 230 MB of memory per hour)",
        type=_seconds,
    )
    option(
        "--resume-grace",
        "LIVESCRIBE_RESUME_GRACE",
        30.0,
        "seconds a session outlives a dropped connection, for its client to reconnect and resume it"
        " (its finals meanwhile are replayed then); 0: a dropped connection stops its session",
        type=_seconds,
    )
    option("--log-level", "LIVESCRIBE_LOG_LEVEL", "INFO", "logging level", choices=LOG_LEVELS, type=str.upper)

    parser.add_argument_group("local model (faster-whisper)")
    option(
        "--model",
        "LIVESCRIBE_MODEL",
        "tiny.en",
        "Whisper model: tiny.en (embedded, offline), base (embedded, multilingual), a faster-whisper"
        " name (small, medium, large-v3, distil-large-v3, turbo, ...) or a CTranslate2 model folder",
    )
    option("--device", "LIVESCRIBE_DEVICE", "auto", "auto (GPU if CTranslate2 sees one), cpu or cuda", choices=DEVICES)
    option(
        "--compute-type",
        "LIVESCRIBE_COMPUTE_TYPE",
        "auto",
        "CTranslate2 compute type: auto (float16 on GPU, int8 on CPU), int8, int8_float16, float16, float32",
    )
    option("--cpu-threads", "LIVESCRIBE_CPU_THREADS", 0, "threads per decode (0: cores / workers)", type=int)
    option("--num-workers", "LIVESCRIBE_NUM_WORKERS", 2, "decodes that may run in parallel", type=int)
    option(
        "--inference-nice",
        "LIVESCRIBE_INFERENCE_NICE",
        0,
        "nice value added to the model's threads (Linux): other programs go first when the cores are"
        " busy, at the cost of transcription latency (0: none)",
        type=int,
    )
    option("--download-root", "LIVESCRIBE_DOWNLOAD_ROOT", None, "cache folder for downloaded models")
    option(
        "--language",
        "LIVESCRIBE_LANGUAGE",
        "auto",
        "default session language: a code such as en or fr, or auto (detect once per session)",
    )

    parser.add_argument_group("streaming pipeline")
    option("--step", "LIVESCRIBE_STEP", 1.0, "seconds of new speech between window decodes", type=float)
    option(
        "--commit-margin",
        "LIVESCRIBE_COMMIT_MARGIN",
        1.0,
        "seconds of audio after a word before two agreeing decodes may make it final (with --step,"
        " the lever of a word's wait: 0.5 and 0.5 cut it by a third for 1.5x the CPU, docs/PIPELINE.md)",
        type=_seconds,
    )
    option("--max-window", "LIVESCRIBE_MAX_WINDOW", 15.0, "longest decoded window (seconds)", type=float)
    option("--vad-threshold", "LIVESCRIBE_VAD_THRESHOLD", 0.5, "Silero speech probability threshold", type=float)
    option("--min-silence", "LIVESCRIBE_MIN_SILENCE", 0.3, "silence (seconds) that ends an utterance", type=float)
    option(
        "--idle-final",
        "LIVESCRIBE_IDLE_FINAL",
        1.0,
        "seconds without audio from a client (paused, no stop) after which the words it said last are"
        " finalised; later audio starts a new utterance (0: they wait for more audio or stop)",
        type=_seconds,
    )
    option(
        "--final-full-context",
        "LIVESCRIBE_FINAL_FULL_CONTEXT",
        False,
        "decode an utterance's last words (at pauses) with Whisper's full 30 s context (slower, docs/PIPELINE.md)",
        type=_bool,
    )

    parser.add_argument_group("cloud backend (Speechmatics real-time)")
    option("--speechmatics-api-key", "SPEECHMATICS_API_KEY", None, "API key; without it the cloud backend is off")
    option("--speechmatics-url", "SPEECHMATICS_RT_URL", None, "real-time endpoint (default: the SDK's)")
    option("--cloud-max-delay", "LIVESCRIBE_CLOUD_MAX_DELAY", 1.0, "Speechmatics max_delay (seconds)", type=float)
    option("--cloud-operating-point", "LIVESCRIBE_CLOUD_OPERATING_POINT", "enhanced", "standard or enhanced")
    option(
        "--failover",
        "LIVESCRIBE_FAILOVER",
        True,
        "continue on the local model when a cloud session fails (true/false)",
        type=_bool,
    )
    return parser
