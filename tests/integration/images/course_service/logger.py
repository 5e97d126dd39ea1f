"""The course service's logger: a file under logs/, next to the code.

Like the course's, it creates the directory at import, relative to the working
directory (/app), as whatever user the image runs as (root: no USER).
"""

import logging
import os

os.makedirs("logs", exist_ok=True)

logger = logging.getLogger("task_service")
logger.setLevel(logging.INFO)
_handler = logging.FileHandler(os.path.join("logs", "task_service.log"))
_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
logger.addHandler(_handler)
