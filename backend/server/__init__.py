"""The local backend server the Blender add-on talks to (see ``blender_addon/wire.py`` for the protocol).

- ``process``: ``serve()``, the entry behind ``python -m backend serve``;
- ``listener`` / ``connection`` / ``auth``: sockets, one thread per client, token check;
- ``registry`` / ``schema``: request types with declared parameters (add new ones as modules
  in ``handlers/``);
- ``jobs``: long work as watched child processes (register kinds with ``jobs.job_kind``).

Importing this package is cheap: torch is imported only when the server starts.
"""
