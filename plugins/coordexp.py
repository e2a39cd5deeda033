"""ms-swift plugin file: point ``external_plugins`` (or ``custom_register_path``) at this file.

ms-swift imports it by path under a hashed module name, once per rank, so it only calls into the installed
``coordexp_swift`` package.
"""
from coordexp_swift.plugin import register

register()
