"""``python -m engine``: print what this build of convtune was compiled with."""
from . import __version__
from .build import format_build_info

print(f"convtune engine {__version__}")
print(format_build_info())
