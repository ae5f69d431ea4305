"""``python -m llm_assets.testing``: the scripted server on a port, until interrupted."""

from llm_assets.testing import main

main()
