"""The livescribe server: Flask-SocketIO app, sessions and the streaming pipeline."""

__version__ = "0.1.0"
