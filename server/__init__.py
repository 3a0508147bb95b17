"""The livescribe server: Flask-SocketIO app, sessions and the streaming pipeline."""

from server.cpu import limit_helper_threads

# Before numpy or CTranslate2 load, whoever imports the server (python -m server, the
# transcribe CLI, the tests, the benchmarks): see server/cpu.py.
limit_helper_threads()

__version__ = "0.1.0"
