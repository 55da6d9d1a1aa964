"""``python -m dhm_data`` = the ``dhm-data`` command."""

from dhm_data.cli import main

main()
