"""Import rcnn before torch in every test: it sets OMP_WAIT_POLICY=PASSIVE (see rcnn/__init__.py)."""

import rcnn  # noqa: F401
