import sys

from openllm_cli import main

sys.exit(main())
