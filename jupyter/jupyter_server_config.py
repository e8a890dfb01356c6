"""JupyterLab configuration for the course (used by `make lab` and the browser test).

Root at course/, listening on 127.0.0.1 only, with token authentication (Jupyter prints the
URL with its token), and no news pop-up. Pass with `jupyter lab --config=THIS_FILE`.
"""

from pathlib import Path

HERE = Path(__file__).resolve().parent

c = get_config()  # noqa: F821 - provided by Jupyter when it loads this file
c.ServerApp.root_dir = str(HERE.parent / "course")
c.ServerApp.ip = "127.0.0.1"
c.ServerApp.allow_remote_access = False
# JupyterLab reads settings overrides (news and update checks off) from this folder.
c.LabApp.app_settings_dir = str(HERE / "settings")
# Containers and CI often run as root; the server still listens on 127.0.0.1 only.
c.ServerApp.allow_root = True
