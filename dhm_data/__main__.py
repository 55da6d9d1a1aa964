"""``python -m dhm_data`` = the ``dhm-data`` command."""

from .cli import main

main()
