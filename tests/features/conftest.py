"""Import rcnn before torch so its OMP_WAIT_POLICY=PASSIVE default applies (see rcnn/__init__.py)."""

import rcnn  # noqa: F401
