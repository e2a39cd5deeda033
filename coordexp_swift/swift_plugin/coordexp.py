"""ms-swift plugin file of the installed package (``external_plugins: [coordexp_swift]`` resolves to it).

ms-swift imports it by path under a hashed module name, once per rank, so it only calls into the installed
``coordexp_swift`` package. The repository's ``plugins/coordexp.py`` is the same file for the path form.
"""
from coordexp_swift.plugin import register

register()
