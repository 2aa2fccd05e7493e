"""Site preparation on the hospital's own Ray cluster (``site prepare --ray``).

:func:`prepare_on_ray` sends the slides that a run found uncached to the
cluster's nodes as Ray tasks (:mod:`~slidefed.client.prepare.distributed
.scheduler`); what a node runs is :mod:`~slidefed.client.prepare.distributed
.work`; :mod:`~slidefed.client.prepare.distributed.loopback` starts a small
cluster on 127.0.0.1 for tests and benchmarks. The features land in the same
cache, under the same keys, as a local run's. Importing this package does not
import Ray; connecting to a cluster does.
"""

from slidefed.client.prepare.distributed.scheduler import MAX_RETRIES as MAX_RETRIES
from slidefed.client.prepare.distributed.scheduler import SlideJob as SlideJob
from slidefed.client.prepare.distributed.scheduler import (
    prepare_on_ray as prepare_on_ray,
)

__all__ = ["MAX_RETRIES", "SlideJob", "prepare_on_ray"]
