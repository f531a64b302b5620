"""``python3 v2v-agent.pyz`` and ``python3 -m linux_capture``: the agent."""
import sys

from linux_capture.agent import main

sys.exit(main())
