"""``python -m rgbx_fusion.cli`` = ``rgbx-fusion`` (what DDP's worker processes run)."""

from rgbx_fusion.cli import main

main()
