@echo off
rem Start the transcription server on Windows: create .venv if missing, install
rem requirements.txt, then run "python -m server" with every argument passed through.
rem   start.bat                      http://127.0.0.1:8000, Whisper tiny.en, offline
rem   start.bat --host 0.0.0.0 --model base
setlocal
cd /d "%~dp0"
if not exist ".venv\Scripts\python.exe" (
  echo Creating the virtual environment in .venv
  py -3 -m venv .venv 2>nul || python -m venv .venv || goto :nopython
)
".venv\Scripts\python.exe" -m pip install --quiet --upgrade pip
".venv\Scripts\python.exe" -m pip install --quiet -r requirements.txt || goto :failed
".venv\Scripts\python.exe" -m server %*
exit /b %errorlevel%

:nopython
echo Python 3.10 or newer is needed: install it from python.org and run start.bat again.
exit /b 1

:failed
echo Installing requirements.txt failed; see the messages above.
exit /b 1
