"""Holds the installed ms-swift plugin file ``coordexp.py`` that ``external_plugins: [coordexp_swift]`` names.

ms-swift imports plugin *files* (``swift.utils.import_external_file``) and puts the file's folder on ``sys.path``;
the file therefore sits alone in this folder, so no module of the package becomes importable under a bare
top-level name (``config``, ``data``, ...). The argv hook (``coordexp_swift.swift_argv_hook.plugin_file``) rewrites
the value ``coordexp_swift`` to that file's absolute path.
"""
