@echo off
rem Start the transcription server on Windows: create .venv if missing, install
rem requirements.txt when it changed, then run "python -m server" with every argument passed
rem through.
rem   start.bat                      http://127.0.0.1:8000, Whisper tiny.en, offline
rem   start.bat --host 0.0.0.0 --model base
setlocal
cd /d "%~dp0"
if not exist ".venv\Scripts\python.exe" (
  echo Creating the virtual environment in .venv
  py -3 -m venv .venv 2>nul || python -m venv .venv || goto :nopython
)
rem Installed once per version of requirements.txt (a copy of it marks the install), so later
rem starts work offline and at once.
fc /b requirements.txt ".venv\installed-requirements.txt" >nul 2>&1 && goto :run
echo Installing requirements.txt into .venv (first run: a few minutes, ~600 MB with the models)
".venv\Scripts\python.exe" -m pip install --quiet --upgrade pip
".venv\Scripts\python.exe" -m pip install --quiet -r requirements.txt || goto :failed
copy /y requirements.txt ".venv\installed-requirements.txt" >nul

:run
".venv\Scripts\python.exe" -m server %*
exit /b %errorlevel%

:nopython
echo Python 3.10 or newer is needed: install it from python.org and run start.bat again.
exit /b 1

:failed
echo Installing requirements.txt failed; see the messages above.
exit /b 1
